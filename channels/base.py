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
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

from worker.errors import DeliveryError
from worker.statuses import DeliveryStatus


@dataclass(frozen=True, slots=True)
class Recipient:
    """A person to reach; ``ref`` is the pseudonym the ledger knows them by."""

    ref: str
    user_id: str
    name: str = ""
    email: str | None = None
    phone: str | None = None
    locale: str = "en"
    time_zone: str | None = None  # IANA; None = the locale's default zone


@dataclass(frozen=True, slots=True)
class Content:
    """What one event says in one locale; rendered once, shared by every recipient."""

    cache_key: str
    locale: str
    subject: str
    text: str
    html: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryKey:
    """The idempotency key claimed in the ledger before a provider is called."""

    event_id: str
    recipient_ref: str
    channel: str
    step: int = 0


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One message for one recipient on one channel."""

    key: DeliveryKey
    recipient: Recipient
    content: Content


@dataclass(frozen=True, slots=True)
class Receipt:
    """The outcome of sending one message; ``error`` is set when it did not go out."""

    key: DeliveryKey
    status: DeliveryStatus
    provider_message_id: str | None = None
    error: DeliveryError | None = None
    tries: int = 1
    detail: dict[str, str] = field(default_factory=dict)

    @property
    def may_have_gone_out(self) -> bool:
        """Whether this attempt may have reached the person: accepted, or its outcome unknown."""
        if self.error is not None:
            return self.error.outcome_unknown
        return self.status in _WENT_OUT

    @classmethod
    def failed(cls, key: DeliveryKey, error: DeliveryError, tries: int = 1) -> Receipt:
        """A receipt for a message that did not go out, transient or permanent."""
        status = DeliveryStatus.RETRYING if error.transient else DeliveryStatus.FAILED
        return cls(key=key, status=status, error=error, tries=tries)


_WENT_OUT = frozenset({DeliveryStatus.SENT, DeliveryStatus.DELIVERED, DeliveryStatus.ACKNOWLEDGED})


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
