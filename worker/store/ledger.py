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
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, bindparam, delete, func, or_, select, text, update

from worker.core.clock import utcnow
from worker.core.errors import DeliveryError, PermanentDeliveryError
from worker.core.messages import DeliveryKey, Receipt
from worker.core.statuses import TERMINAL, DeliveryStatus, RouteMark, overturnable, statuses_before
from worker.store.dialect import insert_ignoring_conflicts, insert_returning_new
from worker.store.schema import deliveries, ledger, provider_callbacks


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
    ledger_rows: list[dict[str, Any]] = []
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
        ledger_rows.append(
            {
                "event_id": key.event_id,
                "recipient_ref": key.recipient_ref,
                "channel": key.channel,
                "step": key.step,
                "attempt": attempts.get(key.recipient_ref, 0),
                "status": receipt.status.value,
                "tries": receipt.tries,
                "requests": claimed - refund if claimed is not None else None,
                "segments": int(receipt.detail["segments"]) if "segments" in receipt.detail else None,
                "provider": receipt.detail.get("provider"),
                "recorded_at": now,
                **fields,
            }
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
    conn.execute(ledger.insert(), ledger_rows)
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


def outcome_counts(conn: Connection, event_id: str | None = None) -> dict[tuple[str, str], int]:
    """Deliveries by (channel, status), for one event or all of them."""
    stmt = select(deliveries.c.channel, deliveries.c.status, func.count()).group_by(
        deliveries.c.channel, deliveries.c.status
    )
    if event_id is not None:
        stmt = stmt.where(deliveries.c.event_id == event_id)
    return {(channel, status): count for channel, status, count in conn.execute(stmt)}


def unfinished_count(conn: Connection, event_ids: Iterable[str]) -> int:
    """How many deliveries of these events are not yet in a terminal status."""
    stmt = select(func.count()).where(
        deliveries.c.event_id.in_(list(event_ids)),
        deliveries.c.status.not_in([s.value for s in TERMINAL]),
    )
    return int(conn.execute(stmt).scalar_one())


def failure_reasons(conn: Connection, event_id: str) -> list[tuple[str, str, int, str]]:
    """Failed deliveries of an event grouped by (channel, error code), with a sample reason."""
    stmt = (
        select(deliveries.c.channel, deliveries.c.error_code, func.count(), func.min(deliveries.c.reason))
        .where(deliveries.c.event_id == event_id, deliveries.c.status == DeliveryStatus.FAILED.value)
        .group_by(deliveries.c.channel, deliveries.c.error_code)
        .order_by(deliveries.c.channel, func.count().desc())
    )
    return [(channel, code or "-", count, reason or "") for channel, code, count, reason in conn.execute(stmt)]


@dataclass(frozen=True, slots=True)
class Move:
    """A delivery that moved to ``status`` outside a batch (a callback, a reconciliation).

    ``overturned``: it replaced a failure, the one exception to forward-only
    (``worker.core.statuses.overturnable``); routing then undoes what that failure decided.
    """

    key: DeliveryKey
    status: DeliveryStatus
    overturned: bool = False


def apply_status(
    conn: Connection, provider_message_id: str, status: DeliveryStatus, error: DeliveryError | None
) -> Move | bool | None:
    """Move the delivery with this provider id forward.

    Returns the ``Move`` when it moved, False when the status changed nothing (late or
    duplicate), None when no delivery has that id yet. A keypress replaces a call failed as
    unconfirmed (``overturnable``); the row is locked first, so ``overturned`` is exact.
    """
    row = conn.execute(
        select(deliveries).where(deliveries.c.provider_message_id == provider_message_id).limit(1).with_for_update()
    ).one_or_none()
    if row is None:
        return None
    allowed = statuses_before(status)
    guard: ColumnElement[bool] = deliveries.c.status.in_([s.value for s in allowed])
    replaces = overturnable(status)
    overturned = replaces is not None and (row.status, row.error_code) == (replaces[0].value, replaces[1])
    if overturned:
        guard = and_(deliveries.c.status == row.status, deliveries.c.error_code == row.error_code)
    elif not allowed:
        return False
    now = utcnow()
    moved = conn.execute(
        update(deliveries)
        .where(deliveries.c.id == row.id, guard)
        .values(
            status=status.value,
            error_class=error.kind if error else None,
            error_code=error.code if error else None,
            reason=error.message if error else None,
            claimed_by=None,
            lease_until=None,
            updated_at=now,
        )
        .returning(deliveries.c.id)
    ).first()
    if moved is None:
        return False
    conn.execute(
        ledger.insert().values(
            event_id=row.event_id,
            recipient_ref=row.recipient_ref,
            channel=row.channel,
            step=row.step,
            attempt=row.attempts,
            status=status.value,
            provider_message_id=provider_message_id,
            error_class=error.kind if error else None,
            error_code=error.code if error else None,
            reason=error.message if error else None,
            tries=0,
            requests=row.requests,
            recorded_at=now,
        )
    )
    return Move(DeliveryKey(row.event_id, row.recipient_ref, row.channel, row.step), status, overturned)


def receive_provider_status(
    conn: Connection, provider_message_id: str, status: DeliveryStatus, error: DeliveryError | None = None
) -> Move | bool | None:
    """Apply a provider's status callback, or keep it until its delivery is recorded.

    A provider may call back before the worker has written the message id it was given (the
    batch is still being sent). Only such a callback is stored, once per (id, status): a
    replay adds nothing. ``apply_pending_callbacks`` applies and deletes it once the id is
    recorded. Returns the ``Move`` if the delivery moved, False if the callback changed
    nothing (late or duplicate), None if it is waiting.
    """
    result = apply_status(conn, provider_message_id, status, error)
    if result is None:
        row = {
            "provider_message_id": provider_message_id,
            "status": status.value,
            "error_class": error.kind if error else None,
            "error_code": error.code if error else None,
            "reason": error.message if error else None,
            "received_at": utcnow(),
        }
        insert_ignoring_conflicts(conn, provider_callbacks, [row], "provider_message_id", "status")
    return result


def apply_pending_callbacks(conn: Connection, provider_message_ids: Iterable[str]) -> list[Move]:
    """Apply, in arrival order, callbacks that came before their delivery's id was recorded.

    Each one that applies (moved the delivery or changed nothing) is deleted.
    """
    ids = [pmid for pmid in provider_message_ids if pmid]
    if not ids:
        return []
    pending = conn.execute(
        select(provider_callbacks)
        .where(provider_callbacks.c.provider_message_id.in_(ids))
        .order_by(provider_callbacks.c.id)
    ).all()
    moves: list[Move] = []
    applied: list[int] = []
    for row in pending:
        error = None
        if row.error_class is not None:
            error = PermanentDeliveryError(row.reason or "", code=row.error_code)
        result = apply_status(conn, row.provider_message_id, DeliveryStatus(row.status), error)
        if result is not None:
            applied.append(row.id)
        if isinstance(result, Move):
            moves.append(result)
    if applied:
        conn.execute(delete(provider_callbacks).where(provider_callbacks.c.id.in_(applied)))
    return moves


def callbacks_received_before(conn: Connection, received_before: datetime) -> bool:
    """Whether any waiting callback was received before ``received_before``."""
    stmt = select(provider_callbacks.c.id).where(provider_callbacks.c.received_at < received_before)
    return conn.execute(stmt.limit(1)).first() is not None


def drop_stale_callbacks(conn: Connection, received_before: datetime, limit: int) -> int:
    """Delete waiting callbacks received before ``received_before``: their delivery never came.

    Such a callback answers a send whose provider id was never recorded (a worker died
    between the provider's answer and the record; the key was sent again under a new id).
    """
    stale = [
        callback_id
        for (callback_id,) in conn.execute(
            select(provider_callbacks.c.id).where(provider_callbacks.c.received_at < received_before).limit(limit)
        )
    ]
    if stale:
        conn.execute(delete(provider_callbacks).where(provider_callbacks.c.id.in_(stale)))
    return len(stale)


def acknowledge(conn: Connection, event_id: str, ref: str, channel: str, why: str) -> Move | None:
    """The person confirmed a delivered message (e.g. read the station letter): delivered → acknowledged."""
    now = utcnow()
    row = conn.execute(
        update(deliveries)
        .where(
            deliveries.c.event_id == event_id,
            deliveries.c.recipient_ref == ref,
            deliveries.c.channel == channel,
            deliveries.c.status == DeliveryStatus.DELIVERED.value,
        )
        .values(status=DeliveryStatus.ACKNOWLEDGED.value, updated_at=now)
        .returning(deliveries.c.step, deliveries.c.attempts, deliveries.c.provider_message_id)
    ).first()
    if row is None:
        return None
    conn.execute(
        ledger.insert().values(
            event_id=event_id,
            recipient_ref=ref,
            channel=channel,
            step=row.step,
            attempt=row.attempts,
            status=DeliveryStatus.ACKNOWLEDGED.value,
            provider_message_id=row.provider_message_id,
            reason=why,
            tries=0,
            recorded_at=now,
        )
    )
    return Move(DeliveryKey(event_id, ref, channel, row.step), DeliveryStatus.ACKNOWLEDGED)


def skip_later_stages(conn: Connection, key: DeliveryKey, error: DeliveryError) -> list[DeliveryKey]:
    """Skip the recipient's deliveries of stages after ``key.step`` that nobody has claimed yet.

    For a person a late confirmation reached after all: what the overturned failure opened
    need not be sent. Deliveries already claimed or sent are left as they are.
    """
    now = utcnow()
    skipped = conn.execute(
        update(deliveries)
        .where(
            deliveries.c.event_id == key.event_id,
            deliveries.c.recipient_ref == key.recipient_ref,
            deliveries.c.step > key.step,
            deliveries.c.status == DeliveryStatus.PENDING.value,
        )
        .values(
            status=DeliveryStatus.SKIPPED.value,
            error_class=error.kind,
            error_code=error.code,
            reason=error.message,
            updated_at=now,
        )
        .returning(deliveries.c.channel, deliveries.c.step, deliveries.c.attempts)
    ).all()
    if skipped:
        conn.execute(
            ledger.insert(),
            [
                {
                    "event_id": key.event_id,
                    "recipient_ref": key.recipient_ref,
                    "channel": channel,
                    "step": step,
                    "attempt": attempts,
                    "status": DeliveryStatus.SKIPPED.value,
                    "provider_message_id": None,
                    "error_class": error.kind,
                    "error_code": error.code,
                    "reason": error.message,
                    "tries": 0,
                    "segments": None,
                    "provider": None,
                    "recorded_at": now,
                }
                for channel, step, attempts in skipped
            ],
        )
    return [DeliveryKey(key.event_id, key.recipient_ref, channel, step) for channel, step, _ in skipped]


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
    if not notes:
        return
    now = utcnow()
    conn.execute(
        ledger.insert(),
        [
            {
                "event_id": n.event_id,
                "recipient_ref": n.recipient_ref,
                "channel": n.channel,
                "step": n.step,
                "attempt": 0,
                "status": n.mark.value,
                "provider_message_id": n.reference,
                "error_class": None,
                "error_code": n.code,
                "reason": n.reason,
                "tries": 0,
                "segments": None,
                "provider": None,
                "recorded_at": now,
            }
            for n in notes
        ],
    )


def recent_counts(
    conn: Connection, channel: str, refs: Sequence[str], since: datetime, exclude_event: str
) -> dict[str, int]:
    """Per recipient, how many notices of other events went out on ``channel`` since ``since``."""
    if not refs:
        return {}
    sent = [DeliveryStatus.SENT.value, DeliveryStatus.DELIVERED.value, DeliveryStatus.ACKNOWLEDGED.value]
    rows = conn.execute(
        select(deliveries.c.recipient_ref, func.count(func.distinct(deliveries.c.event_id)))
        .where(
            deliveries.c.channel == channel,
            deliveries.c.recipient_ref.in_(list(refs)),
            deliveries.c.created_at >= since,
            deliveries.c.event_id != exclude_event,
            deliveries.c.status.in_(sent),
        )
        .group_by(deliveries.c.recipient_ref)
    )
    return {ref: int(count) for ref, count in rows}


def stuck(conn: Connection, before: datetime, now: datetime, limit: int) -> list[tuple[str, str, int, str, str]]:
    """(event_id, channel, step, ref, status) of deliveries nobody has moved since ``before``.

    Pending and retrying ones whose message may have been lost, and sending ones whose
    worker's lease ran out; the dead-man check hands them on again.
    """
    stmt = (
        select(
            deliveries.c.event_id,
            deliveries.c.channel,
            deliveries.c.step,
            deliveries.c.recipient_ref,
            deliveries.c.status,
        )
        .where(
            deliveries.c.updated_at < before,
            or_(
                deliveries.c.status.in_([DeliveryStatus.PENDING.value, DeliveryStatus.RETRYING.value]),
                and_(deliveries.c.status == DeliveryStatus.SENDING.value, deliveries.c.lease_until < now),
            ),
        )
        .order_by(deliveries.c.updated_at)
        .limit(limit)
    )
    return [(e, c, step, ref, status) for e, c, step, ref, status in conn.execute(stmt)]


def unconfirmed_sent(conn: Connection, before: datetime, limit: int) -> list[tuple[str, str]]:
    """(channel, provider id) of messages still only ``sent`` since before ``before``."""
    stmt = (
        select(deliveries.c.channel, deliveries.c.provider_message_id)
        .where(
            deliveries.c.status == DeliveryStatus.SENT.value,
            deliveries.c.updated_at < before,
            deliveries.c.provider_message_id.is_not(None),
        )
        .order_by(deliveries.c.updated_at)
        .limit(limit)
    )
    return [(channel, pmid) for channel, pmid in conn.execute(stmt)]


def touch_sent(conn: Connection, provider_message_ids: Sequence[str]) -> None:
    """Mark sent messages as just handed to reconciliation."""
    if provider_message_ids:
        conn.execute(
            update(deliveries)
            .where(deliveries.c.provider_message_id.in_(list(provider_message_ids)))
            .values(updated_at=utcnow())
        )


def pending_by_step(conn: Connection, event_id: str, refs: Sequence[str]) -> dict[tuple[str, int], list[str]]:
    """Deliveries of these recipients not yet claimed, by (channel, step)."""
    if not refs:
        return {}
    rows = conn.execute(
        select(deliveries.c.channel, deliveries.c.step, deliveries.c.recipient_ref).where(
            deliveries.c.event_id == event_id,
            deliveries.c.recipient_ref.in_(list(refs)),
            deliveries.c.status == DeliveryStatus.PENDING.value,
        )
    )
    grouped: dict[tuple[str, int], list[str]] = defaultdict(list)
    for channel, step, ref in rows:
        grouped[(channel, step)].append(ref)
    return dict(grouped)


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


def callbacks_waiting(conn: Connection, provider_message_id: str) -> bool:
    """Whether callbacks for this provider id still wait for their delivery to be recorded."""
    stmt = select(provider_callbacks.c.id).where(provider_callbacks.c.provider_message_id == provider_message_id)
    return conn.execute(stmt.limit(1)).first() is not None


def is_recorded(conn: Connection, provider_message_id: str) -> bool:
    """Whether a delivery with this provider id has been recorded."""
    stmt = select(deliveries.c.id).where(deliveries.c.provider_message_id == provider_message_id)
    return conn.execute(stmt.limit(1)).first() is not None


def awaiting_verdict(conn: Connection, provider_message_ids: Sequence[str]) -> list[str]:
    """Of these provider ids, those whose delivery is still only ``sent``."""
    if not provider_message_ids:
        return []
    rows = conn.execute(
        select(deliveries.c.provider_message_id).where(
            deliveries.c.provider_message_id.in_(list(provider_message_ids)),
            deliveries.c.status == DeliveryStatus.SENT.value,
        )
    )
    return [pmid for (pmid,) in rows]
