"""The one interface every channel implements, and the values that cross it.

A channel is like an httpx transport: one async method that sends a batch of rendered
messages and returns one receipt per message, plus ``aclose()``. Channels send; the
worker records. A channel never writes the ledger, and never lets a vendor exception out:
per-message failures come back as receipts carrying a typed ``DeliveryError``.

Within one ``send()`` a channel makes at most one request per message that may reach the
person: it retries only what certainly did not go out (no connection, a refusal, a rate
limit, an error body). A request whose outcome it cannot know (an unreadable 2xx, no reply
after the message data) comes back as ``UnknownOutcomeError`` and is not retried there. The
worker counts one request per message before ``send()`` and gives it back when the receipt
shows nothing went out; that count is what the cap of provider requests bounds.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import ClassVar, Protocol, runtime_checkable

from worker.core.errors import DeliveryError
from worker.core.messages import OutboundMessage, Receipt
from worker.core.statuses import DeliveryStatus


class Channel(abc.ABC):
    """A way to reach a person: email, SMS, phone call, station letter."""

    name: ClassVar[str]
    #: Sending the same message twice cannot reach the person twice (e.g. a letter keyed by
    #: event and recipient), so the worker may send a whole batch before recording it.
    idempotent: ClassVar[bool] = False

    @abc.abstractmethod
    async def send(self, messages: Sequence[OutboundMessage]) -> list[Receipt]:
        """Send every message and return one receipt per message, in the same order."""

    async def aclose(self) -> None:  # noqa: B027 - a channel without resources keeps this
        """Release connections and clients; the channel is not used afterwards."""


@runtime_checkable
class ReportsBack(Protocol):
    """A channel whose provider reports the outcome later and can be asked for it."""

    async def fetch_verdict(self, provider_message_id: str) -> tuple[DeliveryStatus | None, DeliveryError | None]:
        """Where the provider says a sent message stands now; (None, None) while undecided.

        Raises:
            DeliveryError: the provider could not be asked.
        """
        ...
