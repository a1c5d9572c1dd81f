"""Email over SMTP with aiosmtplib: pooled connections, one MIME build per content.

Where the time goes (DESIGN.md): building a MIME message per recipient, not the wire. So the
message common to an event and locale is built and serialised once (``_Template``), kept in
a small LRU cache, and per recipient only the ``To`` and ``Message-ID`` header bytes are
spliced in before ``sendmail``. Messages of a batch are spread over up to
``smtp_connections`` persistent connections, kept open across batches.

Failures never leave as aiosmtplib exceptions: ``map_smtp_error`` is the one place they
become ``TransientDeliveryError`` (4xx, disconnects, timeouts) or ``PermanentDeliveryError``
(5xx, bad address, failed login), each marked ``provider=True`` when the relay rather than
the recipient is at fault. Transient ones get a few quick tries here (tenacity); dramatiq
does the long retries with the receipts this returns. A timeout or a lost connection once a
message's data went out is an ``UnknownOutcomeError`` instead: the server may have taken it,
so it is not sent again in this attempt; a timeout there also spares the rest of the batch,
since a server that stopped answering would make every message wait the full timeout.

Connections belong to the event loop that opened them: use one ``EmailChannel`` per loop
(worker.runtime keeps one per thread). If the running loop changes, the pool starts afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import re
import ssl
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formataddr, formatdate, parseaddr
from typing import ClassVar, Literal

from aiosmtplib import (
    SMTP,
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPConnectTimeoutError,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupported,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponse,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from aiosmtplib.typing import Default
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

from channels.base import Channel
from worker.config import Settings
from worker.core.errors import (
    ConfigurationError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
    UnknownOutcomeError,
)
from worker.core.messages import Content, DeliveryKey, OutboundMessage, Receipt
from worker.core.redact import mask_email, mask_emails_in
from worker.core.statuses import DeliveryStatus

#: Longest server text kept in an error message or receipt detail.
MAX_REPLY_CHARS = 200
#: Longest display name put in a ``To`` header.
MAX_NAME_CHARS = 100

_TO_TOKEN = "x-herald-to@placeholder.invalid"
_MSGID_TOKEN = "<x-herald-msgid@placeholder.invalid>"
_DATE_TOKEN = "Thu, 01 Jan 1970 00:00:00 +0000"
# Dot-atom local part and a host name: what contacts.check_email produces; no quoting, no
# whitespace, nothing that could end a header or an SMTP command.
_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")


def map_smtp_error(exc: BaseException) -> DeliveryError:
    """Translate anything aiosmtplib or the network raised into herald's error tree.

    4xx replies, disconnects, timeouts and network errors are transient; 5xx replies, an
    address the client refuses to send, an unsupported required extension and a failed
    certificate check are permanent. ``code`` is the SMTP reply code as a string (or None);
    ``message`` is one line, at most ``MAX_REPLY_CHARS`` of server text, addresses masked.

    ``provider`` is True when the relay is at fault, whatever the recipient: it cannot be
    reached, times out or hangs up, answers 421, refuses our greeting, HELO, sender or login,
    fails TLS or lacks an extension. Replies about one recipient (RCPT, DATA) are the
    recipient's, so a backup relay is not asked to try them again.
    """
    if isinstance(exc, DeliveryError):
        return exc
    if isinstance(exc, SMTPRecipientsRefused):
        if not exc.recipients:
            return TransientDeliveryError("recipient refused without a reply")
        first = exc.recipients[0]
        return _by_code(first.code, f"recipient refused: {_safe(first.message)}")
    if isinstance(exc, SMTPAuthenticationError):
        hint = "SMTP login failed, check HERALD_SMTP_USERNAME/PASSWORD"
        return _by_code(exc.code, f"{hint}: {_safe(exc.message)}", provider=True)
    if isinstance(exc, SMTPResponseException):
        ours = isinstance(exc, SMTPConnectResponseError | SMTPHeloError | SMTPSenderRefused)
        return _by_code(exc.code, f"{_reply_context(exc)}: {_safe(exc.message)}", provider=ours)
    if isinstance(exc, SMTPNotSupported):
        return PermanentDeliveryError(f"SMTP server lacks a required feature: {_safe(exc.message)}", provider=True)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentDeliveryError(f"TLS certificate check failed: {_safe(str(exc))}", provider=True)
    if isinstance(exc, SMTPConnectTimeoutError):
        return TransientDeliveryError("timed out connecting to the SMTP server", provider=True)
    if isinstance(exc, SMTPTimeoutError | TimeoutError):
        return TransientDeliveryError("timed out waiting for the SMTP server", provider=True)
    if isinstance(exc, SMTPServerDisconnected):
        return TransientDeliveryError(f"SMTP server disconnected: {_safe(exc.message)}", provider=True)
    if isinstance(exc, SMTPConnectError):
        return TransientDeliveryError(f"cannot connect to the SMTP server: {_safe(exc.message)}", provider=True)
    if isinstance(exc, OSError):
        return TransientDeliveryError(f"network error talking to the SMTP server: {_safe(str(exc))}", provider=True)
    if isinstance(exc, SMTPException):
        # aiosmtplib raises the bare class only for the session itself (no STARTTLS, no AUTH).
        return TransientDeliveryError(f"SMTP error: {_safe(exc.message)}", provider=True)
    if isinstance(exc, ValueError):
        return PermanentDeliveryError(f"address cannot be sent over SMTP: {_safe(str(exc))}")
    return TransientDeliveryError(f"unexpected {type(exc).__name__} while sending email")


def message_id_for(key: DeliveryKey) -> str:
    """The Message-ID of one delivery: the same key always gives the same id, so duplicates show."""
    raw = f"{key.event_id}|{key.recipient_ref}|{key.channel}|{key.step}".encode()
    return f"<{hashlib.sha1(raw, usedforsecurity=False).hexdigest()[:24]}@herald>"


def one_line(text: str) -> str:
    """``text`` with every line break and control character turned into a space (no header injection)."""
    return _CONTROL.sub(" ", text).strip()


def _by_code(code: int, message: str, *, provider: bool = False) -> DeliveryError:
    code_text = str(code) if code > 0 else None
    provider = provider or code == 421  # "service not available, closing": the relay, at any step
    if 500 <= code < 600:
        return PermanentDeliveryError(message, code=code_text, provider=provider)
    return TransientDeliveryError(message, code=code_text, provider=provider)


def _reply_context(exc: SMTPResponseException) -> str:
    if isinstance(exc, SMTPRecipientRefused):
        return "recipient refused"
    return type(exc).__name__.removeprefix("SMTP").removesuffix("Error").lower() or "reply"


def _safe(text: str) -> str:
    return mask_emails_in(one_line(text))[:MAX_REPLY_CHARS]


def _is_transient(exc: BaseException) -> bool:
    """Worth another try now: transient, and certainly not taken by the server."""
    return isinstance(exc, DeliveryError) and exc.transient and not exc.outcome_unknown


class _Session(SMTP):
    """aiosmtplib's client, noting when a message's data starts to go out.

    Before that point a timeout or a lost connection cannot have delivered anything; after
    it, the server may have taken the message without our hearing its reply.
    """

    data_started = False

    async def data(
        self, message: str | bytes, /, *, timeout: float | Literal[Default.token] | None = Default.token
    ) -> SMTPResponse:
        self.data_started = True
        return await super().data(message, timeout=timeout)


@dataclass(frozen=True, slots=True)
class _Template:
    """One serialised message with the Date, To and Message-ID header values cut out."""

    content: Content
    event_id: str
    parts: tuple[bytes, ...]
    slots: tuple[int, ...]

    def render(self, values: tuple[bytes, bytes, bytes]) -> bytes:
        """The message with (date, to, message_id) spliced in; a few joins, no MIME work."""
        chunks = [self.parts[0]]
        for slot, part in zip(self.slots, self.parts[1:], strict=True):
            chunks.append(values[slot])
            chunks.append(part)
        return b"".join(chunks)


def build_template(content: Content, event_id: str, from_header: str) -> _Template:
    """Build and serialise the message shared by every recipient of ``content`` once.

    Raises:
        RuntimeError: a placeholder did not survive serialisation (a bug, not bad input).
    """
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = from_header
    message["To"] = _TO_TOKEN
    message["Subject"] = one_line(content.subject)
    message["Date"] = _DATE_TOKEN
    message["Message-ID"] = _MSGID_TOKEN
    message["X-Herald-Event"] = one_line(event_id)
    message.set_content(content.text, charset="utf-8", cte=_cte(content.text))
    if content.html is not None:
        message.add_alternative(content.html, subtype="html", charset="utf-8", cte=_cte(content.html))
    raw = message.as_bytes(policy=SMTP_POLICY)
    head_end = raw.find(b"\r\n\r\n")
    found: list[tuple[int, int, int]] = []
    placeholders = (("Date", _DATE_TOKEN), ("To", _TO_TOKEN), ("Message-ID", _MSGID_TOKEN))
    for slot, (name, token) in enumerate(placeholders):
        line = f"\r\n{name}: {token}\r\n".encode()
        start = raw.find(line, 0, head_end + 2)
        if start < 0:
            raise RuntimeError(f"{name} placeholder lost while serialising an email")
        value_start = start + len(name) + 4
        found.append((value_start, value_start + len(token), slot))
    found.sort()
    parts, cursor = [], 0
    for begin, end, _slot in found:
        parts.append(raw[cursor:begin])
        cursor = end
    parts.append(raw[cursor:])
    return _Template(content, event_id, tuple(parts), tuple(slot for *_, slot in found))


def _cte(text: str) -> str:
    # 7-bit safe bodies: servers without 8BITMIME take them too.
    return "quoted-printable" if text.isascii() else "base64"


def _to_header(name: str, address: str) -> bytes:
    display = one_line(name)[:MAX_NAME_CHARS]
    return formataddr((display, address), charset="utf-8").encode("ascii")


@dataclass(slots=True)
class _Batch:
    """What the workers of one ``send()`` call share."""

    date: bytes
    receipts: list[Receipt | None]
    outage: DeliveryError | None = None
    items: Iterator[tuple[int, OutboundMessage]] = field(default_factory=lambda: iter(()))


class EmailChannel(Channel):
    """Sends rendered email over a small pool of persistent SMTP connections."""

    name: ClassVar[str] = "email"

    def __init__(
        self,
        settings: Settings,
        *,
        retry_initial_s: float = 0.05,
        retry_max_s: float = 1.0,
        cache_size: int = 32,
    ) -> None:
        """Check the SMTP settings; connections open lazily on the first ``send()``.

        Raises:
            ConfigurationError: HERALD_SMTP_FROM has no address, or TLS settings conflict.
        """
        self._settings = settings
        self._envelope_from = parseaddr(settings.smtp_from)[1]
        if not _ADDRESS.fullmatch(self._envelope_from):
            raise ConfigurationError("HERALD_SMTP_FROM needs an email address, e.g. 'herald <a@b.org>'")
        # Certificates are always verified; a relay with a private CA is trusted by naming it.
        self._tls_context = ssl.create_default_context(cafile=settings.smtp_ca_file) if settings.smtp_ca_file else None
        if settings.smtp_starttls and settings.smtp_use_tls:
            raise ConfigurationError("set only one of HERALD_SMTP_STARTTLS and HERALD_SMTP_USE_TLS")
        self._from_header = one_line(settings.smtp_from)
        self._size = settings.smtp_connections
        self._tries = settings.smtp_tries
        # initial, 2×initial, 4×initial … capped at retry_max_s, plus up to initial of jitter
        self._retry_initial_s = retry_initial_s
        # The first retry waits ~initial (above); tenacity continues 2×, 4× … capped at retry_max_s.
        backoff = wait_exponential(multiplier=retry_initial_s * 2, max=retry_max_s)
        self._wait = backoff + wait_random(0, retry_initial_s)
        self._templates: OrderedDict[tuple[str, str], _Template] = OrderedDict()
        self._cache_size = max(1, cache_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: list[_Session] = []
        self._idle: list[_Session] = []
        self._slots: asyncio.Semaphore | None = None

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Receipt]:
        """Send each message to its one recipient; one receipt per message, in order, never raising."""
        self._bind_loop()
        batch = _Batch(date=formatdate(usegmt=True).encode("ascii"), receipts=[None] * len(messages))
        sendable: list[tuple[int, OutboundMessage]] = []
        for index, message in enumerate(messages):
            problem = _address_problem(message.recipient.email)
            if problem is None:
                sendable.append((index, message))
            else:
                batch.receipts[index] = Receipt.failed(message.key, PermanentDeliveryError(problem), tries=0)
        if sendable:
            batch.items = iter(sendable)
            workers = min(self._size, len(sendable))
            await asyncio.gather(*(self._work(batch) for _ in range(workers)))
        return [
            receipt if receipt is not None else self._skipped(message.key, batch.outage)
            for receipt, message in zip(batch.receipts, messages, strict=True)
        ]

    async def aclose(self) -> None:
        """QUIT and close every pooled connection."""
        clients, self._clients, self._idle = self._clients, [], []
        same_loop = self._loop is _running_loop()
        for client in clients:
            with contextlib.suppress(Exception):  # closing anyway; nothing to report
                if same_loop and client.is_connected:
                    await client.quit(timeout=self._settings.smtp_timeout_s)
            _close_quietly(client)

    # --- the pool ----------------------------------------------------------------------
    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if loop is self._loop and self._slots is not None:
            return
        for client in self._clients:
            _close_quietly(client)
        self._loop, self._clients, self._idle = loop, [], []
        self._slots = asyncio.Semaphore(self._size)

    def _new_client(self) -> _Session:
        settings = self._settings
        username = settings.smtp_username or None
        client = _Session(
            hostname=settings.smtp_host,
            port=settings.smtp_port,
            username=username,
            password=settings.smtp_password.get_secret_value() if username else None,
            timeout=settings.smtp_timeout_s,
            use_tls=settings.smtp_use_tls,
            start_tls=settings.smtp_starttls,
            tls_context=self._tls_context,
        )
        self._clients.append(client)
        return client

    async def _work(self, batch: _Batch) -> None:
        assert self._slots is not None
        async with self._slots:
            client = self._idle.pop() if self._idle else self._new_client()
            try:
                while batch.outage is None or client.is_connected:
                    item = next(batch.items, None)
                    if item is None:
                        break
                    index, message = item
                    batch.receipts[index] = await self._deliver(client, message, batch)
            except BaseException:
                _close_quietly(client)  # cancelled mid-transaction: never reuse that session
                raise
            finally:
                self._idle.append(client)

    # --- one message -------------------------------------------------------------------
    async def _deliver(self, client: _Session, message: OutboundMessage, batch: _Batch) -> Receipt:
        address = message.recipient.email or ""
        message_id = message_id_for(message.key)
        try:
            payload = self._template(message).render(
                (batch.date, _to_header(message.recipient.name, address), message_id.encode("ascii"))
            )
        except Exception as exc:  # e.g. a lone surrogate in rendered text: this content cannot go out
            error = PermanentDeliveryError(f"email could not be built: {type(exc).__name__}")
            return Receipt.failed(message.key, error, tries=0)
        tries, phase = 1, "connect"
        try:
            # The common case in one try, without building a retry controller per message.
            await self._connect(client)
            phase = "send"
            reply = await self._transmit(client, address, payload)
        except DeliveryError as first:
            if not _is_transient(first) or self._tries == 1:
                _note_outage(batch, first, phase)
                return Receipt.failed(message.key, first, tries=1)
        else:
            return Receipt(
                key=message.key,
                status=DeliveryStatus.DELIVERED,
                provider_message_id=message_id,
                tries=1,
                detail={"smtp_reply": _safe(reply)},
            )
        await asyncio.sleep(self._retry_initial_s + random.uniform(0, self._retry_initial_s))
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(self._tries - 1),
                wait=self._wait,
                retry=retry_if_exception(_is_transient),
                reraise=True,
            ):
                with attempt:
                    tries = attempt.retry_state.attempt_number + 1
                    phase = "connect"
                    await self._connect(client)
                    phase = "send"
                    reply = await self._transmit(client, address, payload)
        except DeliveryError as error:
            _note_outage(batch, error, phase)
            return Receipt.failed(message.key, error, tries=tries)
        return Receipt(
            key=message.key,
            status=DeliveryStatus.DELIVERED,
            provider_message_id=message_id,
            tries=tries,
            detail={"smtp_reply": _safe(reply)},
        )

    async def _connect(self, client: _Session) -> None:
        if client.is_connected:
            return
        try:
            await client.connect()
        except Exception as exc:
            raise map_smtp_error(exc) from None

    async def _transmit(self, client: _Session, address: str, payload: bytes) -> str:
        client.data_started = False
        try:
            refused, reply = await client.sendmail(self._envelope_from, [address], payload)
        except Exception as exc:
            error = map_smtp_error(exc)
            if error.transient and error.code in (None, "421"):
                _close_quietly(client)  # the session is gone or going; reconnect on the next try
            if client.data_started and error.transient and error.code is None:
                # No reply to the message's data (a reply code would be a verdict): it may be taken.
                timed_out = isinstance(exc, SMTPTimeoutError | TimeoutError)
                raise UnknownOutcomeError(
                    f"{error.message} after the message was sent; the server may have accepted it",
                    code="no-reply-after-data" if timed_out else "lost-after-data",
                    provider=True,
                ) from None
            raise error from None
        if refused:
            raise map_smtp_error(_refusals(refused))
        return reply

    def _template(self, message: OutboundMessage) -> _Template:
        content, event_id = message.content, message.key.event_id
        cache_key = (content.cache_key, event_id)
        template = self._templates.get(cache_key)
        if template is not None and template.content == content:
            self._templates.move_to_end(cache_key)
            return template
        template = build_template(content, event_id, self._from_header)
        self._templates[cache_key] = template
        while len(self._templates) > self._cache_size:
            self._templates.popitem(last=False)
        return template

    @staticmethod
    def _skipped(key: DeliveryKey, outage: DeliveryError | None) -> Receipt:
        # Never tried because the relay failed us earlier: another relay may well take it.
        error = outage or TransientDeliveryError("not attempted", provider=True)
        if not error.provider:
            error = type(error)(error.message, code=error.code, provider=True)
        status = DeliveryStatus.RETRYING if error.transient else DeliveryStatus.FAILED
        return Receipt(
            key=key,
            status=status,
            error=error,
            tries=0,
            detail={"skipped": "the SMTP server failed earlier in this batch"},
        )


def _note_outage(batch: _Batch, error: DeliveryError, phase: str) -> None:
    """Spare the rest of the batch when the server is unreachable, refuses us, or stopped answering."""
    if phase == "connect":
        batch.outage = error
    elif error.code == "no-reply-after-data":
        batch.outage = TransientDeliveryError(
            "not attempted: the SMTP server stopped answering earlier in this batch", code="skipped", provider=True
        )


def _address_problem(address: str | None) -> str | None:
    if not address:
        return "recipient has no email address"
    if not _ADDRESS.fullmatch(address):
        return f"invalid email address {mask_email(address)}"
    return None


def _refusals(refused: dict[str, SMTPResponse]) -> SMTPRecipientsRefused:
    return SMTPRecipientsRefused(
        [SMTPRecipientRefused(response.code, response.message, rcpt) for rcpt, response in refused.items()]
    )


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _close_quietly(client: SMTP) -> None:
    with contextlib.suppress(Exception):  # e.g. its event loop is already closed
        client.close()
