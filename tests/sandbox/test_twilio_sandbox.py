"""The Twilio sandbox, driven by the real twilio client over real HTTP.

How the client is pointed at the sandbox (twilio 9.13): ``client.api.base_url = sandbox.url``.
``Client.api`` is built once and cached, and ``Domain.absolute_url`` joins ``base_url`` with
the resource path on every request, so every ``client.messages``/``client.calls`` call (sync
and ``*_async``) goes to the sandbox. ``Client.get_hostname`` would rewrite the host only when
an edge or region is configured, so the clients here are built with ``environment={}`` to keep
``TWILIO_EDGE``/``TWILIO_REGION`` from the environment out. The async client
(``AsyncTwilioHttpClient``) opens an aiohttp session, so it is built inside the running loop
and closed there.

Callbacks are received by a small Starlette app served by uvicorn in a thread, which records
each request so the tests can check order and ``X-Twilio-Signature``.
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.rest.api.v2010.account.call import CallInstance
from twilio.rest.api.v2010.account.message import MessageInstance

from worker.sandbox.smtp_sink import SmtpSink
from worker.sandbox.twilio import TwilioSandbox, count_max_in_window, sms_segments

FROM = "+15005550006"
TO = "+15551230001"
GATHER_TWIML = '<Response><Gather numDigits="1" action="{action}"><Say>Press 1</Say></Gather></Response>'
REPLY_TWIML = "<Response><Say>Thank you.</Say><Hangup/></Response>"


def vendor_basic_auth(test: Any) -> Any:
    """twilio 9.13's AsyncTwilioHttpClient passes ``auth=aiohttp.BasicAuth(...)``, both deprecated
    since aiohttp 3.14; the warnings come from the vendor's code and would fail every async test."""
    test = pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning")(test)
    return pytest.mark.filterwarnings("ignore:The 'auth' parameter is deprecated:DeprecationWarning")(test)


# --- a callback receiver --------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """One request the receiver got."""

    path: str
    method: str
    params: dict[str, str]
    signature: str


class Receiver:
    """herald's side of the webhooks, reduced to recording what arrives."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self._cond = threading.Condition()
        self.status_code = 200
        app = Starlette(
            routes=[
                Route("/status", self._record, methods=["POST", "GET"]),
                Route("/voice-status", self._record, methods=["POST", "GET"]),
                Route("/gather", self._gather, methods=["POST", "GET"]),
                Route("/voice", self._voice, methods=["POST"]),
            ]
        )
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_config=None, access_log=False, ws="none", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self) -> Receiver:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "receiver did not start"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)

    async def _add(self, request: Request) -> Hit:
        body = (await request.body()).decode()
        params = dict(parse_qsl(body or request.url.query, keep_blank_values=True))
        hit = Hit(request.url.path, request.method, params, request.headers.get("x-twilio-signature", ""))
        with self._cond:
            self.hits.append(hit)
            self._cond.notify_all()
        return hit

    async def _record(self, request: Request) -> Response:
        await self._add(request)
        return Response(status_code=self.status_code)

    async def _gather(self, request: Request) -> Response:
        await self._add(request)
        return Response(REPLY_TWIML, media_type="text/xml")

    async def _voice(self, request: Request) -> Response:
        await self._add(request)
        return Response(GATHER_TWIML.format(action="/gather"), media_type="text/xml")

    def wait(self, n: int, timeout: float = 10.0) -> list[Hit]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.hits) >= n, timeout), self.hits
            return list(self.hits)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A running webhook receiver."""
    rec = Receiver().start()
    yield rec
    rec.stop()


@pytest.fixture
def sandbox() -> Iterator[TwilioSandbox]:
    """A running sandbox with fast callbacks."""
    with TwilioSandbox(callback_delay_s=0.01) as sb:
        yield sb


def sync_client(sandbox: TwilioSandbox, auth_token: str | None = None) -> Client:
    client = Client(sandbox.account_sid, auth_token or sandbox.auth_token, environment={})
    client.api.base_url = sandbox.url
    return client


def assert_signed(sandbox: TwilioSandbox, receiver: Receiver, hit: Hit) -> None:
    validator = RequestValidator(sandbox.auth_token)
    assert validator.validate(receiver.url + hit.path, hit.params, hit.signature)
    assert not validator.validate(receiver.url + hit.path, {**hit.params, "To": "+15550000000"}, hit.signature)


# --- messages ---------------------------------------------------------------------------


def test_sync_create_returns_a_message_instance(sandbox: TwilioSandbox) -> None:
    message = sync_client(sandbox).messages.create(to=TO, from_=FROM, body="Your code is 1234")

    assert isinstance(message, MessageInstance)
    assert message.sid is not None and message.sid.startswith("SM") and len(message.sid) == 34
    assert (message.status, message.to, message.from_, message.body) == ("queued", TO, FROM, "Your code is 1234")
    assert message.account_sid == sandbox.account_sid
    assert message.api_version == "2010-04-01" and message.direction == "outbound-api"
    assert message.date_created is not None and message.num_segments == "1"
    assert message.price is None and message.error_code is None
    assert [m.sid for m in sandbox.messages] == [message.sid]


@vendor_basic_auth
def test_async_create_and_fetch(sandbox: TwilioSandbox) -> None:
    async def scenario() -> tuple[Any, Any]:
        http = AsyncTwilioHttpClient()
        try:
            client = Client(sandbox.account_sid, sandbox.auth_token, http_client=http, environment={})
            client.api.base_url = sandbox.url
            created = await client.messages.create_async(to=TO, from_=FROM, body="async hello")
            assert sandbox.wait_for(lambda sb: sb.messages[0].status == "delivered")
            fetched = await client.messages(created.sid).fetch_async()
            return created, fetched
        finally:
            await http.close()

    created, fetched = asyncio.run(scenario())
    assert isinstance(created, MessageInstance) and created.status == "queued"
    assert fetched.sid == created.sid and fetched.status == "delivered" and fetched.date_sent is not None


def test_messaging_service_is_accepted_then_assigned_a_sender(sandbox: TwilioSandbox, receiver: Receiver) -> None:
    service = "MG" + "1" * 32
    message = sync_client(sandbox).messages.create(
        to=TO, messaging_service_sid=service, body="hi", status_callback=receiver.url + "/status"
    )

    assert (message.status, message.from_, message.messaging_service_sid) == ("accepted", None, service)
    hits = receiver.wait(3)
    assert all(hit.params["MessagingServiceSid"] == service and hit.params["From"] for hit in hits)


def test_message_callbacks_arrive_in_order_and_signed(sandbox: TwilioSandbox, receiver: Receiver) -> None:
    callback = receiver.url + "/status"
    message = sync_client(sandbox).messages.create(to=TO, from_=FROM, body="hi", status_callback=callback)

    hits = receiver.wait(3)
    assert [hit.params["MessageStatus"] for hit in hits] == ["queued", "sent", "delivered"]
    for hit in hits:
        assert hit.params["MessageSid"] == hit.params["SmsSid"] == message.sid
        assert hit.params["SmsStatus"] == hit.params["MessageStatus"]
        assert (hit.params["AccountSid"], hit.params["From"], hit.params["To"]) == (sandbox.account_sid, FROM, TO)
        assert hit.params["ApiVersion"] == "2010-04-01" and "ErrorCode" not in hit.params
        assert_signed(sandbox, receiver, hit)
    assert sandbox.wait_for_callbacks(3)
    assert all(cb.ok and cb.status_code == 200 and cb.url == callback for cb in sandbox.callbacks)


@pytest.mark.parametrize(
    ("fault", "statuses", "code"),
    [
        ("undelivered_numbers", ["queued", "sent", "undelivered"], 30003),
        ("failed_numbers", ["queued", "failed"], 30008),
    ],
)
def test_numbers_that_fail_after_acceptance(
    sandbox: TwilioSandbox, receiver: Receiver, fault: str, statuses: list[str], code: int
) -> None:
    sandbox.set_faults(**{fault: {TO: code}})
    message = sync_client(sandbox).messages.create(
        to=TO, from_=FROM, body="hi", status_callback=receiver.url + "/status"
    )

    hits = receiver.wait(len(statuses))
    assert [hit.params["MessageStatus"] for hit in hits] == statuses
    assert hits[-1].params["ErrorCode"] == str(code)
    assert "ErrorCode" not in hits[0].params
    stored = sandbox.message(message.sid)
    assert stored is not None and (stored.status, stored.error_code) == (statuses[-1], code)


def test_failed_callback_is_recorded_and_retried(sandbox: TwilioSandbox, receiver: Receiver) -> None:
    receiver.status_code = 503
    sync_client(sandbox).messages.create(to=TO, from_=FROM, body="hi", status_callback=receiver.url + "/status")

    assert sandbox.wait_for_callbacks(3, timeout=10)
    first = sandbox.callbacks[0]
    assert (first.ok, first.status_code, first.attempts, first.error) == (False, 503, 3, "HTTP 503")
    assert [c.params["MessageStatus"] for c in sandbox.callbacks] == ["queued", "sent", "delivered"]


# --- errors ------------------------------------------------------------------------------


@vendor_basic_auth
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_wrong_auth_token_is_401_code_20003(sandbox: TwilioSandbox, mode: str) -> None:
    if mode == "sync":
        with pytest.raises(TwilioRestException) as caught:
            sync_client(sandbox, auth_token="wrong").messages.create(to=TO, from_=FROM, body="x")
    else:

        async def scenario() -> None:
            http = AsyncTwilioHttpClient()
            try:
                client = Client(sandbox.account_sid, "wrong", http_client=http, environment={})
                client.api.base_url = sandbox.url
                await client.messages.create_async(to=TO, from_=FROM, body="x")
            finally:
                await http.close()

        with pytest.raises(TwilioRestException) as caught:
            asyncio.run(scenario())
    assert (caught.value.status, caught.value.code) == (401, 20003)
    assert sandbox.messages == [] and sandbox.requests[0].status_code == 401


def test_missing_credentials_get_twilios_body(sandbox: TwilioSandbox) -> None:
    response = httpx.post(f"{sandbox.url}/2010-04-01/Accounts/{sandbox.account_sid}/Messages.json", data={"To": TO})

    assert response.status_code == 401
    assert response.json() == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (21610, "Attempt to send to unsubscribed recipient"),
        (21614, "'To' number is not a valid mobile number"),
        (21408, "Permission to send an SMS has not been enabled for the region"),
    ],
)
def test_fail_numbers_are_refused_with_their_code(sandbox: TwilioSandbox, code: int, message: str) -> None:
    sandbox.set_faults(fail_numbers={TO: code})

    with pytest.raises(TwilioRestException) as caught:
        sync_client(sandbox).messages.create(to=TO, from_=FROM, body="x")

    assert (caught.value.status, caught.value.code) == (400, code)
    assert message in caught.value.msg
    assert sandbox.messages == []
    # other numbers still go through
    assert sync_client(sandbox).messages.create(to="+15551230009", from_=FROM, body="x").status == "queued"


@pytest.mark.parametrize(("fault", "status", "code"), [("rate_429", 429, 20429), ("rate_500", 500, 20500)])
def test_rate_faults(sandbox: TwilioSandbox, fault: str, status: int, code: int) -> None:
    sandbox.set_faults(**{fault: 1.0})

    with pytest.raises(TwilioRestException) as caught:
        sync_client(sandbox).messages.create(to=TO, from_=FROM, body="x")

    assert (caught.value.status, caught.value.code) == (status, code)
    assert [(r.status_code, r.error_code) for r in sandbox.requests] == [(status, code)]


@vendor_basic_auth
def test_rate_429_async(sandbox: TwilioSandbox) -> None:
    sandbox.set_faults(rate_429=1.0)

    async def scenario() -> None:
        http = AsyncTwilioHttpClient()
        try:
            client = Client(sandbox.account_sid, sandbox.auth_token, http_client=http, environment={})
            client.api.base_url = sandbox.url
            await client.calls.create_async(to=TO, from_=FROM, twiml="<Response/>")
        finally:
            await http.close()

    with pytest.raises(TwilioRestException) as caught:
        asyncio.run(scenario())
    assert (caught.value.status, caught.value.code) == (429, 20429)


def test_fault_draws_are_reproducible_with_a_seed() -> None:
    def draw(seed: int) -> list[int]:
        with TwilioSandbox(faults={"rate_429": 0.3, "rate_500": 0.2}, seed=seed) as sb:
            client = sync_client(sb)
            for _ in range(20):
                with contextlib.suppress(TwilioRestException):
                    client.messages.create(to=TO, from_=FROM, body="x")
            return [r.status_code for r in sb.requests]

    first = draw(7)
    assert first == draw(7)
    assert {201, 429, 500} <= set(first)


def test_unreadable_answers_alternate_and_the_messages_still_go_out(sandbox: TwilioSandbox, receiver: Receiver) -> None:
    sandbox.set_faults(rate_unreadable=1.0)
    client = sync_client(sandbox)
    raw = [
        httpx.post(
            f"{sandbox.url}/2010-04-01/Accounts/{sandbox.account_sid}/Messages.json",
            data={"To": TO, "From": FROM, "Body": "hi", "StatusCallback": receiver.url + "/status"},
            auth=(sandbox.account_sid, sandbox.auth_token),
        )
        for _ in range(2)
    ]
    with pytest.raises(ValueError):  # the client cannot parse the HTML page
        client.messages.create(to=TO, from_=FROM, body="hi", status_callback=receiver.url + "/status")
    empty = client.calls.create(to=TO, from_=FROM, twiml="<Response/>")

    assert [(r.status_code, r.text) for r in raw] == [(200, "<html>ok</html>"), (201, "{}")]
    assert empty.sid is None  # what a client makes of ``{}``
    assert len(sandbox.messages) == 3 and len(sandbox.calls) == 1
    assert [(r.status_code, r.error_code, r.unreadable) for r in sandbox.requests] == [
        (200, None, True),
        (201, None, True),
        (200, None, True),
        (201, None, True),
    ]
    hits = receiver.wait(9)  # every accepted message still gets its callbacks
    assert sorted(hit.params["MessageStatus"] for hit in hits).count("delivered") == 3
    assert sandbox.max_in_window(60.0, accepted_only=True) == 4


@pytest.mark.parametrize(("mode", "status", "body"), [("not-json", 200, "<html>ok</html>"), ("empty-json", 201, "{}")])
def test_unreadable_answers_of_one_kind(sandbox: TwilioSandbox, mode: str, status: int, body: str) -> None:
    sandbox.set_faults(rate_unreadable=1.0, unreadable_body=mode)
    url = f"{sandbox.url}/2010-04-01/Accounts/{sandbox.account_sid}/Messages.json"
    auth = (sandbox.account_sid, sandbox.auth_token)

    answers = [httpx.post(url, data={"To": TO, "From": FROM, "Body": "x"}, auth=auth) for _ in range(3)]

    assert {(a.status_code, a.text) for a in answers} == {(status, body)}
    assert len(sandbox.messages) == 3


def test_unreadable_share_comes_from_the_same_seeded_draws() -> None:
    def draw(seed: int) -> list[tuple[int, bool]]:
        with TwilioSandbox(faults={"rate_429": 0.3, "rate_unreadable": 0.3}, seed=seed) as sb:
            client = sync_client(sb)
            for _ in range(30):
                with contextlib.suppress(TwilioRestException, ValueError):
                    client.messages.create(to=TO, from_=FROM, body="x")
            return [(r.status_code, r.unreadable) for r in sb.requests]

    first = draw(11)
    assert first == draw(11)
    assert {(429, False), (201, False), (200, True), (201, True)} <= set(first)
    with pytest.raises(ValueError, match="must not exceed 1"):
        TwilioSandbox(faults={"rate_500": 0.5, "rate_unreadable": 0.6})
    with pytest.raises(ValueError, match="unreadable_body"):
        TwilioSandbox(faults={"unreadable_body": "xml"})


@pytest.mark.parametrize(
    ("resource", "data", "code"),
    [
        ("Messages", {"From": FROM, "Body": "x"}, 21604),
        ("Messages", {"To": "5551230001", "From": FROM, "Body": "x"}, 21211),
        ("Messages", {"To": TO, "Body": "x"}, 21603),
        ("Messages", {"To": TO, "From": FROM}, 21602),
        ("Messages", {"To": TO, "From": FROM, "Body": "x" * 1601}, 21617),
        ("Messages", {"To": TO, "From": FROM, "Body": "x", "StatusCallback": "not a url"}, 21609),
        ("Calls", {"From": FROM, "Twiml": "<Response/>"}, 21201),
        ("Calls", {"To": "+0123", "From": FROM, "Twiml": "<Response/>"}, 21211),
        ("Calls", {"To": TO, "Twiml": "<Response/>"}, 21213),
        ("Calls", {"To": TO, "From": FROM}, 21205),
        ("Calls", {"To": TO, "From": FROM, "Url": "/relative"}, 21205),
    ],
)
def test_validation_like_twilio(sandbox: TwilioSandbox, resource: str, data: dict[str, str], code: int) -> None:
    response = httpx.post(
        f"{sandbox.url}/2010-04-01/Accounts/{sandbox.account_sid}/{resource}.json",
        data=data,
        auth=(sandbox.account_sid, sandbox.auth_token),
    )

    assert response.status_code == 400
    body = response.json()
    assert (body["code"], body["status"], body["more_info"]) == (
        code,
        400,
        f"https://www.twilio.com/docs/errors/{code}",
    )
    assert body["message"]


def test_unknown_resource_and_other_account_are_404(sandbox: TwilioSandbox) -> None:
    auth = (sandbox.account_sid, sandbox.auth_token)
    missing = httpx.get(
        f"{sandbox.url}/2010-04-01/Accounts/{sandbox.account_sid}/Messages/SM{'0' * 32}.json", auth=auth
    )
    other = httpx.post(f"{sandbox.url}/2010-04-01/Accounts/AC{'9' * 32}/Messages.json", auth=auth, data={})

    assert (missing.status_code, missing.json()["code"]) == (404, 20404)
    assert (other.status_code, other.json()["code"]) == (404, 20404)


# --- calls -------------------------------------------------------------------------------


def test_answered_call_gathers_digit_1_before_completed(sandbox: TwilioSandbox, receiver: Receiver) -> None:
    twiml = GATHER_TWIML.format(action=receiver.url + "/gather")
    call = sync_client(sandbox).calls.create(
        to=TO, from_=FROM, twiml=twiml, status_callback=receiver.url + "/voice-status"
    )

    assert isinstance(call, CallInstance)
    assert call.sid is not None and call.sid.startswith("CA") and len(call.sid) == 34
    # twilio 9.13 stores a call's "from" as ``_from`` (messages use ``from_``)
    assert (call.status, call.to, call._from, call.direction) == ("queued", TO, FROM, "outbound-api")
    hits = receiver.wait(5)
    steps = [hit.params["CallStatus"] if hit.path == "/voice-status" else "gather" for hit in hits]
    assert steps == ["initiated", "ringing", "in-progress", "gather", "completed"]
    gather = hits[3]
    assert (gather.path, gather.params["Digits"], gather.params["CallSid"]) == ("/gather", "1", call.sid)
    completed = hits[4].params
    assert (completed["CallSid"], completed["AccountSid"], completed["From"], completed["To"]) == (
        call.sid,
        sandbox.account_sid,
        FROM,
        TO,
    )
    assert completed["Direction"] == "outbound-api" and int(completed["CallDuration"]) >= 1
    for hit in hits:
        assert_signed(sandbox, receiver, hit)
    assert sandbox.wait_for(lambda sb: sb.calls[0].status == "completed")
    stored = sandbox.calls[0]
    assert (stored.digits_sent, stored.gather_reply) == ("1", REPLY_TWIML)
    assert sync_client(sandbox).calls(call.sid).fetch().status == "completed"


@pytest.mark.parametrize(
    ("behaviour", "statuses", "digits"),
    [
        ("no-answer", ["initiated", "ringing", "no-answer"], None),
        ("busy", ["initiated", "busy"], None),
        ("failed", ["initiated", "failed"], None),
        ("no-input", ["initiated", "ringing", "in-progress", "completed"], None),
        ("press:2", ["initiated", "ringing", "in-progress", "gather", "completed"], "2"),
    ],
)
def test_call_behaviours(
    sandbox: TwilioSandbox, receiver: Receiver, behaviour: str, statuses: list[str], digits: str | None
) -> None:
    sandbox.set_faults(call_behaviour={TO: behaviour})
    twiml = GATHER_TWIML.format(action=receiver.url + "/gather")
    sync_client(sandbox).calls.create(to=TO, from_=FROM, twiml=twiml, status_callback=receiver.url + "/voice-status")

    hits = receiver.wait(len(statuses))
    assert sandbox.wait_for(lambda sb: sb.calls[0].status == statuses[-1])
    time.sleep(0.1)  # nothing more may arrive
    assert [hit.params["CallStatus"] if hit.path == "/voice-status" else "gather" for hit in receiver.hits] == statuses
    if digits is not None:
        assert hits[3].params["Digits"] == digits
    assert sandbox.calls[0].digits_sent == digits
    assert hits[-1].params["CallDuration"].isdigit()


def test_status_callback_event_limits_progress_callbacks(sandbox: TwilioSandbox, receiver: Receiver) -> None:
    sync_client(sandbox).calls.create(
        to=TO,
        from_=FROM,
        twiml="<Response><Say>hi</Say></Response>",
        status_callback=receiver.url + "/voice-status",
        status_callback_event=["answered"],
    )

    assert sandbox.wait_for(lambda sb: sb.calls[0].status == "completed")
    assert sandbox.wait_for_callbacks(2)
    assert [hit.params["CallStatus"] for hit in receiver.hits] == ["in-progress", "completed"]


def test_call_with_url_fetches_twiml_then_gathers(sandbox: TwilioSandbox, receiver: Receiver) -> None:
    sync_client(sandbox).calls.create(
        to=TO, from_=FROM, url=receiver.url + "/voice", status_callback=receiver.url + "/voice-status"
    )

    hits = receiver.wait(6)
    assert [hit.path for hit in hits][2:5] == ["/voice-status", "/voice", "/gather"]
    assert hits[4].params["Digits"] == "1"  # the relative action resolved against the TwiML's URL
    for hit in hits:
        assert_signed(sandbox, receiver, hit)


# --- rate accounting ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("times", "window", "expected"),
    [
        ([], 1.0, 0),
        ([5.0], 1.0, 1),
        ([0.0, 0.5, 0.99, 1.0, 1.5, 3.0], 1.0, 3),
        ([0.0, 0.1, 0.2, 0.3], 0.25, 3),
        ([3.0, 0.0, 2.9, 2.95], 1.0, 3),
        ([0.0, 1.0, 2.0], 1.0, 1),
    ],
)
def test_count_max_in_window(times: list[float], window: float, expected: int) -> None:
    assert count_max_in_window(times, window) == expected


def test_max_in_window_counts_create_requests(sandbox: TwilioSandbox) -> None:
    client = sync_client(sandbox)
    for _ in range(5):
        client.messages.create(to=TO, from_=FROM, body="x")
    client.calls.create(to=TO, from_=FROM, twiml="<Response/>")
    time.sleep(1.1)
    sandbox.set_faults(rate_429=1.0)
    for _ in range(3):
        with pytest.raises(TwilioRestException):
            client.messages.create(to=TO, from_=FROM, body="x")

    assert sandbox.max_in_window(1.0) == 6
    assert sandbox.max_in_window(1.0, endpoint="messages") == 5
    assert sandbox.max_in_window(1.0, endpoint="calls") == 1
    assert sandbox.max_in_window(60.0) == 9
    assert sandbox.max_in_window(60.0, accepted_only=True) == 6


# --- control endpoints --------------------------------------------------------------------


def test_faults_endpoint_sets_reads_and_resets(sandbox: TwilioSandbox) -> None:
    faults = {"rate_429": 0.25, "fail_numbers": {TO: 21610}, "call_behaviour": {TO: "busy"}, "seed": 3}
    posted = httpx.post(f"{sandbox.url}/_sandbox/faults", json=faults)

    assert posted.status_code == 200
    current = httpx.get(f"{sandbox.url}/_sandbox/faults").json()
    assert current["rate_429"] == 0.25 and current["fail_numbers"] == {TO: 21610} and current["seed"] == 3
    assert current["call_behaviour"] == {TO: "busy"} and current["rate_500"] == 0.0
    assert sandbox.faults.fail_numbers == {TO: 21610}

    bad = httpx.post(f"{sandbox.url}/_sandbox/faults", json={"rate_429": 2})
    unknown = httpx.post(f"{sandbox.url}/_sandbox/faults", json={"rate_418": 0.5})
    behaviour = httpx.post(f"{sandbox.url}/_sandbox/faults", json={"call_behaviour": {TO: "hang-up"}})
    assert (bad.status_code, unknown.status_code, behaviour.status_code) == (400, 400, 400)
    assert sandbox.faults.rate_429 == 0.25

    sandbox.set_faults(rate_429=0.0, fail_numbers={})
    sync_client(sandbox).messages.create(to=TO, from_=FROM, body="x")
    assert httpx.post(f"{sandbox.url}/_sandbox/reset").status_code == 200
    assert sandbox.messages == [] and sandbox.requests == []
    assert httpx.get(f"{sandbox.url}/_sandbox/faults").json()["call_behaviour"] == {}


def test_segments_estimate() -> None:
    assert [sms_segments("a" * 160), sms_segments("a" * 161), sms_segments("é" * 160)] == [1, 2, 1]
    assert [sms_segments("中" * 70), sms_segments("中" * 71), sms_segments("{" * 81)] == [1, 2, 2]


# --- the web page ------------------------------------------------------------------------


def test_page_lists_emails_sms_and_calls_escaped(smtp_sink: SmtpSink, receiver: Receiver) -> None:
    with TwilioSandbox(smtp_sink=smtp_sink, callback_delay_s=0.01) as sandbox:
        client = sync_client(sandbox)
        client.messages.create(to=TO, from_=FROM, body="<script>alert(1)</script> & more")
        client.calls.create(to="+15551230002", from_=FROM, twiml=GATHER_TWIML.format(action=receiver.url + "/gather"))
        email = EmailMessage()
        email["From"] = "herald@example.com"
        email["To"] = "alice@example.com"
        email["Subject"] = "Security notice <b>"
        email.set_content("hello")
        with smtplib.SMTP(smtp_sink.host, smtp_sink.port) as smtp:
            smtp.send_message(email)
        assert smtp_sink.wait_for(1)
        assert sandbox.wait_for(lambda sb: sb.calls[0].status == "completed" and sb.messages[0].status == "delivered")

        page = httpx.get(sandbox.url + "/")
        emails = httpx.get(sandbox.url + "/api/emails").json()
        messages = httpx.get(sandbox.url + "/api/messages").json()
        calls = httpx.get(sandbox.url + "/api/calls").json()

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<meta http-equiv="refresh" content="5">' in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in html and "<script>" not in html
    assert "Security notice &lt;b&gt;" in html and "alice@example.com" in html
    assert TO in html and "+15551230002" in html and "pressed 1" in html
    assert "delivered" in html and "completed" in html
    assert html.index("Security notice") < html.index("pressed 1") < html.index("alert(1)")  # newest first
    assert emails[0]["subject"] == "Security notice <b>" and emails[0]["rcpt_tos"] == ["alice@example.com"]
    assert messages[0]["body"].startswith("<script>") and messages[0]["from"] == FROM
    assert calls[0]["digits_sent"] == "1" and calls[0]["status"] == "completed"
