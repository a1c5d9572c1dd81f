"""herald's one error tree.

::

    HeraldError
    ├── ConfigurationError        a setting, template or wiring is wrong; found at start-up
    ├── BrokerUnavailable         the queue cannot be reached
    ├── InvalidEvent              an event is refused; ``reason`` is one line, safe to show
    │   ├── PayloadTooLarge
    │   └── EventConflict         same event_id, different body
    └── DeliveryError             one send failed; carries the provider's code, a safe message
        ├── TransientDeliveryError   retry later (4xx, disconnects, timeouts, 429/5xx)
        │   └── UnknownOutcomeError  the request may have gone out (an unreadable 2xx, no reply
        │                            after the message data): never retried at once
        └── PermanentDeliveryError   retrying cannot help (5xx, refused recipient); fall back

A ``DeliveryError`` also says whose fault it is. ``provider=True``: the provider failed
(unreachable, timing out, overloaded, refusing our credentials or our sender, TLS), so a
backup provider of the same channel may succeed. ``provider=False``: the failure is about
this recipient (refused mailbox, invalid or unsubscribed number), so no provider can help.
The two axes are independent: a refused login is permanent *and* the provider's.

An ``UnknownOutcomeError`` is not a failure: the provider may have taken the message. It is
retried only later, as a recorded resend that counts towards the cap of provider requests
per delivery key, and never handed to a backup provider in the same attempt.

Vendor exceptions (aiosmtplib, twilio) are translated into these at the channel edge and
never leak into the core.
"""

from __future__ import annotations


class HeraldError(Exception):
    """Base of every error herald raises on purpose."""


class ConfigurationError(HeraldError):
    """A setting, template or piece of wiring is wrong; reported at start-up."""


class BrokerUnavailable(HeraldError):
    """The message broker cannot be reached."""


class InvalidEvent(HeraldError):
    """An event was refused; ``reason`` is one line that is safe to show and store."""

    def __init__(self, reason: str, *, event_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id


class PayloadTooLarge(InvalidEvent):
    """The event payload is larger than ``HERALD_MAX_EVENT_BYTES``."""


class EventConflict(InvalidEvent):
    """An event_id arrived again with a different body."""


class DeliveryError(HeraldError):
    """One delivery failed; ``code`` is the provider's, ``message`` is safe to log.

    ``provider`` is True when the provider itself failed, so another provider may succeed.
    """

    transient: bool = False
    #: The request may have reached the person: sending it again may duplicate it.
    outcome_unknown: bool = False

    def __init__(self, message: str, *, code: str | None = None, provider: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.provider = provider

    @property
    def kind(self) -> str:
        """The class name recorded in the ledger's ``error_class`` column."""
        return type(self).__name__


class TransientDeliveryError(DeliveryError):
    """Retrying later may succeed."""

    transient = True


class UnknownOutcomeError(TransientDeliveryError):
    """The provider may or may not have taken the message; resent only later, and only up to the cap."""

    outcome_unknown = True


class PermanentDeliveryError(DeliveryError):
    """Retrying cannot succeed; the recipient needs another channel."""


def failure_line(exc: BaseException, limit: int = 300) -> str:
    """``OverflowError: date value out of range``: an exception as one line for a log or the
    ledger, whitespace collapsed and cut to ``limit`` characters."""
    message = " ".join(str(exc).split())
    line = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"
