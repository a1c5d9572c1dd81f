"""Status moves outside a delivery batch: a provider's callback, a keypress, a read letter.

Each move is guarded so that a status only moves forward (one exception: ``overturnable``),
and each one that happens appends its ledger row in the same transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Connection, and_, select, update

from worker.core.clock import utcnow
from worker.core.errors import DeliveryError
from worker.core.messages import DeliveryKey
from worker.core.statuses import DeliveryStatus, overturnable, statuses_before
from worker.store import ledger as evidence
from worker.store.ledger import Entry
from worker.store.schema import deliveries


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
    entry = Entry(
        row.event_id,
        row.recipient_ref,
        row.channel,
        row.step,
        status.value,
        attempt=row.attempts,
        provider_message_id=provider_message_id,
        error_class=error.kind if error else None,
        error_code=error.code if error else None,
        reason=error.message if error else None,
        requests=row.requests,
    )
    evidence.append(conn, [entry], at=now)
    return Move(DeliveryKey(row.event_id, row.recipient_ref, row.channel, row.step), status, overturned)


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
    entry = Entry(
        event_id,
        ref,
        channel,
        row.step,
        DeliveryStatus.ACKNOWLEDGED.value,
        attempt=row.attempts,
        provider_message_id=row.provider_message_id,
        reason=why,
    )
    evidence.append(conn, [entry], at=now)
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
    entries = [
        Entry(
            key.event_id,
            key.recipient_ref,
            channel,
            step,
            DeliveryStatus.SKIPPED.value,
            attempt=attempts,
            error_class=error.kind,
            error_code=error.code,
            reason=error.message,
        )
        for channel, step, attempts in skipped
    ]
    evidence.append(conn, entries, at=now)
    return [DeliveryKey(key.event_id, key.recipient_ref, channel, step) for channel, step, _ in skipped]
