"""Deliveries and the ledger: idempotency claims before a send, one evidence row per attempt.

``deliveries`` holds one row per idempotency key ``(event_id, recipient_ref, channel, step)``
and its current status, which only moves forward. ``ledger`` is append-only: one row per
attempt, written in the same transaction as the status move, so the two never disagree.

A claim is a guarded UPDATE: only keys that are pending, retrying, or "sending" under an
expired lease (or under this very message, redelivered after its worker died) can be
claimed. A redelivered batch therefore skips everything already delivered, and re-sends only
what was claimed but never recorded: the duplicates are bounded by the batches in flight.

Each claim also counts one provider request for its key (``deliveries.requests``), before the
provider is called; recording the attempt gives it back when the receipt shows that nothing
went out. What stays counted is every request that may have reached the person (accepted,
outcome unknown, or lost with its worker), which the caller holds to a cap. Each attempt's
ledger row carries the count after it, and ``tries``, every request the attempt made.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, bindparam, or_, select, text, update

from worker.core.clock import utcnow
from worker.core.errors import DeliveryError, PermanentDeliveryError
from worker.core.messages import DeliveryKey, Receipt
from worker.core.statuses import DeliveryStatus, statuses_before
from worker.store import ledger as evidence
from worker.store.callbacks import apply_pending_callbacks
from worker.store.dialect import insert_ignoring_conflicts, insert_returning_new
from worker.store.ledger import Entry
from worker.store.moves import Move
from worker.store.schema import deliveries


def open_deliveries(
    conn: Connection,
    event_id: str,
    channel: str,
    refs: Sequence[str],
    *,
    step: int = 0,
    failures: dict[str, DeliveryError] | None = None,
    skips: dict[str, DeliveryError] | None = None,
) -> list[str]:
    """Create the delivery rows of one channel for a page of recipients.

    Recipients in ``failures`` (no usable contact) are recorded at once as failed, and those
    in ``skips`` (opted out, throttled) as skipped, each with a ledger row saying why; the
    refs returned are those that still need sending. Opening the same rows again (a page
    handled twice) changes nothing and writes no second ledger row.
    """
    failures = failures or {}
    skips = skips or {}
    now = utcnow()
    rows = [
        {
            "event_id": event_id,
            "recipient_ref": ref,
            "channel": channel,
            "step": step,
            "status": DeliveryStatus.PENDING.value,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        for ref in refs
    ]
    if failures or skips:
        opened = set(insert_returning_new(conn, deliveries, rows, "recipient_ref", *_KEY))
        receipts = [
            Receipt.failed(DeliveryKey(event_id, ref, channel, step), error)
            for ref, error in failures.items()
            if ref in opened
        ] + [
            Receipt(DeliveryKey(event_id, ref, channel, step), DeliveryStatus.SKIPPED, error=error, tries=0)
            for ref, error in skips.items()
            if ref in opened and ref not in failures
        ]
        record(conn, receipts, attempts={})
    else:
        insert_ignoring_conflicts(conn, deliveries, rows, *_KEY)
    return [ref for ref in refs if ref not in failures and ref not in skips]


_KEY = ("event_id", "recipient_ref", "channel", "step")


@dataclass(frozen=True, slots=True)
class Claim:
    """The keys one delivery message may send now, and those another worker still holds.

    ``attempts`` is each claimed key's attempt number, which also fences the claim (see
    ``still_held``); ``requests`` is each claimed key's count of provider requests, this
    claim's one included.
    """

    attempts: dict[str, int]
    busy: list[str]
    requests: dict[str, int] = field(default_factory=dict)
    event_id: str = ""
    channel: str = ""
    step: int = 0
    claimant: str = ""


def claim(
    conn: Connection,
    event_id: str,
    channel: str,
    refs: Sequence[str],
    *,
    claimant: str,
    lease: timedelta,
    step: int = 0,
) -> Claim:
    """Claim the keys of a batch before calling the provider (see the module docstring)."""
    now = utcnow()
    sending = DeliveryStatus.SENDING.value
    stmt = (
        update(deliveries)
        .where(
            deliveries.c.event_id == event_id,
            deliveries.c.channel == channel,
            deliveries.c.step == step,
            deliveries.c.recipient_ref.in_(list(refs)),
            or_(
                deliveries.c.status.in_([DeliveryStatus.PENDING.value, DeliveryStatus.RETRYING.value]),
                and_(
                    deliveries.c.status == sending,
                    or_(deliveries.c.lease_until < now, deliveries.c.claimed_by == claimant),
                ),
            ),
        )
        .values(
            status=sending,
            attempts=deliveries.c.attempts + 1,
            requests=deliveries.c.requests + 1,
            claimed_by=claimant,
            lease_until=now + lease,
            updated_at=now,
        )
        .returning(deliveries.c.recipient_ref, deliveries.c.attempts, deliveries.c.requests)
    )
    attempts: dict[str, int] = {}
    counted: dict[str, int] = {}
    for ref, attempt, requests in conn.execute(stmt):
        attempts[ref], counted[ref] = attempt, requests
    unclaimed = [ref for ref in refs if ref not in attempts]
    busy: list[str] = []
    if unclaimed:
        rows = conn.execute(
            select(deliveries.c.recipient_ref).where(
                deliveries.c.event_id == event_id,
                deliveries.c.channel == channel,
                deliveries.c.step == step,
                deliveries.c.recipient_ref.in_(unclaimed),
                deliveries.c.status == sending,
            )
        )
        busy = [ref for (ref,) in rows]
    return Claim(
        attempts=attempts,
        busy=busy,
        requests=counted,
        event_id=event_id,
        channel=channel,
        step=step,
        claimant=claimant,
    )


def still_held(conn: Connection, claim: Claim, refs: Sequence[str], lease: timedelta) -> set[str]:
    """Of ``refs``, the keys ``claim`` still holds, their leases renewed; the others were taken over.

    A worker paused past its heartbeat (SIGSTOP, a machine that stalls) has its message handed
    to another worker under the same message id, the claimant; that copy claims the keys
    again, each with the next attempt number. The attempt number is the fence: the paused
    worker, running again, sends only the keys whose attempt is still its own, so the two
    copies overlap by at most the chunk each was sending.
    """
    if not refs:
        return set()
    now = utcnow()
    stmt = (
        update(deliveries)
        .where(
            deliveries.c.event_id == claim.event_id,
            deliveries.c.channel == claim.channel,
            deliveries.c.step == claim.step,
            deliveries.c.recipient_ref.in_(list(refs)),
            deliveries.c.claimed_by == claim.claimant,
            deliveries.c.status == DeliveryStatus.SENDING.value,
        )
        .values(lease_until=now + lease, updated_at=now)
        .returning(deliveries.c.recipient_ref, deliveries.c.attempts)
    )
    return {ref for ref, attempt in conn.execute(stmt) if attempt == claim.attempts.get(ref)}


def record(
    conn: Connection,
    receipts: Sequence[Receipt],
    attempts: Mapping[str, int],
    counted: Mapping[str, int] | None = None,
) -> list[Move]:
    """Append a ledger row per receipt and move each delivery's status forward, never back.

    ``counted`` holds the request counts of the keys this batch claimed (``Claim.requests``):
    a receipt of one of them that shows nothing went out gives its claim's request back.

    Returns the moves made by provider callbacks that had arrived before these receipts were
    recorded (see ``receive_provider_status``), so that routing sees them too.
    """
    if not receipts:
        return []
    counted = counted or {}
    now = utcnow()
    entries: list[Entry] = []
    by_status: dict[DeliveryStatus, list[dict[str, Any]]] = defaultdict(list)
    for receipt in receipts:
        key, error = receipt.key, receipt.error
        fields = {
            "provider_message_id": receipt.provider_message_id,
            "error_class": error.kind if error else None,
            "error_code": error.code if error else None,
            "reason": error.message if error else None,
        }
        claimed = counted.get(key.recipient_ref)
        refund = 1 if claimed is not None and not receipt.may_have_gone_out else 0
        entries.append(
            Entry(
                key.event_id,
                key.recipient_ref,
                key.channel,
                key.step,
                receipt.status.value,
                attempt=attempts.get(key.recipient_ref, 0),
                tries=receipt.tries,
                requests=claimed - refund if claimed is not None else None,
                segments=int(receipt.detail["segments"]) if "segments" in receipt.detail else None,
                provider=receipt.detail.get("provider"),
                provider_message_id=receipt.provider_message_id,
                error_class=error.kind if error else None,
                error_code=error.code if error else None,
                reason=error.message if error else None,
            )
        )
        by_status[receipt.status].append(
            {
                "k_event": key.event_id,
                "k_ref": key.recipient_ref,
                "k_channel": key.channel,
                "k_step": key.step,
                "refund": refund,
                "updated_at": now,
                **fields,
            }
        )
    evidence.append(conn, entries, at=now)
    for status, params in by_status.items():
        allowed = statuses_before(status)
        if not allowed:
            continue  # nothing ever moves back to pending
        stmt = (
            update(deliveries)
            .where(
                deliveries.c.event_id == bindparam("k_event"),
                deliveries.c.recipient_ref == bindparam("k_ref"),
                deliveries.c.channel == bindparam("k_channel"),
                deliveries.c.step == bindparam("k_step"),
                _status_in(allowed),
            )
            .values(
                status=status.value,
                claimed_by=None,
                lease_until=None,
                requests=deliveries.c.requests - bindparam("refund"),
            )
        )
        conn.execute(stmt, params)
    # Only a message the provider accepted but has not judged yet can have a callback waiting.
    awaiting = [r.provider_message_id for r in receipts if r.status is DeliveryStatus.SENT and r.provider_message_id]
    return apply_pending_callbacks(conn, awaiting)


def _status_in(statuses: Iterable[DeliveryStatus]) -> ColumnElement[bool]:
    """``status IN (...)`` with the values inlined: executemany() cannot expand an IN list.

    Safe to inline because the values are herald's own enum constants, never user input.
    """
    return text("deliveries.status IN (" + ", ".join(f"'{s.value}'" for s in statuses) + ")")  # type: ignore[return-value]


def exhaust(
    conn: Connection,
    event_id: str,
    channel: str,
    refs: Sequence[str],
    reason: str,
    step: int = 0,
    *,
    claimant: str,
) -> list[Receipt]:
    """After the last retry, fail the batch's keys that are still herald's to send.

    Pending and retrying keys fail, and sending ones held by this batch's own claim. A ``sent``
    key is in the provider's hands and waits for its callback or reconciliation (a late
    ``delivered`` must still apply); a key another message holds is that message's to finish.
    """
    rows = conn.execute(
        select(deliveries.c.recipient_ref, deliveries.c.attempts).where(
            deliveries.c.event_id == event_id,
            deliveries.c.channel == channel,
            deliveries.c.step == step,
            deliveries.c.recipient_ref.in_(list(refs)),
            or_(
                deliveries.c.status.in_([DeliveryStatus.PENDING.value, DeliveryStatus.RETRYING.value]),
                and_(deliveries.c.status == DeliveryStatus.SENDING.value, deliveries.c.claimed_by == claimant),
            ),
        )
    ).all()
    error = PermanentDeliveryError(reason, code="retries-exhausted")
    receipts = [Receipt.failed(DeliveryKey(event_id, ref, channel, step), error, tries=0) for ref, _ in rows]
    record(conn, receipts, attempts={ref: attempt for ref, attempt in rows})
    return receipts


def touch_sent(conn: Connection, provider_message_ids: Sequence[str]) -> None:
    """Mark sent messages as just handed to reconciliation."""
    if provider_message_ids:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.provider_message_id.in_(list(provider_message_ids)))
            .values(updated_at=utcnow())
        )


def touch(conn: Connection, event_id: str, channel: str, step: int, refs: Sequence[str]) -> None:
    """Mark deliveries as just handed on, so the dead-man check leaves them be for a while."""
    conn.execute(
        update(deliveries)
        .where(
            deliveries.c.event_id == event_id,
            deliveries.c.channel == channel,
            deliveries.c.step == step,
            deliveries.c.recipient_ref.in_(list(refs)),
        )
        .values(updated_at=utcnow())
    )


def _unknown_outcome(key: DeliveryKey) -> ColumnElement[bool]:
    """The key's delivery, while its last send's outcome is unknown and no provider id is known."""
    return and_(
        deliveries.c.event_id == key.event_id,
        deliveries.c.recipient_ref == key.recipient_ref,
        deliveries.c.channel == key.channel,
        deliveries.c.step == key.step,
        deliveries.c.provider_message_id.is_(None),
        deliveries.c.status == DeliveryStatus.RETRYING.value,
        deliveries.c.error_class == "UnknownOutcomeError",
    )


def adoptable(conn: Connection, key: DeliveryKey) -> bool:
    """Whether a callback naming ``key`` could settle it (see ``adopt_provider_id``); a read."""
    return conn.execute(select(deliveries.c.id).where(_unknown_outcome(key)).limit(1)).first() is not None


def adopt_provider_id(conn: Connection, key: DeliveryKey, provider_message_id: str) -> list[Move] | None:
    """Record the provider id a callback names for a send whose answer herald could not read.

    The provider did take that message: it is ``sent`` under this id from now on (so it is not
    sent again), and callbacks for the id that were waiting apply. Returns their moves, or
    None when the key's delivery is not waiting on an unknown outcome (nothing changes).
    """
    stmt = select(deliveries.c.attempts).where(_unknown_outcome(key))
    if conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    if row is None:
        return None
    receipt = Receipt(key, DeliveryStatus.SENT, provider_message_id=provider_message_id, tries=0)
    return record(conn, [receipt], {key.recipient_ref: row.attempts})
