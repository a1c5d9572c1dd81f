"""Station letters: the in-site channel writes each message into the user's inbox table.

It is a channel like any other (the worker records the ledger), but its "provider" is
herald's own database, so a letter is delivered the moment its row exists.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from channels.base import Channel
from worker.core.errors import TransientDeliveryError
from worker.core.messages import OutboundMessage, Receipt
from worker.core.statuses import DeliveryStatus
from worker.store.inbox import deliver_letters


class InsiteChannel(Channel):
    """Delivers station letters into the database inbox."""

    name = "insite"
    idempotent = True  # one letter per (event, recipient), whatever happens

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Receipt]:
        """Insert one letter per message in a single transaction."""
        rows = [
            {
                "event_id": m.key.event_id,
                "recipient_ref": m.key.recipient_ref,
                "locale": m.content.locale,
                "subject": m.content.subject[:300],
                "body": m.content.text,
            }
            for m in messages
        ]
        try:
            # A short synchronous transaction: this loop serves only this worker thread.
            with self._engine.begin() as conn:
                deliver_letters(conn, rows)
        except (OperationalError, SQLAlchemyError) as exc:
            error = TransientDeliveryError(f"inbox write failed: {type(exc).__name__}", code="db")
            return [Receipt.failed(m.key, error) for m in messages]
        return [
            Receipt(
                key=m.key,
                status=DeliveryStatus.DELIVERED,
                provider_message_id=f"letter:{m.key.event_id}:{m.key.recipient_ref}",
            )
            for m in messages
        ]
