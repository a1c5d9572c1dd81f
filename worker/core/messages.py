"""The values that cross the channel interface: who to reach, what to say, the key a send is
claimed under, and the receipt that comes back.

They live in the core, below both the engine and the channels, so that the store can record
receipts and the engine can build messages without importing any channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from worker.core.errors import DeliveryError
from worker.core.statuses import DeliveryStatus


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
