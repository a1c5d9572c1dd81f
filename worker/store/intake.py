"""What arrived, and what became of it: the intake log and the accepted events.

Every payload that reaches ingest leaves one intake row (accepted, duplicate, conflict or
rejected, with the reason), so an on-call engineer can always answer "did herald get my
event?". Texts in an intake row come from whoever sent the payload: ``record_intake`` makes
each one storable (control characters and half surrogate pairs escaped, cut to its column),
so that recording a refusal never fails because of what was refused.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from sqlalchemy import Connection, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from worker.core.clock import as_utc, utcnow
from worker.core.errors import EventConflict
from worker.core.limits import EVENT_TYPE_CHARS, IDENTIFIER_CHARS, LINE_CHARS
from worker.intake.events import Event, topic_of, validate_event
from worker.store.schema import events, intake

#: What a database text column cannot hold, or a terminal should not print: control
#: characters (but tab and newline) and half surrogate pairs.
_UNSTORABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f\ud800-\udfff]")
#: Longest reason kept (reasons are one line of a few hundred characters by construction).
REASON_CHARS = 2_000


class IntakeOutcome(str, Enum):
    """What ingest did with a payload."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"  # an event_id accepted before, with another body: refused
    REJECTED = "rejected"


#: Outcomes that refuse the payload; `herald events rejected` lists them.
REFUSED = (IntakeOutcome.REJECTED, IntakeOutcome.CONFLICT)


def storable(text: str | None, limit: int) -> str | None:
    """``text`` escaped where a column could not hold it, and cut to ``limit`` characters."""
    if text is None:
        return None
    return _UNSTORABLE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)[:limit]


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused payload, as `herald events rejected` shows it."""

    id: int
    outcome: str
    event_id: str | None
    event_type: str | None
    reason: str
    size_bytes: int
    excerpt: str | None
    payload_sha256: str | None
    received_at: datetime


def record_intake(
    conn: Connection,
    outcome: IntakeOutcome,
    *,
    size_bytes: int,
    event_id: str | None = None,
    event_type: str | None = None,
    source: str | None = None,
    reason: str | None = None,
    excerpt: str | None = None,
    payload_sha256: str | None = None,
) -> None:
    """Append one row to the intake log; every text is made storable first."""
    conn.execute(
        intake.insert().values(
            event_id=storable(event_id, IDENTIFIER_CHARS) or None,
            outcome=outcome.value,
            reason=storable(reason, REASON_CHARS),
            event_type=storable(event_type, EVENT_TYPE_CHARS) or None,
            source=storable(source, LINE_CHARS) or None,
            size_bytes=size_bytes,
            excerpt=storable(excerpt, 16_384),
            payload_sha256=payload_sha256,
            received_at=utcnow(),
        )
    )


def accept_event(
    conn: Connection, event: Event, digest: str, body: dict[str, Any], *, plan: str | None = None
) -> IntakeOutcome:
    """Store an accepted event once, with the routing plan it will be sent under; a second
    identical copy is a duplicate (and keeps the first copy's plan).

    Raises:
        EventConflict: the event_id is already stored with a different body.
    """
    now = utcnow()
    row = {
        "event_id": event.event_id,
        "event_type": event.type,
        "source": event.source,
        "digest": digest,
        "body": json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        "occurred_at": event.occurred_at,
        "accepted_at": now,
        "fanout_cursor": "",
        "fanout_updated_at": now,
        "topic": topic_of(event),
        "plan": plan,
    }
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = module.insert(events).values(**row).on_conflict_do_nothing().returning(events.c.event_id)
    if conn.execute(stmt).first() is not None:
        return IntakeOutcome.ACCEPTED
    stored = conn.execute(select(events.c.digest).where(events.c.event_id == event.event_id)).scalar_one()
    if stored != digest:
        raise EventConflict(
            f"event_id {event.event_id!r} was already accepted with a different body", event_id=event.event_id
        )
    return IntakeOutcome.DUPLICATE


def is_known(conn: Connection, event_id: str, digest: str) -> bool:
    """Whether exactly this event (same id, same body) was accepted before."""
    stored = conn.execute(select(events.c.digest).where(events.c.event_id == event_id)).scalar_one_or_none()
    return stored == digest


def load_event(conn: Connection, event_id: str) -> Event:
    """Read back an accepted event as its model."""
    body = conn.execute(select(events.c.body).where(events.c.event_id == event_id)).scalar_one()
    return validate_stored(json.loads(body))


def validate_stored(obj: dict[str, Any]) -> Event:
    """Rebuild a stored event; it was valid when accepted, so this only re-types it (time
    rules such as a policy change's lead held then, and are not asked again)."""
    return validate_event(obj, rules=None)


def fanout_cursor(conn: Connection, event_id: str) -> str | None:
    """Where the event's fan-out stands: a cursor, or None once every page is out."""
    row = conn.execute(
        select(events.c.fanout_cursor, events.c.fanout_done_at).where(events.c.event_id == event_id)
    ).one()
    return None if row.fanout_done_at is not None else (row.fanout_cursor or "")


def advance_fanout(conn: Connection, event_id: str, cursor: str, next_cursor: str | None, count: int) -> bool:
    """Move the fan-out cursor forward if it still stands at ``cursor`` (compare-and-set).

    Returns False when another copy of the same page already moved it, so that a duplicate
    fan-out chain stops instead of running twice.
    """
    values: dict[str, Any] = {
        "fanout_cursor": next_cursor if next_cursor is not None else cursor,
        "recipients_total": func.coalesce(events.c.recipients_total, 0) + count,
        "fanout_updated_at": utcnow(),
    }
    if next_cursor is None:
        values["fanout_done_at"] = utcnow()
    result = conn.execute(
        update(events)
        .where(events.c.event_id == event_id, events.c.fanout_cursor == cursor, events.c.fanout_done_at.is_(None))
        .values(**values)
    )
    return bool(result.rowcount)


@dataclass(frozen=True, slots=True)
class EventSummary:
    """An accepted event and how far its fan-out has come."""

    event_id: str
    event_type: str
    accepted_at: datetime
    fanout_done: bool
    recipients_total: int


def event_summary(conn: Connection, event_id: str) -> EventSummary | None:
    """One accepted event's summary, or None if no such event was accepted."""
    row = conn.execute(select(events).where(events.c.event_id == event_id)).one_or_none()
    if row is None:
        return None
    return EventSummary(
        event_id=row.event_id,
        event_type=row.event_type,
        accepted_at=as_utc(row.accepted_at),
        fanout_done=row.fanout_done_at is not None,
        recipients_total=row.recipients_total or 0,
    )


def list_rejections(conn: Connection, limit: int = 50) -> list[Rejection]:
    """The most recent refused payloads (rejected, or a conflicting repeat), newest first."""
    rows = conn.execute(
        select(intake)
        .where(intake.c.outcome.in_([outcome.value for outcome in REFUSED]))
        .order_by(intake.c.id.desc())
        .limit(limit)
    )
    return [
        Rejection(
            id=row.id,
            outcome=row.outcome,
            event_id=row.event_id,
            event_type=row.event_type,
            reason=row.reason or "",
            size_bytes=row.size_bytes,
            excerpt=row.excerpt,
            payload_sha256=row.payload_sha256,
            received_at=as_utc(row.received_at),
        )
        for row in rows
    ]


def intake_counts(conn: Connection, event_id: str) -> dict[str, int]:
    """How many payloads with this event_id were accepted, duplicate or rejected."""
    rows = conn.execute(
        select(intake.c.outcome, func.count()).where(intake.c.event_id == event_id).group_by(intake.c.outcome)
    )
    return {outcome: count for outcome, count in rows}


def stalled_fanouts(conn: Connection, before: datetime, limit: int = 100) -> list[tuple[str, str]]:
    """(event_id, cursor) of fan-outs that have not moved since before ``before``."""
    rows = conn.execute(
        select(events.c.event_id, events.c.fanout_cursor)
        .where(events.c.fanout_done_at.is_(None), events.c.fanout_updated_at < before)
        .limit(limit)
    )
    return [(event_id, cursor or "") for event_id, cursor in rows]


def touch_fanout(conn: Connection, event_id: str) -> None:
    """Mark a fan-out as just handed on, so the dead-man check waits a while before trying again."""
    conn.execute(update(events).where(events.c.event_id == event_id).values(fanout_updated_at=utcnow()))
