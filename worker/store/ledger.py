"""The ledger: append-only evidence, one row per attempt, status move and routing decision.

Every row reaches the table through ``append``, the one write path, in the transaction of
the change it records (a status move and its row never disagree). The verifiable ledger
that comes next sequences and hashes rows there, so no writer builds its own INSERT: a test
holds every other module to that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime

from sqlalchemy import Connection

from worker.core.clock import utcnow
from worker.core.statuses import RouteMark
from worker.store.schema import ledger


@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger row, as a writer states it; ``append`` adds the time.

    ``status`` is a ``DeliveryStatus`` or ``RouteMark`` value. ``attempt`` is the delivery's
    attempt number (0 for a routing decision); ``tries`` the provider requests this attempt
    made; ``requests`` the key's count of requests that may have gone out, after it.
    """

    event_id: str
    recipient_ref: str
    channel: str
    step: int
    status: str
    attempt: int = 0
    provider_message_id: str | None = None
    error_class: str | None = None
    error_code: str | None = None
    reason: str | None = None
    tries: int = 0
    requests: int | None = None
    segments: int | None = None
    provider: str | None = None


_COLUMNS = tuple(f.name for f in fields(Entry))


def append(conn: Connection, entries: Sequence[Entry], *, at: datetime | None = None) -> None:
    """Append ``entries`` to the ledger in their order, all stamped ``at`` (default: now).

    The one path by which rows enter the ledger; it never updates or deletes one.
    """
    if not entries:
        return
    recorded_at = at or utcnow()
    conn.execute(
        ledger.insert(),
        [{**{name: getattr(entry, name) for name in _COLUMNS}, "recorded_at": recorded_at} for entry in entries],
    )


@dataclass(frozen=True, slots=True)
class Note:
    """A routing decision for the ledger: a fallback, an override, a cover, nothing left to try."""

    event_id: str
    recipient_ref: str
    channel: str
    step: int
    mark: RouteMark
    reason: str
    reference: str | None = None  # e.g. the announcement that covers the person
    code: str | None = None


def note(conn: Connection, notes: Sequence[Note]) -> None:
    """Append routing decisions to the ledger (append-only, like every attempt)."""
    append(
        conn,
        [
            Entry(
                n.event_id,
                n.recipient_ref,
                n.channel,
                n.step,
                n.mark.value,
                provider_message_id=n.reference,
                error_code=n.code,
                reason=n.reason,
            )
            for n in notes
        ],
    )
