"""A local Twilio-compatible HTTP sandbox: the Messages and Calls resources, status callbacks
and a Mailpit-like web page, for development, tests and the demo.

Twilio's cloud cannot be reached from here, so herald talks to this server with the real
``twilio`` client over real HTTP. The client is redirected by its API domain's base URL,
which ``twilio.base.domain.Domain.absolute_url`` reads on every request (twilio 9.x)::

    client = twilio.rest.Client(sandbox.account_sid, sandbox.auth_token, environment={})
    client.api.base_url = sandbox.url        # "http://127.0.0.1:PORT"
    client.messages.create(to=..., from_=..., body=..., status_callback=...)

Leave ``edge``/``region`` (and ``TWILIO_EDGE``/``TWILIO_REGION``) unset: the client would
rewrite the host name of every URL. The async client works the same way
(``Client(..., http_client=AsyncTwilioHttpClient())``, built inside a running loop).

What Twilio does, the sandbox does:

* ``POST /2010-04-01/Accounts/{sid}/Messages.json`` and ``Calls.json``, form-encoded, HTTP
  Basic auth with the account SID and auth token; 201 with Twilio's JSON resource.
* ``GET .../Messages/{sid}.json`` and ``Calls/{sid}.json``: the current state.
* Status callbacks to ``StatusCallback``, form-encoded and signed with ``X-Twilio-Signature``
  (``RequestValidator(auth_token).compute_signature(url, params)``), one resource's callbacks
  strictly in order. Messages: queued → sent → delivered (or undelivered/failed with
  ``ErrorCode``). Calls: initiated → ringing → in-progress → completed (or busy, no-answer,
  failed); an answered call's ``<Gather>`` (inline ``Twiml``, or the TwiML fetched from ``Url``)
  gets the simulated keypress POSTed to its ``action`` before the final callback.

Errors answered, with Twilio's JSON body ``{code, message, more_info, status}``:

======  ======  ================================================================
status  code    when
======  ======  ================================================================
401     20003   missing or wrong Basic credentials
404     20404   unknown resource, or an account SID other than the sandbox's
429     20429   ``rate_429`` fault
500     20500   ``rate_500`` fault
200     none    ``rate_unreadable`` fault: ``<html>ok</html>`` (text/html), the create accepted
201     none    ``rate_unreadable`` fault: ``{}``, the create accepted
400     21604   message without ``To``
400     21201   call without ``To``
400     21211   ``To`` not E.164
400     21603   message without ``From`` and ``MessagingServiceSid``
400     21213   call without ``From``
400     21602   message without ``Body`` (nor ``MediaUrl``/``ContentSid``)
400     21617   message body over 1,600 characters
400     21609   message ``StatusCallback`` not an absolute http(s) URL
400     21205   call without ``Url``/``Twiml``/``ApplicationSid`` ("Url parameter is
                required"), or a ``Url`` that is not an absolute http(s) URL
400     any     ``fail_numbers`` fault (e.g. 21610, 21614, 21408, 21215)
======  ======  ================================================================

Faults (constructor ``faults=``, :meth:`TwilioSandbox.set_faults`, ``POST /_sandbox/faults``):
``rate_429``, ``rate_500`` (shares of create requests, drawn from a seeded ``random.Random``),
``rate_unreadable`` (a share of create requests, from the same draws, that are accepted and
processed as usual, callbacks and all, but answered with a body the client cannot read:
``unreadable_body`` = ``alternate`` (the default: ``<html>ok</html>`` with 200, then ``{}``
with 201, and so on), ``not-json`` or ``empty-json``),
``latency_s``, ``fail_numbers`` (create refused with that code), ``undelivered_numbers``
(accepted, then ``undelivered`` with that code), ``failed_numbers`` (accepted, then
``failed`` with that code), ``silent_numbers`` (accepted and ``sent``, then no final status
ever), ``call_behaviour`` (``answer`` = press 1, ``press:D``,
``no-input``, ``no-answer``, ``busy``, ``failed``).

Where the sandbox knowingly differs from Twilio: without ``StatusCallbackEvent`` a call's
callback receives every progress event (Twilio sends only the final one), so a developer
sees the whole call; failed callbacks are retried (on transport errors and 5xx/429) a
couple of times; ``Url`` fetches and ``<Gather>`` actions are recorded with the status
callbacks (``kind`` tells them apart).

The web page (``GET /``) shows full numbers and addresses (a local tool); log lines mask them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
import math
import random
import re
import signal
import socket
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from email.utils import format_datetime
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
import jinja2
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from worker.core.redact import mask_email, mask_phone
from worker.sandbox.smtp_sink import ReceivedMessage, SmtpSink

#: How many callbacks the sandbox has in flight at once.
CALLBACK_CONCURRENCY = 16
log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_AUTH_TOKEN = "sandbox-auth-token"
#: The sender the sandbox "assigns" to a message sent with only a MessagingServiceSid.
SERVICE_SENDER = "+15005550006"

Endpoint = Literal["messages", "calls"]
CallbackKind = Literal["message-status", "call-status", "voice-url", "gather"]

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_BEHAVIOUR = re.compile(r"^(answer|no-answer|busy|failed|no-input|press:[0-9*#]+)$")
_CALL_EVENTS = {"initiated": "initiated", "ringing": "ringing", "answered": "in-progress", "completed": "completed"}
_TERMINAL_SIP = {"busy": 486, "no-answer": 487, "failed": 404}
_MAX_BODY = 1600
_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXT = set("^{}\\[~]|€\f")

#: Twilio's messages for the codes the sandbox answers; ``{to}`` and ``{path}`` are filled in.
ERROR_MESSAGES: dict[int, str] = {
    20003: "Authenticate",
    20404: "The requested resource {path} was not found",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    21201: "No 'To' number is specified",
    21205: "Url parameter is required. For more information, see http://www.twilio.com/docs/api/twiml",
    21211: "The 'To' number {to} is not a valid phone number.",
    21213: "No 'From' number is specified",
    21215: "Account not authorized to call {to}. Perhaps you need to enable some international permissions.",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the 'To' number: {to}.",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21608: "The number {to} is unverified. Trial accounts may only send messages to verified numbers.",
    21609: "Invalid 'StatusCallback'",
    21610: "Attempt to send to unsubscribed recipient",
    21612: "The 'To' phone number: {to}, is not currently reachable using the 'From' phone number via SMS.",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
}
#: Messages stored on a resource that failed after it was accepted.
DELIVERY_ERRORS: dict[int, str] = {
    30003: "Unreachable destination handset",
    30004: "Message blocked",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
}


def error_body(code: int, status: int, *, to: str = "", path: str = "") -> dict[str, Any]:
    """Twilio's JSON error body for ``code``, the shape twilio-python turns into TwilioRestException."""
    template = ERROR_MESSAGES.get(code, f"Sandbox-injected error {code}")
    return {
        "code": code,
        "message": template.replace("{to}", to).replace("{path}", path),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def count_max_in_window(timestamps: Iterable[float], window_s: float) -> int:
    """The most timestamps that fit in any half-open interval ``[t, t + window_s)``."""
    times = sorted(timestamps)
    best = start = 0
    for end, moment in enumerate(times):
        while times[start] <= moment - window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def sms_segments(body: str) -> int:
    """How many SMS segments Twilio would bill for ``body`` (GSM-7 or UCS-2, concatenated)."""
    if not body:
        return 1
    if all(ch in _GSM7 or ch in _GSM7_EXT for ch in body):
        units = sum(2 if ch in _GSM7_EXT else 1 for ch in body)
        single, multi = 160, 153
    else:
        units = sum(2 if ord(ch) > 0xFFFF else 1 for ch in body)
        single, multi = 70, 67
    return 1 if units <= single else math.ceil(units / multi)


# --- faults -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Faults:
    """What the sandbox does wrong on purpose; see the module docstring for each field."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_unreadable: float = 0.0
    unreadable_body: str = "alternate"
    latency_s: float = 0.0
    fail_numbers: Mapping[str, int] = field(default_factory=dict)
    undelivered_numbers: Mapping[str, int] = field(default_factory=dict)
    failed_numbers: Mapping[str, int] = field(default_factory=dict)
    silent_numbers: frozenset[str] = frozenset()
    call_behaviour: Mapping[str, str] = field(default_factory=dict)

    def updated(self, changes: Mapping[str, Any]) -> Faults:
        """A copy with ``changes`` (JSON-like) applied.

        Raises:
            ValueError: an unknown key or a value of the wrong type or range.
        """
        unknown = set(changes) - {f for f in self.__dataclass_fields__} - {"seed"}
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for key in ("rate_429", "rate_500", "rate_unreadable", "latency_s"):
            if key in changes:
                value = changes[key]
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ValueError(f"{key} must be a non-negative number")
                if key.startswith("rate_") and value > 1:
                    raise ValueError(f"{key} must be between 0 and 1")
                values[key] = float(value)
        for key in ("fail_numbers", "undelivered_numbers", "failed_numbers"):
            if key in changes:
                values[key] = _code_map(key, changes[key])
        if "unreadable_body" in changes:
            if changes["unreadable_body"] not in UNREADABLE_BODIES:
                raise ValueError(f"unreadable_body must be one of: {', '.join(UNREADABLE_BODIES)}")
            values["unreadable_body"] = changes["unreadable_body"]
        if "silent_numbers" in changes:
            silent = changes["silent_numbers"]
            if isinstance(silent, str) or not isinstance(silent, list | tuple | set | frozenset):
                raise ValueError("silent_numbers must be a list of numbers")
            values["silent_numbers"] = frozenset(str(number) for number in silent)
        if "call_behaviour" in changes:
            behaviours = changes["call_behaviour"]
            if not isinstance(behaviours, Mapping):
                raise ValueError("call_behaviour must map numbers to behaviours")
            for number, behaviour in behaviours.items():
                if not isinstance(behaviour, str) or not _BEHAVIOUR.match(behaviour):
                    raise ValueError(
                        f"call_behaviour for {mask_phone(str(number))}: expected answer, press:D, "
                        "no-input, no-answer, busy or failed"
                    )
            values["call_behaviour"] = {str(k): v for k, v in behaviours.items()}
        result = replace(self, **values)
        if result.rate_429 + result.rate_500 + result.rate_unreadable > 1:
            raise ValueError("rate_429 + rate_500 + rate_unreadable must not exceed 1")
        return result

    def to_dict(self) -> dict[str, Any]:
        """The faults as JSON-ready data (full numbers: this is the sandbox's own control API)."""
        return {
            "rate_429": self.rate_429,
            "rate_500": self.rate_500,
            "rate_unreadable": self.rate_unreadable,
            "unreadable_body": self.unreadable_body,
            "latency_s": self.latency_s,
            "fail_numbers": dict(self.fail_numbers),
            "undelivered_numbers": dict(self.undelivered_numbers),
            "failed_numbers": dict(self.failed_numbers),
            "silent_numbers": sorted(self.silent_numbers),
            "call_behaviour": dict(self.call_behaviour),
        }


#: How ``rate_unreadable`` answers: both kinds in turn, or always one of them.
UNREADABLE_BODIES = ("alternate", "not-json", "empty-json")


def _code_map(key: str, value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} must map numbers to Twilio error codes")
    result: dict[str, int] = {}
    for number, code in value.items():
        if isinstance(code, bool) or not isinstance(code, int) or code <= 0:
            raise ValueError(f"{key} for {mask_phone(str(number))}: the error code must be a positive integer")
        result[str(number)] = code
    return result


# --- what the sandbox records -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SentMessage:
    """One message resource the sandbox accepted, in its current state."""

    sid: str
    to: str
    from_: str | None
    body: str
    status_callback: str | None
    messaging_service_sid: str | None
    status: str
    num_segments: int
    created_at: float
    updated_at: float
    sent_at: float | None = None
    error_code: int | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class PlacedCall:
    """One call resource the sandbox accepted, in its current state."""

    sid: str
    to: str
    from_: str
    twiml: str | None
    url: str | None
    status_callback: str | None
    behaviour: str
    status: str
    created_at: float
    updated_at: float
    started_at: float | None = None
    ended_at: float | None = None
    duration: int | None = None
    gather_action: str | None = None
    digits_sent: str | None = None
    gather_reply: str | None = None


@dataclass(frozen=True, slots=True)
class Callback:
    """One request the sandbox made to the application (status callback, TwiML fetch, Gather action)."""

    kind: CallbackKind
    sid: str
    url: str
    method: str
    params: dict[str, str]
    signature: str
    status_code: int | None
    ok: bool
    attempts: int
    error: str | None
    reply: str
    at: float


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """One create request and how it was answered; ``at`` is ``time.monotonic()`` on arrival."""

    at: float
    endpoint: Endpoint
    status_code: int
    to: str | None
    error_code: int | None
    unreadable: bool = False  # accepted, but answered with a body the client cannot read


# --- the sandbox --------------------------------------------------------------------------


class TwilioSandbox:
    """A Twilio-compatible HTTP server on ``host``:``port`` run by uvicorn in a background thread.

    ``port=0`` picks a free port; ``port`` and ``url`` hold the real one once started. Every
    record and fault sits behind one lock, so tests read and change them from any thread.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        account_sid: str = DEFAULT_ACCOUNT_SID,
        auth_token: str = DEFAULT_AUTH_TOKEN,
        smtp_sink: SmtpSink | None = None,
        callback_delay_s: float = 0.05,
        callback_timeout_s: float = 5.0,
        callback_retries: int = 2,
        faults: Faults | Mapping[str, Any] | None = None,
        seed: int = 0,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.smtp_sink = smtp_sink
        self.callback_delay_s = callback_delay_s
        self.callback_timeout_s = callback_timeout_s
        self.callback_retries = callback_retries
        self._on_event = on_event
        self._validator = RequestValidator(auth_token)
        self._cond = threading.Condition()
        if isinstance(faults, Mapping) and isinstance(faults.get("seed"), int):
            seed = int(faults["seed"])
        self._seed = seed
        self._rng = random.Random(seed)
        self._faults = self._initial_faults(faults)
        self._messages: dict[str, SentMessage] = {}
        self._calls: dict[str, PlacedCall] = {}
        self._callbacks: list[Callback] = []
        self._requests: list[CreateRequest] = []
        self._unreadable_count = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._http: httpx.AsyncClient | None = None
        self._callback_gate = asyncio.Semaphore(CALLBACK_CONCURRENCY)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._templates = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
        self._page = self._templates.from_string(_PAGE)
        self.app = self._build_app()

    @staticmethod
    def _initial_faults(faults: Faults | Mapping[str, Any] | None) -> Faults:
        if isinstance(faults, Faults):
            return faults
        return Faults().updated({k: v for k, v in (faults or {}).items() if k != "seed"})

    # --- lifecycle ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The base URL to give the twilio client, e.g. ``http://127.0.0.1:8089``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> TwilioSandbox:
        """Bind, start serving in a thread and return once requests are answered.

        Raises:
            OSError: the address could not be bound.
            RuntimeError: the server did not come up within ``timeout``.
        """
        if self._thread is not None:
            return self
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="on",
            ws="none",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server = server
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"twilio-sandbox:{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError(f"the Twilio sandbox did not start on {self.url}")
            time.sleep(0.01)
        log.info("Twilio sandbox listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving; pending callbacks are cancelled. Records stay readable."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.should_exit = True
        if thread is not None:
            thread.join(timeout=10)

    def __enter__(self) -> TwilioSandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- what arrived -------------------------------------------------------------------
    @property
    def messages(self) -> list[SentMessage]:
        """Every accepted message, oldest first, in its current state."""
        with self._cond:
            return list(self._messages.values())

    @property
    def calls(self) -> list[PlacedCall]:
        """Every accepted call, oldest first, in its current state."""
        with self._cond:
            return list(self._calls.values())

    @property
    def callbacks(self) -> list[Callback]:
        """Every request made to the application, in the order they finished."""
        with self._cond:
            return list(self._callbacks)

    @property
    def requests(self) -> list[CreateRequest]:
        """Every create request (messages and calls), in arrival order of their answers."""
        with self._cond:
            return list(self._requests)

    def message(self, sid: str) -> SentMessage | None:
        """The message with ``sid``, if any."""
        with self._cond:
            return self._messages.get(sid)

    def call(self, sid: str) -> PlacedCall | None:
        """The call with ``sid``, if any."""
        with self._cond:
            return self._calls.get(sid)

    def max_in_window(
        self, window_s: float = 1.0, endpoint: Endpoint | None = None, accepted_only: bool = False
    ) -> int:
        """The most create requests that arrived within any ``window_s`` seconds (rate-limit checks)."""
        return count_max_in_window(
            (
                r.at
                for r in self.requests
                if (endpoint is None or r.endpoint == endpoint) and (not accepted_only or r.error_code is None)
            ),
            window_s,
        )

    def wait_for_callbacks(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` callbacks finished (delivered or given up); False on timeout."""
        return self.wait_for(lambda sandbox: len(sandbox.callbacks) >= n, timeout)

    def wait_for(self, predicate: Callable[[TwilioSandbox], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate(self)`` holds, re-checked on every change; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout=timeout)

    # --- faults -------------------------------------------------------------------------
    @property
    def faults(self) -> Faults:
        """The faults in force."""
        with self._cond:
            return self._faults

    def set_faults(self, **changes: Any) -> Faults:
        """Change some faults (the others stay); ``seed=`` re-seeds the random draws.

        Raises:
            ValueError: an unknown fault or a bad value; nothing is changed then.
        """
        seed = changes.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError("seed must be an integer")
        with self._cond:
            self._faults = self._faults.updated(changes)
            if "seed" in changes:
                self._seed = seed
                self._rng = random.Random(seed)
                self._unreadable_count = 0
            return self._faults

    def clear_faults(self) -> None:
        """Remove every fault and restart the random draws from the seed."""
        with self._cond:
            self._faults = Faults()
            self._rng = random.Random(self._seed)
            self._unreadable_count = 0

    def reset(self) -> None:
        """Forget every record, cancel pending callbacks and clear the faults (emails stay in the sink)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._cancel_tasks)
        with self._cond:
            self._messages.clear()
            self._calls.clear()
            self._callbacks.clear()
            self._requests.clear()
            self._cond.notify_all()
        self.clear_faults()

    # --- the ASGI app -------------------------------------------------------------------
    def _build_app(self) -> Starlette:
        base = f"/{API_VERSION}/Accounts/{{account_sid}}"
        routes = [
            Route(f"{base}/Messages.json", self._create_message, methods=["POST"]),
            Route(f"{base}/Calls.json", self._create_call, methods=["POST"]),
            Route(f"{base}/Messages/{{sid}}.json", self._fetch_message, methods=["GET"]),
            Route(f"{base}/Calls/{{sid}}.json", self._fetch_call, methods=["GET"]),
            Route("/_sandbox/faults", self._get_faults, methods=["GET"]),
            Route("/_sandbox/faults", self._post_faults, methods=["POST"]),
            Route("/_sandbox/reset", self._post_reset, methods=["POST"]),
            Route("/api/messages", self._api_messages, methods=["GET"]),
            Route("/api/calls", self._api_calls, methods=["GET"]),
            Route("/api/emails", self._api_emails, methods=["GET"]),
            Route("/api/callbacks", self._api_callbacks, methods=["GET"]),
            Route("/", self._index, methods=["GET"]),
        ]
        return Starlette(routes=routes, lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        # Like Twilio, call back at a bounded concurrency: a burst of thousands of callbacks
        # waits its turn here instead of timing out in the connection pool.
        self._callback_gate = asyncio.Semaphore(CALLBACK_CONCURRENCY)
        self._http = httpx.AsyncClient(
            timeout=self.callback_timeout_s,
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_connections=CALLBACK_CONCURRENCY, max_keepalive_connections=CALLBACK_CONCURRENCY),
        )
        try:
            yield
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._http.aclose()
            self._http = None
            self._loop = None

    def _cancel_tasks(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- Twilio REST API ----------------------------------------------------------------
    async def _create_message(self, request: Request) -> Response:
        return await self._create(request, "messages")

    async def _create_call(self, request: Request) -> Response:
        return await self._create(request, "calls")

    async def _create(self, request: Request, endpoint: Endpoint) -> Response:
        arrived = time.monotonic()
        faults = self.faults
        if faults.latency_s:
            await asyncio.sleep(faults.latency_s)
        try:
            params = _form(await request.body())
        except ClientDisconnect:  # the client went away (a killed worker): nothing was asked
            return Response(status_code=499)
        to = params.get("To")
        status, payload, unreadable = self._answer_create(request, endpoint, params, faults)
        garbled: Response | None = None
        with self._cond:
            if unreadable:
                garbled = self._unreadable_answer(faults.unreadable_body)
                status = garbled.status_code
            error_code = None if status in (200, 201) else int(payload["code"])
            self._requests.append(CreateRequest(arrived, endpoint, status, to, error_code, unreadable))
            self._cond.notify_all()
        if garbled is not None:
            log.info("twilio sandbox: %s to %s accepted, answered unreadably (%s)", endpoint, mask_phone(to), status)
            return garbled
        if status != 201:
            log.info("twilio sandbox: %s to %s refused %s/%s", endpoint, mask_phone(to), status, payload["code"])
            headers = {"WWW-Authenticate": 'Basic realm="Twilio API"'} if status == 401 else None
            return JSONResponse(payload, status_code=status, headers=headers)
        return JSONResponse(payload, status_code=201)

    def _unreadable_answer(self, mode: str) -> Response:
        """A 2xx the client cannot read: an HTML page with 200, or ``{}`` with 201 (call under the lock)."""
        if mode == "alternate":
            mode = "not-json" if self._unreadable_count % 2 == 0 else "empty-json"
            self._unreadable_count += 1
        if mode == "not-json":
            return HTMLResponse("<html>ok</html>", status_code=200)
        return Response("{}", status_code=201, media_type="application/json")

    def _answer_create(
        self, request: Request, endpoint: Endpoint, params: dict[str, str], faults: Faults
    ) -> tuple[int, dict[str, Any], bool]:
        """(status, JSON body, answered unreadably) for one create request."""
        refused = self._check_auth(request)
        if refused is not None:
            return (*refused, False)
        with self._cond:
            draw = self._rng.random()
        if draw < faults.rate_429:
            return 429, error_body(20429, 429), False
        if draw < faults.rate_429 + faults.rate_500:
            return 500, error_body(20500, 500), False
        unreadable = draw < faults.rate_429 + faults.rate_500 + faults.rate_unreadable
        invalid = _validate_message(params) if endpoint == "messages" else _validate_call(params)
        if invalid is not None:
            return (*invalid, False)
        to = params["To"]
        if to in faults.fail_numbers:
            return 400, error_body(faults.fail_numbers[to], 400, to=to), False
        if endpoint == "messages":
            return 201, self._accept_message(params, faults), unreadable
        return 201, self._accept_call(params, faults), unreadable

    def _check_auth(self, request: Request) -> tuple[int, dict[str, Any]] | None:
        user, password = _basic_credentials(request.headers.get("authorization", ""))
        good_user = hmac.compare_digest(user.encode(), self.account_sid.encode())
        good_password = hmac.compare_digest(password.encode(), self.auth_token.encode())
        if not (good_user and good_password):
            return 401, error_body(20003, 401)
        if request.path_params.get("account_sid") != self.account_sid:
            return 404, error_body(20404, 404, path=request.url.path)
        return None

    def _accept_message(self, params: dict[str, str], faults: Faults) -> dict[str, Any]:
        now = time.time()
        service = params.get("MessagingServiceSid") or None
        body = params.get("Body", "")
        message = SentMessage(
            sid="SM" + uuid.uuid4().hex,
            to=params["To"],
            from_=params.get("From") or None,
            body=body,
            status_callback=params.get("StatusCallback") or None,
            messaging_service_sid=service,
            status="accepted" if service and not params.get("From") else "queued",
            num_segments=sms_segments(body),
            created_at=now,
            updated_at=now,
        )
        with self._cond:
            self._messages[message.sid] = message
            self._cond.notify_all()
        self._event(f"SMS {message.sid} to {mask_phone(message.to)} accepted ({message.num_segments} segment(s))")
        plan: list[tuple[str, int | None]] = [("queued", None), ("sent", None), ("delivered", None)]
        if message.to in faults.failed_numbers:
            plan = [("queued", None), ("failed", faults.failed_numbers[message.to])]
        elif message.to in faults.undelivered_numbers:
            plan = [("queued", None), ("sent", None), ("undelivered", faults.undelivered_numbers[message.to])]
        elif message.to in faults.silent_numbers:
            plan = [("queued", None), ("sent", None)]  # the carrier never says how it ended
        self._spawn(self._message_lifecycle(message.sid, plan))
        return self._message_json(message)

    def _accept_call(self, params: dict[str, str], faults: Faults) -> dict[str, Any]:
        now = time.time()
        call = PlacedCall(
            sid="CA" + uuid.uuid4().hex,
            to=params["To"],
            from_=params["From"],
            twiml=params.get("Twiml") or None,
            url=params.get("Url") or None,
            status_callback=params.get("StatusCallback") or None,
            behaviour=faults.call_behaviour.get(params["To"], "answer"),
            status="queued",
            created_at=now,
            updated_at=now,
        )
        with self._cond:
            self._calls[call.sid] = call
            self._cond.notify_all()
        self._event(f"call {call.sid} to {mask_phone(call.to)} placed ({call.behaviour})")
        self._spawn(self._call_lifecycle(call.sid, _CallOptions.from_params(params)))
        return self._call_json(call)

    async def _fetch_message(self, request: Request) -> Response:
        return self._fetch(request, self.message(request.path_params["sid"]))

    async def _fetch_call(self, request: Request) -> Response:
        return self._fetch(request, self.call(request.path_params["sid"]))

    def _fetch(self, request: Request, resource: SentMessage | PlacedCall | None) -> Response:
        refused = self._check_auth(request)
        if refused is not None:
            return JSONResponse(refused[1], status_code=refused[0])
        if resource is None:
            return JSONResponse(error_body(20404, 404, path=request.url.path), status_code=404)
        if isinstance(resource, SentMessage):
            return JSONResponse(self._message_json(resource))
        return JSONResponse(self._call_json(resource))

    def _message_json(self, m: SentMessage) -> dict[str, Any]:
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{m.sid}.json"
        return {
            "sid": m.sid,
            "account_sid": self.account_sid,
            "to": m.to,
            "from": m.from_,
            "body": m.body,
            "status": m.status,
            "num_segments": "0" if m.status == "accepted" else str(m.num_segments),
            "num_media": "0",
            "direction": "outbound-api",
            "api_version": API_VERSION,
            "price": None,
            "price_unit": "USD",
            "error_code": m.error_code,
            "error_message": m.error_message,
            "messaging_service_sid": m.messaging_service_sid,
            "date_created": _rfc2822(m.created_at),
            "date_updated": _rfc2822(m.updated_at),
            "date_sent": _rfc2822(m.sent_at) if m.sent_at else None,
            "uri": uri,
            "subresource_uris": {
                "media": uri.replace(".json", "/Media.json"),
                "feedback": uri.replace(".json", "/Feedback.json"),
            },
        }

    def _call_json(self, c: PlacedCall) -> dict[str, Any]:
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{c.sid}.json"
        return {
            "sid": c.sid,
            "account_sid": self.account_sid,
            "to": c.to,
            "to_formatted": c.to,
            "from": c.from_,
            "from_formatted": c.from_,
            "status": c.status,
            "direction": "outbound-api",
            "api_version": API_VERSION,
            "parent_call_sid": None,
            "phone_number_sid": None,
            "answered_by": None,
            "forwarded_from": None,
            "caller_name": None,
            "group_sid": None,
            "trunk_sid": None,
            "stir_verstat": None,
            "queue_time": "0",
            "price": None,
            "price_unit": "USD",
            "duration": None if c.duration is None else str(c.duration),
            "start_time": _rfc2822(c.started_at) if c.started_at else None,
            "end_time": _rfc2822(c.ended_at) if c.ended_at else None,
            "date_created": _rfc2822(c.created_at),
            "date_updated": _rfc2822(c.updated_at),
            "uri": uri,
            "subresource_uris": {
                "notifications": uri.replace(".json", "/Notifications.json"),
                "recordings": uri.replace(".json", "/Recordings.json"),
                "events": uri.replace(".json", "/Events.json"),
            },
        }

    # --- asynchronous progress ----------------------------------------------------------
    async def _message_lifecycle(self, sid: str, plan: Sequence[tuple[str, int | None]]) -> None:
        for status, code in plan:
            await asyncio.sleep(self.callback_delay_s)
            message = self._advance_message(sid, status, code)
            if message is None:
                return
            if message.status_callback:
                params = {
                    "AccountSid": self.account_sid,
                    "ApiVersion": API_VERSION,
                    "MessageSid": message.sid,
                    "SmsSid": message.sid,
                    "MessageStatus": status,
                    "SmsStatus": status,
                    "From": message.from_ or "",
                    "To": message.to,
                }
                if message.messaging_service_sid:
                    params["MessagingServiceSid"] = message.messaging_service_sid
                if code is not None:
                    params["ErrorCode"] = str(code)
                await self._deliver("message-status", sid, message.status_callback, "POST", params)

    def _advance_message(self, sid: str, status: str, code: int | None) -> SentMessage | None:
        now = time.time()
        with self._cond:
            message = self._messages.get(sid)
            if message is None:
                return None
            changes: dict[str, Any] = {"status": status, "updated_at": now}
            if message.from_ is None:
                changes["from_"] = SERVICE_SENDER
            if status == "sent":
                changes["sent_at"] = now
            if code is not None:
                changes["error_code"] = code
                changes["error_message"] = DELIVERY_ERRORS.get(code, f"Sandbox-injected error {code}")
            message = self._messages[sid] = replace(message, **changes)
            self._cond.notify_all()
        if status in ("delivered", "undelivered", "failed"):
            self._event(f"SMS {sid} to {mask_phone(message.to)} {status}" + (f" ({code})" if code else ""))
        return message

    async def _call_lifecycle(self, sid: str, options: _CallOptions) -> None:
        call = self.call(sid)
        if call is None:
            return
        sequence = 0

        async def progress(status: str, **changes: Any) -> PlacedCall | None:
            nonlocal sequence
            await asyncio.sleep(self.callback_delay_s)
            current = self._update_call(sid, status=status if status != "initiated" else "queued", **changes)
            if current is None:
                return None
            terminal = status in ("completed", "busy", "no-answer", "failed")
            if current.status_callback and (terminal or options.wants(status)):
                params = self._call_params(current, status)
                params.update(
                    {"CallbackSource": "call-progress-events", "SequenceNumber": str(sequence), "Timestamp": _rfc2822()}
                )
                if terminal:
                    params["CallDuration"] = str(current.duration or 0)
                    if status in _TERMINAL_SIP:
                        params["SipResponseCode"] = str(_TERMINAL_SIP[status])
                sequence += 1
                await self._deliver("call-status", sid, current.status_callback, options.callback_method, params)
            if terminal:
                self._event(f"call {sid} to {mask_phone(current.to)} {status}")
            return current

        if await progress("initiated") is None:
            return
        if call.behaviour in ("busy", "failed"):
            await progress(call.behaviour, ended_at=time.time(), duration=0)
            return
        if await progress("ringing") is None:
            return
        if call.behaviour == "no-answer":
            await progress("no-answer", ended_at=time.time(), duration=0)
            return
        answered = await progress("in-progress", started_at=time.time())
        if answered is None:
            return
        await self._run_twiml(answered, options)
        started = answered.started_at or time.time()
        ended = time.time()
        await progress("completed", ended_at=ended, duration=max(1, math.ceil(ended - started)))

    async def _run_twiml(self, call: PlacedCall, options: _CallOptions) -> None:
        twiml, document_url = call.twiml, call.url
        if twiml is None and document_url is not None:
            fetched = await self._deliver(
                "voice-url", call.sid, document_url, options.url_method, self._call_params(call, "in-progress")
            )
            twiml = fetched.reply if fetched.ok else None
        gather = _find_gather(twiml)
        if gather is None:
            return
        digits: str | None = call.behaviour.partition(":")[2] if call.behaviour.startswith("press:") else "1"
        if call.behaviour == "no-input":
            digits = None
        if digits is not None and gather.num_digits:
            digits = digits[: gather.num_digits]
        action = gather.action_url(document_url)
        self._update_call(call.sid, gather_action=action, digits_sent=digits)
        if action is None or (digits is None and not gather.action_on_empty_result):
            return
        params = self._call_params(call, "in-progress")
        params.update({"Digits": digits or "", "msg": "Gather End"})
        done = await self._deliver("gather", call.sid, action, gather.method, params)
        self._update_call(call.sid, gather_reply=done.reply if done.ok else None)

    def _update_call(self, sid: str, **changes: Any) -> PlacedCall | None:
        with self._cond:
            call = self._calls.get(sid)
            if call is None:
                return None
            call = self._calls[sid] = replace(call, updated_at=time.time(), **changes)
            self._cond.notify_all()
            return call

    def _call_params(self, call: PlacedCall, status: str) -> dict[str, str]:
        return {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.sid,
            "CallStatus": status,
            "Called": call.to,
            "Caller": call.from_,
            "Direction": "outbound-api",
            "From": call.from_,
            "To": call.to,
        }

    async def _deliver(self, kind: CallbackKind, sid: str, url: str, method: str, params: dict[str, str]) -> Callback:
        """Send one signed request to the application, retrying blips; record and return the outcome."""
        if method == "GET":
            target, body = url + ("&" if "?" in url else "?") + urlencode(params), None
            signature = self._validator.compute_signature(target, {})
        else:
            target, body = url, params
            signature = self._validator.compute_signature(url, params)
        headers = {
            "X-Twilio-Signature": str(signature),
            "I-Twilio-Idempotency-Token": str(uuid.uuid4()),
            "User-Agent": "TwilioProxy/1.1",
        }
        status_code: int | None = None
        error: str | None = None
        reply = ""
        attempts = 0
        for attempt in range(self.callback_retries + 1):
            attempts = attempt + 1
            if attempt:
                await asyncio.sleep(0.1 * attempt)
            try:
                assert self._http is not None
                async with self._callback_gate:
                    response = await self._http.request(method, target, data=body, headers=headers)
            except (httpx.HTTPError, ValueError) as exc:
                status_code, error, reply = None, f"{type(exc).__name__}: {exc}", ""
                continue
            status_code, reply = response.status_code, response.text
            error = None if 200 <= status_code < 300 else f"HTTP {status_code}"
            if status_code < 500 and status_code != 429:
                break
        record = Callback(
            kind=kind,
            sid=sid,
            url=url,
            method=method,
            params=params,
            signature=str(signature),
            status_code=status_code,
            ok=error is None,
            attempts=attempts,
            error=error,
            reply=reply,
            at=time.time(),
        )
        if error is not None:
            log.warning("twilio sandbox: %s callback for %s to %s failed: %s", kind, sid, _safe_url(url), error)
        with self._cond:
            self._callbacks.append(record)
            self._cond.notify_all()
        return record

    # --- control and inspection ---------------------------------------------------------
    async def _get_faults(self, request: Request) -> Response:
        return JSONResponse({**self.faults.to_dict(), "seed": self._seed})

    async def _post_faults(self, request: Request) -> Response:
        try:
            changes = json.loads(await request.body() or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object")
            self.set_faults(**changes)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({**self.faults.to_dict(), "seed": self._seed})

    async def _post_reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"reset": True})

    async def _api_messages(self, request: Request) -> Response:
        return JSONResponse([_jsonable(m) for m in reversed(self.messages)])

    async def _api_calls(self, request: Request) -> Response:
        return JSONResponse([_jsonable(c) for c in reversed(self.calls)])

    async def _api_callbacks(self, request: Request) -> Response:
        return JSONResponse([_jsonable(c) for c in reversed(self.callbacks)])

    async def _api_emails(self, request: Request) -> Response:
        return JSONResponse([_email_json(e) for e in reversed(self._emails())])

    def _emails(self) -> list[ReceivedMessage]:
        return self.smtp_sink.messages if self.smtp_sink is not None else []

    async def _index(self, request: Request) -> Response:
        rows: list[dict[str, Any]] = []
        for e in self._emails():
            rows.append(
                {
                    "at": e.received_at,
                    "kind": "email",
                    "from": e.mail_from,
                    "to": ", ".join(e.rcpt_tos),
                    "content": e.subject,
                    "status": "received",
                }
            )
        for m in self.messages:
            status = m.status if m.error_code is None else f"{m.status} ({m.error_code})"
            rows.append(
                {
                    "at": m.created_at,
                    "kind": "sms",
                    "from": m.from_ or "",
                    "to": m.to,
                    "content": m.body,
                    "status": status,
                }
            )
        for c in self.calls:
            if c.digits_sent is not None:
                keypress = f"pressed {c.digits_sent}"
            elif c.gather_action is not None:
                keypress = "no input"
            else:
                keypress = ""
            rows.append(
                {
                    "at": c.created_at,
                    "kind": "call",
                    "from": c.from_,
                    "to": c.to,
                    "content": keypress,
                    "status": c.status,
                }
            )
        rows.sort(key=lambda row: row["at"], reverse=True)
        for row in rows:
            row["time"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["at"]))
        html = self._page.render(
            rows=rows,
            url=self.url,
            smtp=f"{self.smtp_sink.host}:{self.smtp_sink.port}" if self.smtp_sink is not None else None,
            counts={kind: sum(1 for row in rows if row["kind"] == kind) for kind in ("email", "sms", "call")},
        )
        return HTMLResponse(
            html,
            headers={
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    def _event(self, line: str) -> None:
        log.info("twilio sandbox: %s", line)
        if self._on_event is not None:
            self._on_event(line)


# --- helpers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CallOptions:
    """The call-create parameters that steer its progress."""

    events: frozenset[str] | None
    callback_method: str
    url_method: str

    @classmethod
    def from_params(cls, params: dict[str, str]) -> _CallOptions:
        raw = params.get("StatusCallbackEvent", "")
        names = [part for part in re.split(r"[\s,]+", raw) if part]
        events = frozenset(_CALL_EVENTS.get(name, name) for name in names) if names else None
        return cls(
            events=events,
            callback_method=(params.get("StatusCallbackMethod") or "POST").upper(),
            url_method=(params.get("Method") or "POST").upper(),
        )

    def wants(self, status: str) -> bool:
        return self.events is None or status in self.events


@dataclass(frozen=True, slots=True)
class _Gather:
    action: str | None
    method: str
    num_digits: int | None
    action_on_empty_result: bool

    def action_url(self, document_url: str | None) -> str | None:
        """The absolute URL keypresses go to; Twilio defaults to the current document's URL."""
        target = urljoin(document_url, self.action) if document_url and self.action else self.action or document_url
        if target is None or not _is_http_url(target):
            return None
        return target


def _find_gather(twiml: str | None) -> _Gather | None:
    if not twiml:
        return None
    try:
        root = ET.fromstring(twiml)
    except ET.ParseError:
        log.warning("twilio sandbox: the call's TwiML is not well-formed XML")
        return None
    element = next(root.iter("Gather"), None)
    if element is None:
        return None
    num_digits = element.get("numDigits")
    return _Gather(
        action=element.get("action"),
        method=(element.get("method") or "POST").upper(),
        num_digits=int(num_digits) if num_digits and num_digits.isdigit() else None,
        action_on_empty_result=(element.get("actionOnEmptyResult") or "").lower() == "true",
    )


def _validate_message(params: dict[str, str]) -> tuple[int, dict[str, Any]] | None:
    to = params.get("To", "")
    if not to:
        return 400, error_body(21604, 400)
    if not _E164.match(to):
        return 400, error_body(21211, 400, to=to)
    if not params.get("From") and not params.get("MessagingServiceSid"):
        return 400, error_body(21603, 400)
    if not params.get("Body") and not params.get("MediaUrl") and not params.get("ContentSid"):
        return 400, error_body(21602, 400)
    if len(params.get("Body", "")) > _MAX_BODY:
        return 400, error_body(21617, 400)
    callback = params.get("StatusCallback")
    if callback and not _is_http_url(callback):
        return 400, error_body(21609, 400)
    return None


def _validate_call(params: dict[str, str]) -> tuple[int, dict[str, Any]] | None:
    to = params.get("To", "")
    if not to:
        return 400, error_body(21201, 400)
    if not _E164.match(to):
        return 400, error_body(21211, 400, to=to)
    if not params.get("From"):
        return 400, error_body(21213, 400)
    url = params.get("Url")
    if not url and not params.get("Twiml") and not params.get("ApplicationSid"):
        return 400, error_body(21205, 400)
    if url and not _is_http_url(url):
        body = error_body(21205, 400)
        body["message"] = "Url is not a valid URL"
        return 400, body
    return None


def _form(raw: bytes) -> dict[str, str]:
    """A form body as Twilio reads it: repeated keys (StatusCallbackEvent) joined with spaces."""
    parsed = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: " ".join(values) if len(values) > 1 else values[0] for key, values in parsed.items()}


def _basic_credentials(header: str) -> tuple[str, str]:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    user, _, password = decoded.partition(":")
    return user, password


def _is_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _safe_url(url: str) -> str:
    """A URL for a log line: scheme, host and path, never the query (it may carry numbers)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _rfc2822(at: float | None = None) -> str:
    moment = datetime.fromtimestamp(at if at is not None else time.time(), tz=UTC)
    return format_datetime(moment)


def _jsonable(record: SentMessage | PlacedCall | Callback) -> dict[str, Any]:
    data = asdict(record)
    if "from_" in data:
        data["from"] = data.pop("from_")
    return data


def _email_json(message: ReceivedMessage) -> dict[str, Any]:
    return {
        "received_at": message.received_at,
        "mail_from": message.mail_from,
        "rcpt_tos": list(message.rcpt_tos),
        "to": message.to,
        "subject": message.subject,
        "message_id": message.message_id,
        "text": message.text,
        "html": message.html,
        "size": len(message.raw),
    }


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<title>herald sandbox</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #ddd; vertical-align: top; }
th { background: #f4f4f4; }
td.content { white-space: pre-wrap; word-break: break-word; max-width: 40rem; }
.kind { font-weight: 600; text-transform: uppercase; font-size: 12px; }
.email .kind { color: #2563eb; } .sms .kind { color: #16a34a; } .call .kind { color: #9333ea; }
.muted { color: #777; }
</style>
</head>
<body>
<h1>herald sandbox</h1>
<p class="muted">Twilio API at {{ url }}{% if smtp %} · SMTP sink at {{ smtp }}{% endif %} ·
{{ counts.email }} email(s), {{ counts.sms }} SMS, {{ counts.call }} call(s) ·
JSON: <a href="/api/emails">emails</a>, <a href="/api/messages">messages</a>,
<a href="/api/calls">calls</a>, <a href="/api/callbacks">callbacks</a> · refreshes every 5 s</p>
<table>
<thead><tr><th>Time</th><th>Kind</th><th>From</th><th>To</th>
<th>Subject / body / keypress</th><th>Status</th></tr></thead>
<tbody>
{% for row in rows %}
<tr class="{{ row.kind }}"><td>{{ row.time }}</td><td class="kind">{{ row.kind }}</td><td>{{ row['from'] }}</td>
<td>{{ row.to }}</td><td class="content">{{ row.content }}</td><td>{{ row.status }}</td></tr>
{% else %}
<tr><td colspan="6" class="muted">Nothing received yet.</td></tr>
{% endfor %}
</tbody>
</table>
</body>
</html>
"""


# --- running it ---------------------------------------------------------------------------


def run_sandbox(
    host: str,
    smtp_port: int,
    twilio_port: int,
    account_sid: str,
    auth_token: str,
    faults: dict[str, Any] | None,
) -> None:
    """Run the SMTP sink and the Twilio sandbox until Ctrl-C (or SIGTERM), printing their URLs.

    Raises:
        ValueError: ``faults`` holds an unknown fault or a bad value.
        OSError: a port could not be bound.
    """

    def show_email(message: ReceivedMessage) -> None:
        rcpts = ", ".join(mask_email(rcpt) for rcpt in message.rcpt_tos)
        print(f"{time.strftime('%H:%M:%S')} email to {rcpts}: {message.subject[:80]}", flush=True)

    def show(line: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)

    faults = dict(faults or {})
    seed = faults.pop("seed", 0)
    sink = SmtpSink(host, smtp_port, on_message=show_email)
    sandbox = TwilioSandbox(
        host,
        twilio_port,
        account_sid=account_sid,
        auth_token=auth_token,
        smtp_sink=sink,
        faults=faults,
        seed=seed,
        on_event=show,
    )
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with sink, sandbox:
        print(f"SMTP sink      smtp://{sink.host}:{sink.port}", flush=True)
        print(f"Twilio API     {sandbox.url}  (HERALD_TWILIO_BASE_URL)", flush=True)
        print(f"Web page       {sandbox.url}/", flush=True)
        print("Ctrl-C to stop", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    print(f"{sink.count} email(s), {len(sandbox.messages)} SMS, {len(sandbox.calls)} call(s) received", flush=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m worker.sandbox.twilio``: the SMTP sink and the Twilio sandbox together."""
    from worker.config import get_settings
    from worker.logs import configure_logging

    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m worker.sandbox.twilio", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8089, help="Twilio sandbox port")
    parser.add_argument("--smtp-port", type=int, default=8025)
    parser.add_argument("--account-sid", default=settings.twilio_account_sid)
    parser.add_argument("--auth-token", default=settings.twilio_auth_token.get_secret_value())
    parser.add_argument("--faults", default=None, metavar="JSON", help='e.g. \'{"rate_429": 0.1, "seed": 7}\'')
    args = parser.parse_args(argv)
    configure_logging(logging.WARNING)
    try:
        faults = json.loads(args.faults) if args.faults else None
        if faults is not None and not isinstance(faults, dict):
            raise ValueError("--faults must be a JSON object")
        run_sandbox(args.host, args.smtp_port, args.port, args.account_sid, args.auth_token, faults)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
