"""The Twilio edge: one table of vendor errors → herald's errors, and the per-sender rate limit."""

from __future__ import annotations

import asyncio
import bisect
import json
import threading
import time
import uuid

import aiohttp
import pytest
from twilio.base.exceptions import TwilioRestException, TwilioServiceException

from channels.phone import PhoneChannel
from channels.sms import SmsChannel, check_mobile
from channels.twilio_provider import RateLimiter, callback_error, map_create_error, map_twilio_error
from worker.config import Settings
from worker.core.errors import PermanentDeliveryError, TransientDeliveryError, UnknownOutcomeError
from worker.core.messages import Content, DeliveryKey, OutboundMessage, Receipt, Recipient
from worker.core.statuses import DeliveryStatus
from worker.sandbox.twilio import TwilioSandbox


def rest(status: int, code: int | None) -> TwilioRestException:
    return TwilioRestException(status, "https://api.twilio.com/2010-04-01/Accounts/AC/Messages.json", "msg", code)


def service(status: int, code: int) -> TwilioServiceException:
    return TwilioServiceException("https://www.twilio.com/docs/errors", "Problem", status, code)


@pytest.mark.parametrize(
    ("exc", "kind", "code", "provider"),
    [
        (rest(400, 21211), PermanentDeliveryError, "21211", False),
        (rest(400, 21614), PermanentDeliveryError, "21614", False),
        (rest(400, 21610), PermanentDeliveryError, "21610", False),
        (rest(400, 21408), PermanentDeliveryError, "21408", True),
        (rest(400, 21612), PermanentDeliveryError, "21612", False),
        (rest(400, 21606), PermanentDeliveryError, "21606", True),
        (rest(400, 21217), PermanentDeliveryError, "21217", False),
        (rest(400, 13224), PermanentDeliveryError, "13224", False),
        (rest(401, 20003), PermanentDeliveryError, "20003", True),
        (rest(400, 99999), PermanentDeliveryError, "99999", False),
        (rest(404, None), PermanentDeliveryError, "http-404", False),
        (rest(429, 20429), TransientDeliveryError, "20429", True),
        (rest(429, None), TransientDeliveryError, "http-429", True),
        (rest(500, 20500), TransientDeliveryError, "20500", True),
        (rest(503, 20503), TransientDeliveryError, "20503", True),
        (rest(502, None), TransientDeliveryError, "http-502", True),
        (service(400, 21211), PermanentDeliveryError, "21211", False),
        (service(429, 20429), TransientDeliveryError, "20429", True),
        (service(500, 20500), TransientDeliveryError, "20500", True),
        (TimeoutError(), TransientDeliveryError, "timeout", True),
        (TimeoutError(), TransientDeliveryError, "timeout", True),
        (aiohttp.ClientConnectionError(), TransientDeliveryError, "connection", True),
        (aiohttp.ServerDisconnectedError(), TransientDeliveryError, "connection", True),
        (ConnectionRefusedError(), TransientDeliveryError, "connection", True),
        (rest(400, 21603), PermanentDeliveryError, "21603", True),
        (rest(400, 21215), PermanentDeliveryError, "21215", True),
        (rest(400, 21214), PermanentDeliveryError, "21214", False),
        (rest(404, 20404), PermanentDeliveryError, "20404", False),
        (rest(401, None), PermanentDeliveryError, "http-401", True),
        (rest(400, None), PermanentDeliveryError, "http-400", False),
        (rest(429, 30001), TransientDeliveryError, "30001", True),
        (ValueError("odd"), TransientDeliveryError, "unknown", False),
    ],
)
def test_vendor_errors_map_to_transient_or_permanent(exc: BaseException, kind: type, code: str, provider: bool) -> None:
    """``provider``: Twilio or our account failed, so a backup account may succeed; else the number is at fault."""
    error = map_twilio_error(exc)
    assert type(error) is kind
    assert error.code == code
    assert error.provider is provider
    assert "\n" not in error.message and "+1" not in error.message


@pytest.mark.parametrize(
    ("status", "error_code", "code"),
    [
        ("undelivered", "30003", "30003"),
        ("failed", "30008", "30008"),
        ("busy", None, "busy"),
        ("no-answer", None, "no-answer"),
    ],
)
def test_failed_callbacks_become_permanent_errors(status: str, error_code: str | None, code: str) -> None:
    error = callback_error(status, error_code)
    assert isinstance(error, PermanentDeliveryError) and error.code == code


@pytest.mark.parametrize(
    ("number", "problem"),
    [
        ("+14155552671", None),
        ("+8613912345678", None),
        ("+442079460958", "not-mobile"),
        ("12345", "invalid-contact"),
        ("+1415", "invalid-contact"),
        (None, "no-contact"),
    ],
)
def test_sms_numbers_are_checked_before_any_request(number: str | None, problem: str | None) -> None:
    error = check_mobile(number)
    assert (error.code if error else None) == problem


def test_the_rate_limit_holds_for_every_sliding_second_across_threads(redis_url: str) -> None:
    settings = Settings(broker_url=redis_url)
    key = f"rate-test-{uuid.uuid4().hex}"
    times: list[float] = []
    lock = threading.Lock()

    class Stamped(RateLimiter):
        """Notes the moment Redis grants a slot, before the thread hop back to the loop."""

        def _try_once(self) -> bool:
            granted = super()._try_once()
            if granted:
                with lock:
                    times.append(time.monotonic())
            return granted

    def worker() -> None:
        limiter = Stamped(settings, key, 10)

        async def one() -> None:
            await limiter.acquire()

        async def main() -> None:
            await asyncio.gather(*(one() for _ in range(10)))

        asyncio.run(main())

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    times.sort()
    busiest = max(bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times))
    assert len(times) == 40
    # Redis grants at most 10 per sliding second (see the bucket arithmetic test); the stamps
    # are taken in Python after the reply, so thread scheduling on a busy machine may show more.
    assert busiest <= 12
    assert times[-1] - times[0] >= (40 - 1) / 10 - 0.2  # never faster than the limit on average


@pytest.mark.parametrize("per_second", [1.0, 2.0, 5.0, 10.0, 33.0, 100.0, 250.0, 1000.0])
def test_the_bucket_arithmetic_keeps_every_sliding_second_within_the_limit(per_second: float) -> None:
    limiter = RateLimiter(Settings(), "arith", per_second)
    # Worst case: one grant at the very end of a bucket, then one at the start of each next bucket.
    # k+1 grants need at least k-1 whole buckets between the first and the last.
    most_in_one_second = limiter.limit * (1 + int(1000 // limiter.bucket_ms) + 1)
    assert limiter.limit * (1000 / limiter.bucket_ms) <= per_second
    assert most_in_one_second <= max(per_second, limiter.limit) + limiter.limit


# --- create requests: what may have gone out is unknown ----------------------------------------


@pytest.mark.parametrize(
    ("exc", "kind", "code"),
    [
        (rest(400, 21211), PermanentDeliveryError, "21211"),
        (rest(429, 20429), TransientDeliveryError, "20429"),
        (rest(429, None), TransientDeliveryError, "http-429"),
        (rest(500, 20500), TransientDeliveryError, "20500"),
        (rest(503, 20503), TransientDeliveryError, "20503"),
        (service(500, 20500), TransientDeliveryError, "20500"),
        (rest(502, None), UnknownOutcomeError, "http-502"),
        (rest(502, 502), UnknownOutcomeError, "http-502"),  # twilio-python's code when the body is not Twilio's
        (rest(504, None), UnknownOutcomeError, "http-504"),
        (ConnectionRefusedError(), TransientDeliveryError, "connection"),
        (aiohttp.ConnectionTimeoutError(), TransientDeliveryError, "timeout"),
        (TimeoutError(), UnknownOutcomeError, "timeout"),
        (aiohttp.SocketTimeoutError(), UnknownOutcomeError, "timeout"),
        (aiohttp.ServerDisconnectedError(), UnknownOutcomeError, "connection-lost"),
        (aiohttp.ClientPayloadError(), UnknownOutcomeError, "connection-lost"),
        (json.JSONDecodeError("Expecting value", "<html>ok</html>", 0), UnknownOutcomeError, "unreadable-answer"),
        (AttributeError("'list' object has no attribute 'get'"), UnknownOutcomeError, "unreadable-answer"),
    ],
)
def test_create_errors_keep_their_meaning_only_when_nothing_went_out(exc: BaseException, kind: type, code: str) -> None:
    error = map_create_error(exc)
    assert type(error) is kind
    assert error.code == code
    assert error.outcome_unknown is (kind is UnknownOutcomeError)
    assert error.transient is not (kind is PermanentDeliveryError)
    assert "\n" not in error.message


def test_a_connection_refused_by_the_os_is_certain(unused_port: int) -> None:
    async def connect() -> BaseException:
        async with aiohttp.ClientSession() as session:
            try:
                await session.post(f"http://127.0.0.1:{unused_port}/Messages.json", data={"To": "+1"})
            except aiohttp.ClientError as exc:
                return exc
        raise AssertionError("nothing listens there")

    error = map_create_error(asyncio.run(connect()))
    assert type(error) is TransientDeliveryError and error.code == "connection"


@pytest.fixture
def unused_port() -> int:
    from worker.service.serving import free_port

    return free_port()


@pytest.mark.parametrize(("channel", "body"), [("sms", "not-json"), ("sms", "empty-json"), ("phone", "alternate")])
def test_an_unreadable_2xx_is_asked_once_and_never_recorded_as_a_sid(channel: str, body: str, redis_url: str) -> None:
    numbers = ["+14155550123", "+14155550124"]
    with TwilioSandbox(faults={"rate_unreadable": 1.0, "unreadable_body": body}, callback_retries=0) as sandbox:
        settings = Settings(
            broker_url=redis_url,
            broker_namespace=f"herald-test-{uuid.uuid4().hex[:8]}",
            twilio_base_url=sandbox.url,
            twilio_tries=3,
            sms_rate_per_second=500.0,
            phone_rate_per_second=500.0,
            public_url="http://127.0.0.1:9",
        )
        build = SmsChannel if channel == "sms" else PhoneChannel
        sender = build(settings, retry_initial_s=0.01)
        content = Content(cache_key="k", locale="en", subject="", text="Security notice: we reset your sessions.")
        people = [Recipient(ref=f"r{n}", user_id=f"u{n}", phone=number) for n, number in enumerate(numbers)]
        messages = [OutboundMessage(DeliveryKey("evt-u", p.ref, channel), p, content) for p in people]

        async def scenario() -> list[Receipt]:
            try:
                return await sender.send(messages)
            finally:
                await sender.aclose()

        receipts = asyncio.run(scenario())
        accepted = len(sandbox.messages) + len(sandbox.calls)
        asked = sorted(str(r.to) for r in sandbox.requests)

    assert asked == numbers and accepted == 2, "one request per message: the provider took each"
    for receipt in receipts:
        assert receipt.status is DeliveryStatus.RETRYING and receipt.tries == 1
        assert isinstance(receipt.error, UnknownOutcomeError)
        assert receipt.error.code in {"no-sid", "unreadable-answer"}
        assert receipt.provider_message_id is None and receipt.may_have_gone_out
