"""One channel over several providers: a backup takes over what a failing provider could not send.

A channel may list backup providers (a second SMTP relay, a second Twilio account). Every
message whose receipt carries a provider fault (``DeliveryError.provider``) is sent again,
in the same call, through the next provider; a fault about the recipient is final, since no
provider can help with it, and so is, for this call, a request whose outcome is unknown (it
may have gone out: the provider still rests, but the message is not sent twice at once). A
provider that faulted rests for a cooldown, so the next batches go to a healthy one first
instead of waiting on timeouts again. A cooldown is a preference, never a reason to send
nothing: resting providers are still tried, after the others, soonest-to-recover first.

Cooldowns are shared by every worker process through the broker's Redis (one key per channel
and provider, expiring on its own). Redis being unreachable never stops sending: the channel
then behaves as if no provider were resting.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import ClassVar, TypeVar

import redis

from channels.base import Channel, ReportsBack
from worker.broker import broker_url
from worker.config import Settings
from worker.core.errors import ConfigurationError, DeliveryError, HeraldError, PermanentDeliveryError
from worker.core.messages import OutboundMessage, Receipt
from worker.core.statuses import DeliveryStatus

log = logging.getLogger("herald.failover")

T = TypeVar("T")

#: Socket timeouts of the cooldown's Redis calls: a slow Redis must not hold up sending.
REDIS_TIMEOUT_S = 0.5
#: After a Redis error, how long cooldowns are left alone before Redis is asked again.
REDIS_RETRY_S = 5.0
#: Error codes meaning "this provider does not know that id" (Twilio's, and a bare HTTP 404).
NOT_FOUND_CODES = frozenset({"20404", "http-404"})


class Cooldown:
    """Which providers of one channel are resting after a fault, as Redis keys that expire on their own."""

    def __init__(self, settings: Settings, channel: str, seconds: float) -> None:
        self.settings = settings
        self.channel = channel
        self.seconds = seconds
        self._client: redis.Redis | None = None
        self._quiet_until = 0.0  # monotonic time before which Redis is not asked again
        self._warned = False

    def key(self, provider: str) -> str:
        """The Redis key that exists while ``provider`` rests."""
        return f"{self.settings.broker_namespace}:cooldown:{self.channel}:{provider}"

    def remaining(self, providers: Sequence[str]) -> dict[str, float]:
        """Seconds each resting provider still rests (one round trip); the others are left out."""

        def ask(client: redis.Redis) -> list[int]:
            pipe = client.pipeline(transaction=False)
            for provider in providers:
                pipe.pttl(self.key(provider))
            return [int(reply) for reply in pipe.execute()]

        replies = self._redis(ask)
        if replies is None:
            return {}
        resting: dict[str, float] = {}
        for provider, ttl_ms in zip(providers, replies, strict=True):
            if ttl_ms > 0:
                resting[provider] = ttl_ms / 1000
            elif ttl_ms == -1:  # a key without expiry: someone rested it by hand, until removed
                resting[provider] = math.inf
        return resting

    def start(self, provider: str) -> None:
        """Rest ``provider`` for the cooldown from now; a new fault restarts the clock."""
        if self.seconds <= 0:
            return
        ttl_ms = max(1, round(self.seconds * 1000))
        self._redis(lambda client: client.set(self.key(provider), "1", px=ttl_ms))

    def close(self) -> None:
        """Drop the Redis connections."""
        client, self._client = self._client, None
        if client is not None:
            client.close()

    def _redis(self, call: Callable[[redis.Redis], T]) -> T | None:
        # Synchronous on purpose, like the Twilio rate limiter: one local round trip per
        # send() or provider fault, cheaper than a thread hop.
        if time.monotonic() < self._quiet_until:
            return None
        try:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    broker_url(self.settings), socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
                )
            result = call(self._client)
        except (redis.RedisError, OSError, HeraldError) as exc:
            self._quiet_until = time.monotonic() + REDIS_RETRY_S
            if not self._warned:
                self._warned = True
                log.warning(
                    "%s: provider cooldowns unavailable (%s); sending as if no provider were resting",
                    self.channel,
                    type(exc).__name__,
                )
            return None
        if self._warned:
            self._warned = False
            log.info("%s: provider cooldowns available again", self.channel)
        return result


class FailoverChannel(Channel):
    """One channel over several providers, tried in order, each resting for a while after a fault.

    ``providers`` are (name, channel) pairs in the configured order; every channel sends the
    same kind of message (they are one channel built with different settings). ``cooldown``
    may be None when there is nothing to choose between (a lone provider).
    """

    name: ClassVar[str] = "failover"

    def __init__(self, channel: str, providers: Sequence[tuple[str, Channel]], cooldown: Cooldown | None) -> None:
        """Keep the providers in order.

        Raises:
            ConfigurationError: no provider, or one named twice.
        """
        names = [name for name, _ in providers]
        if not names:
            raise ConfigurationError(f"channel {channel!r} needs at least one provider")
        if len(set(names)) != len(names):
            raise ConfigurationError(f"channel {channel!r} lists a provider twice: {', '.join(names)}")
        self.channel = channel
        self.providers: dict[str, Channel] = dict(providers)
        self._cooldown = cooldown

    @classmethod
    def over(cls, channel: str, providers: Sequence[tuple[str, Channel]], cooldown: Cooldown | None) -> FailoverChannel:
        """The failover channel for these providers; it reports back when every provider does.

        Raises:
            ConfigurationError: no provider, or one named twice.
        """
        if all(isinstance(provider, ReportsBack) for _, provider in providers):
            return ReportingFailoverChannel(channel, providers, cooldown)
        return FailoverChannel(channel, providers, cooldown)

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Receipt]:
        """Send through the preferred provider, then what it failed through the next; one receipt per message."""
        receipts: list[Receipt | None] = [None] * len(messages)
        tries = [0] * len(messages)
        failed_over: list[list[str]] = [[] for _ in messages]
        pending = list(range(len(messages)))
        for provider in self.order():
            if not pending:
                break
            sent = await self.providers[provider].send([messages[index] for index in pending])
            again: list[int] = []
            fault: DeliveryError | None = None
            for index, receipt in zip(pending, sent, strict=True):
                tries[index] += receipt.tries
                receipts[index] = _tagged(receipt, provider, tries[index], failed_over[index])
                if receipt.error is not None and receipt.error.provider:
                    fault = fault or receipt.error
                    if receipt.error.outcome_unknown:
                        continue  # it may have gone out: only a later, counted attempt sends it again
                    again.append(index)
                    failed_over[index].append(provider)
            if fault is not None:
                self._rest(provider, fault, len(again))
            pending = again
        done = [receipt for receipt in receipts if receipt is not None]
        assert len(done) == len(messages)  # every provider is tried until nothing is pending
        return done

    def order(self) -> list[str]:
        """The providers to try, best first: those not resting in configured order, then the soonest to recover."""
        names = list(self.providers)
        if self._cooldown is None or len(names) == 1:
            return names
        resting = self._cooldown.remaining(names)
        fresh = [name for name in names if name not in resting]
        return fresh + sorted(resting, key=resting.__getitem__)

    async def aclose(self) -> None:
        """Close every provider, even when one fails to close.

        Raises:
            Exception: the first error a provider raised while closing, after all were closed.
        """
        first: Exception | None = None
        for provider in self.providers.values():
            try:
                await provider.aclose()
            except Exception as exc:  # the others still get closed
                first = first or exc
        if self._cooldown is not None:
            self._cooldown.close()
        if first is not None:
            raise first

    def _rest(self, provider: str, fault: DeliveryError, count: int) -> None:
        if self._cooldown is None or len(self.providers) == 1:
            return
        self._cooldown.start(provider)
        log.warning(
            "%s: provider %s failed %d message(s) (%s: %s); resting it for %.0fs",
            self.channel,
            provider,
            count,
            fault.code or fault.kind,
            fault.message,
            self._cooldown.seconds,
        )


class ReportingFailoverChannel(FailoverChannel):
    """A failover channel whose providers report outcomes later, so it can be asked for them too."""

    def __init__(self, channel: str, providers: Sequence[tuple[str, Channel]], cooldown: Cooldown | None) -> None:
        """Keep the providers in order.

        Raises:
            ConfigurationError: no provider, one named twice, or one that cannot be asked for a verdict.
        """
        super().__init__(channel, providers, cooldown)
        self._reporters: dict[str, ReportsBack] = {}
        for name, provider in providers:
            if not isinstance(provider, ReportsBack):
                raise ConfigurationError(f"provider {name!r} of channel {channel!r} cannot report outcomes")
            self._reporters[name] = provider

    async def fetch_verdict(self, provider_message_id: str) -> tuple[DeliveryStatus | None, DeliveryError | None]:
        """Ask each provider in turn until one knows the id; each only knows the ids it issued.

        Raises:
            DeliveryError: a provider could not be asked and no other knew the id, or none knew it.
        """
        failure: DeliveryError | None = None
        unknown: DeliveryError | None = None
        for name in self.order():
            try:
                return await self._reporters[name].fetch_verdict(provider_message_id)
            except DeliveryError as error:
                if error.code in NOT_FOUND_CODES:
                    unknown = error
                else:
                    failure = failure or error
        raise failure or unknown or PermanentDeliveryError("no provider knows this message", code="20404")


def _tagged(receipt: Receipt, provider: str, tries: int, failed_over: Sequence[str]) -> Receipt:
    detail = {**receipt.detail, "provider": provider}
    if failed_over:
        detail["failed_over"] = ",".join(failed_over)
    return dataclasses.replace(receipt, tries=tries, detail=detail)
