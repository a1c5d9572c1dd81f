"""Provider callbacks that arrive before their delivery is recorded, kept until it is.

A provider may call back before the worker has written the message id it was given; the
callback waits here, once per (id, status), and applies when the id is recorded.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Connection, delete, select

from worker.core.clock import utcnow
from worker.core.errors import DeliveryError, PermanentDeliveryError
from worker.core.statuses import DeliveryStatus
from worker.store.dialect import insert_ignoring_conflicts
from worker.store.moves import Move, apply_status
from worker.store.schema import provider_callbacks


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


def callbacks_waiting(conn: Connection, provider_message_id: str) -> bool:
    """Whether callbacks for this provider id still wait for their delivery to be recorded."""
    stmt = select(provider_callbacks.c.id).where(provider_callbacks.c.provider_message_id == provider_message_id)
    return conn.execute(stmt.limit(1)).first() is not None
