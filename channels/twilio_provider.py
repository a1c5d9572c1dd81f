"""The Twilio provider: one client per event loop, the error table, and the per-sender rate limit.

The SMS and phone channels own what to say; this module owns how Twilio is spoken to.
It is the one place where twilio's and aiohttp's exceptions become herald's
``TransientDeliveryError`` / ``PermanentDeliveryError``, marked ``provider=True`` when the
account or Twilio itself is at fault rather than the number. For a request that creates a
message or call, whatever may have gone out (no answer, an answer herald cannot read or that
names no SID) is an ``UnknownOutcomeError`` instead, and is never tried again here.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlencode

import aiohttp
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from worker.config import Settings
from worker.core.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError, UnknownOutcomeError
from worker.core.messages import DeliveryKey
from worker.core.statuses import UNCONFIRMED_CALL, DeliveryStatus

T = TypeVar("T")

# Twilio error codes that no retry can fix, with a message safe to log and show.
PERMANENT_CODES: dict[int, str] = {
    20003: "Twilio rejected the credentials",
    20404: "Twilio resource not found",
    21211: "invalid 'To' phone number",
    21214: "'To' number cannot be reached",
    21217: "phone number is not valid for calls",
    21219: "'To' number not verified (trial account)",
    21401: "invalid phone number",
    21408: "sending to this region is not enabled",
    21602: "message body is required",
    21603: "'From' or MessagingServiceSid is required",
    21604: "'To' number is required",
    21606: "'From' number cannot send this message",
    21610: "recipient has unsubscribed (replied STOP)",
    21612: "'To' number cannot be reached from this sender",
    21614: "'To' number is not a valid mobile number",
    21215: "calls to this region are not enabled",
    13224: "invalid phone number for a call",
    13227: "calls to this destination are not permitted",
    30003: "unreachable destination handset",
    30004: "message blocked",
    30005: "unknown destination handset",
    30006: "landline or unreachable carrier",
    30007: "message filtered by the carrier",
    30008: "unknown delivery error",
}
# Codes that mean "later": rate limited or Twilio having trouble.
TRANSIENT_CODES: dict[int, str] = {
    20429: "Twilio rate limit (429)",
    20500: "Twilio internal error",
    20503: "Twilio service unavailable",
    30001: "queue overflow at Twilio",
}
# Permanent codes about our account or sender, not the number: another account may succeed.
PROVIDER_CODES: frozenset[int] = frozenset({20003, 21603, 21606, 21408, 21215})


def map_twilio_error(exc: BaseException) -> DeliveryError:
    """Translate a twilio, aiohttp or socket exception into herald's error tree.

    ``provider`` is True for Twilio being unreachable, slow, rate limiting or failing, and for
    refusals of our credentials, sender or enabled regions; number-specific codes are the
    recipient's.
    """
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        status = int(exc.status or 0)
        code = int(exc.code) if exc.code else None
        shown = str(code if code is not None else f"http-{status}")
        if code in TRANSIENT_CODES:
            return TransientDeliveryError(TRANSIENT_CODES[code], code=shown, provider=True)
        if code in PERMANENT_CODES:
            return PermanentDeliveryError(PERMANENT_CODES[code], code=shown, provider=code in PROVIDER_CODES)
        if status == 429 or status >= 500:
            return TransientDeliveryError(f"Twilio answered HTTP {status}", code=shown, provider=True)
        refused = f"Twilio refused the request (HTTP {status})"
        return PermanentDeliveryError(refused, code=shown, provider=code is None and status == 401)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return TransientDeliveryError("Twilio did not answer in time", code="timeout", provider=True)
    if isinstance(exc, aiohttp.ClientError | ConnectionError | OSError):
        return TransientDeliveryError(f"cannot reach Twilio: {type(exc).__name__}", code="connection", provider=True)
    return TransientDeliveryError(f"unexpected error talking to Twilio: {type(exc).__name__}", code="unknown")


#: What a message or call SID looks like (Twilio's are two letters and 32 hex digits; a compatible
#: provider may use its own ids). ``None``, an empty string or a number is no SID.
_SID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{1,63}")
#: Never connected: the request cannot have gone out.
_NOT_CONNECTED = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, ConnectionRefusedError)


def map_create_error(exc: BaseException) -> DeliveryError:
    """Translate what a create request (a message, a call) raised; whatever may have gone out is unknown.

    Only what certainly did not go out keeps the meaning ``map_twilio_error`` gives it: a
    connection never made, and a refusal Twilio answered (any 4xx, 429, or a 5xx carrying
    Twilio's error body). A timeout, a dropped connection, a 5xx without Twilio's body (a
    gateway's) and a 2xx herald cannot read are an ``UnknownOutcomeError``: the message may
    have been taken, so it is never sent again at once.
    """
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        status = int(exc.status or 0)
        twilio_body = exc.code is not None and int(exc.code) != status  # twilio-python uses the status otherwise
        if status < 500 or twilio_body:
            return map_twilio_error(exc)
        return UnknownOutcomeError(
            f"Twilio answered HTTP {status} without its error body; the request may have gone through",
            code=f"http-{status}",
            provider=True,
        )
    if isinstance(exc, _NOT_CONNECTED):
        return map_twilio_error(exc)
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return UnknownOutcomeError(
            "Twilio did not answer in time; the request may have gone through", code="timeout", provider=True
        )
    if isinstance(exc, aiohttp.ClientError | OSError):
        return UnknownOutcomeError(
            f"connection to Twilio lost before its answer ({type(exc).__name__}); the request may have gone through",
            code="connection-lost",
            provider=True,
        )
    return UnknownOutcomeError(
        f"Twilio's answer could not be read ({type(exc).__name__}); the request may have gone through",
        code="unreadable-answer",
        provider=True,
    )


def accepted_sid(resource: Any) -> str | None:
    """The SID of a created message or call, or None when the answer named none (``{}``)."""
    sid = getattr(resource, "sid", None)
    return sid if isinstance(sid, str) and _SID.fullmatch(sid) else None


def callback_error(status: str, error_code: str | None) -> PermanentDeliveryError:
    """The error a failed delivery callback (undelivered, failed, busy, no-answer) stands for."""
    if error_code and error_code.isdigit() and int(error_code) in PERMANENT_CODES:
        return PermanentDeliveryError(f"{status}: {PERMANENT_CODES[int(error_code)]}", code=error_code)
    return PermanentDeliveryError(f"provider reported {status}", code=error_code or status)


class TwilioProvider:
    """An async twilio client bound to the running loop, with tries and a rate limit around each call."""

    def __init__(self, settings: Settings, *, rate_per_second: float, rate_key: str, retry_initial_s: float = 0.2):
        self.settings = settings
        self._client: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._limiter = RateLimiter(settings, rate_key, rate_per_second)
        self._retry_initial_s = retry_initial_s
        # twilio logs full request parameters (numbers, bodies) at INFO, from both its sync and
        # async clients; herald never does, and the lines cost real CPU per request.
        logging.getLogger("twilio").setLevel(logging.WARNING)

    async def client(self) -> Client:
        """The client for the running loop; its aiohttp session must be created inside that loop."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            http = AsyncTwilioHttpClient(timeout=self.settings.twilio_timeout_s)
            client = Client(
                self.settings.twilio_account_sid,
                self.settings.twilio_auth_token.get_secret_value(),
                http_client=http,
            )
            if self.settings.twilio_base_url:
                client.api.base_url = self.settings.twilio_base_url.rstrip("/")
            self._client, self._loop = client, loop
        return self._client

    async def call(self, operation: Callable[[Client], Awaitable[T]]) -> tuple[T, int]:
        """Run one Twilio request that changes nothing (a fetch), with the rate limit and short retries.

        Returns (result, tries).

        Raises:
            DeliveryError: transient after the last try, or permanent at once.
        """
        result, error, tries = await self._tries(operation, map_twilio_error)
        if error is not None:
            raise error
        assert result is not None
        return result, tries

    async def create(
        self, operation: Callable[[Client], Awaitable[Any]]
    ) -> tuple[str | None, DeliveryError | None, int]:
        """Create a message or call: (SID, error, tries), exactly one of SID and error set.

        Tried again only while nothing certainly went out; an answer that may have created the
        resource but names no SID (``{}``, not JSON, no answer) is an ``UnknownOutcomeError``.
        """
        created, error, tries = await self._tries(operation, map_create_error)
        if error is not None:
            return None, error, tries
        sid = accepted_sid(created)
        if sid is None:
            missing = UnknownOutcomeError(
                "Twilio accepted the request but named no SID; it may have gone through", code="no-sid", provider=True
            )
            return None, missing, tries
        return sid, None, tries

    async def _tries(
        self, operation: Callable[[Client], Awaitable[T]], mapper: Callable[[BaseException], DeliveryError]
    ) -> tuple[T | None, DeliveryError | None, int]:
        client = await self.client()
        tries = 0
        while True:
            tries += 1
            await self._limiter.acquire()
            try:
                return await operation(client), None, tries
            except Exception as exc:  # mapped right here, at the edge
                error = mapper(exc)
            if not error.transient or error.outcome_unknown or tries >= self.settings.twilio_tries:
                return None, error, tries
            await asyncio.sleep(self._retry_initial_s * 2 ** (tries - 1) + random.uniform(0, self._retry_initial_s))

    async def fetch_status(self, kind: str, sid: str) -> tuple[str, str | None]:
        """Ask Twilio where a message or call stands: (status, error code).

        Raises:
            DeliveryError: the request failed.
        """

        async def fetch(client: Client) -> Any:
            resource = client.messages(sid) if kind == "message" else client.calls(sid)
            return await resource.fetch_async()

        found, _ = await self.call(fetch)
        code = getattr(found, "error_code", None)
        return str(found.status), (str(code) if code else None)

    async def aclose(self) -> None:
        """Close the aiohttp session of the current client."""
        if self._client is not None:
            http: Any = self._client.http_client
            await http.close()
            self._client = None


class RateLimiter:
    """At most ``per_second`` requests per sender across every worker process (dramatiq's limiter on Redis).

    The limit is a ceiling for every sliding second, not an average: buckets of 1/(N-1) s hold
    one request each, so even a request at the very end of one bucket followed by requests at
    the starts of the next ones cannot put N+1 requests into one second. The average rate is
    therefore N-1 per second. Callers wait for a free bucket rather than fail.
    """

    def __init__(self, settings: Settings, key: str, per_second: float) -> None:
        self.settings = settings
        self.key = key
        self.per_second = per_second
        if per_second <= 100:
            self.bucket_ms, self.limit = math.ceil(1000 / max(per_second - 1, 0.5)), 1
        else:
            self.bucket_ms, self.limit = 10, max(1, math.floor(per_second / 100) - 1)
        self._limiter: Any = None

    def _get(self) -> Any:
        if self._limiter is None:
            import redis
            from dramatiq.rate_limits import BucketRateLimiter
            from dramatiq.rate_limits.backends import RedisBackend

            from worker.broker import broker_url

            client = redis.Redis.from_url(broker_url(self.settings))
            backend = RedisBackend(client=client)
            self._limiter = BucketRateLimiter(  # type: ignore[no-untyped-call]
                backend, self.key, limit=self.limit, bucket=self.bucket_ms
            )
        return self._limiter

    def _try_once(self) -> bool:
        with self._get().acquire(raise_on_failure=False) as acquired:
            return bool(acquired)

    async def acquire(self) -> None:
        """Wait until this process may make one more request.

        A refused caller sleeps to just after the next bucket starts, so the requests that
        win go out near bucket starts, evenly spaced, rather than bunched at bucket edges.
        """
        bucket_s = self.bucket_ms / 1000
        while True:
            # dramatiq's limiter is synchronous. The call is one local Redis round trip, made
            # in the loop on purpose: a thread hop between the grant and the send would let
            # requests bunch up on the wire and break the per-second ceiling.
            if self._try_once():
                return
            now = time.time()
            next_start = (now // bucket_s + 1) * bucket_s
            await asyncio.sleep(next_start - now + random.uniform(0, bucket_s * 0.05))


#: Twilio message statuses, as herald's delivery statuses.
MESSAGE_STATUS = {
    "accepted": DeliveryStatus.SENT,
    "scheduled": DeliveryStatus.SENT,
    "queued": DeliveryStatus.SENT,
    "sending": DeliveryStatus.SENT,
    "sent": DeliveryStatus.SENT,
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.DELIVERED,
    "undelivered": DeliveryStatus.FAILED,
    "failed": DeliveryStatus.FAILED,
    "canceled": DeliveryStatus.FAILED,
}
#: Call statuses that end a call without the person confirming.
CALL_FAILED = frozenset({"busy", "no-answer", "failed", "canceled"})


def callback_url(base: str, key: DeliveryKey) -> str:
    """A status-callback URL that names the delivery it reports on.

    The provider signs the whole URL with its callback, so the key cannot be forged; it lets
    a callback settle a send whose answer herald could not read (no provider id was learned).
    """
    return f"{base}?{urlencode({'event': key.event_id, 'ref': key.recipient_ref, 'step': key.step})}"


def key_in_callback(query: Mapping[str, str], channel: str) -> DeliveryKey | None:
    """The delivery key a callback's URL names (see ``callback_url``), or None."""
    event_id, ref, step = query.get("event"), query.get("ref"), query.get("step", "")
    if not event_id or not ref or not step.isdigit():
        return None
    return DeliveryKey(event_id, ref, channel, int(step))


def message_verdict(status: str, error_code: str | None) -> tuple[DeliveryStatus | None, PermanentDeliveryError | None]:
    """What a message status reported by Twilio means for the delivery (None: unknown status)."""
    verdict = MESSAGE_STATUS.get(status.lower())
    error = callback_error(status.lower(), error_code) if verdict is DeliveryStatus.FAILED else None
    return verdict, error


def call_verdict(status: str) -> tuple[DeliveryStatus | None, PermanentDeliveryError | None]:
    """What a call status means: failed when the call ended unconfirmed, None while it goes on.

    The keypress happens before the call ends, but its request may commit after the
    ``completed`` callback: a keypress recorded later replaces this failure
    (``worker.core.statuses.overturnable``).
    """
    status = status.lower()
    if status in CALL_FAILED:
        return DeliveryStatus.FAILED, callback_error(status, None)
    if status == "completed":
        return DeliveryStatus.FAILED, PermanentDeliveryError(
            "call ended without the person pressing 1", code=UNCONFIRMED_CALL
        )
    return None, None
