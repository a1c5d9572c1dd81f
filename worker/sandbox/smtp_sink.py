"""A local SMTP server that accepts mail and keeps it, for development, tests and the demo.

Built on aiosmtpd's threaded ``Controller``: the server runs its own event loop in a
thread, so a test can drive async client code with ``asyncio.run`` while the sink keeps
listening. Everything a test inspects or changes (received messages, fault rules) sits
behind one lock, so it may be read or set from any thread while mail is flowing.

Faults are injected at runtime to exercise the channel's error handling against a real
SMTP conversation: refused recipients (5xx), deferred recipients (4xx a few times, then
accepted), failing DATA, dropped connections and slow replies.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import json
import re
import signal
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from worker.core.redact import mask_email

_COUNTED = "_herald_sink_counted"


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One message the sink accepted: its envelope and its decoded headers and parts."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    subject: str
    message_id: str
    to: str
    headers: tuple[tuple[str, str], ...]
    text: str | None
    html: str | None
    raw: bytes
    received_at: float

    def header(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), decoded."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]


@dataclass(slots=True)
class _Rule:
    pattern: re.Pattern[str]
    code: int
    text: str
    times: int | None = None  # None: always; else how many times per address
    seen: dict[str, int] | None = None


class _Faults:
    """Fault rules; every access happens under the sink's lock."""

    def __init__(self) -> None:
        self.refusals: list[_Rule] = []
        self.deferrals: list[_Rule] = []
        self.data_failures: list[tuple[int, str]] = []
        self.drops = 0
        self.latency_s = 0.0


def parse_message(mail_from: str, rcpt_tos: tuple[str, ...], raw: bytes) -> ReceivedMessage:
    """Decode a raw message the way a mail client would show it."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    return ReceivedMessage(
        mail_from=mail_from,
        rcpt_tos=rcpt_tos,
        subject=str(message.get("Subject", "")).strip(),
        message_id=str(message.get("Message-ID", "")),
        to=str(message.get("To", "")),
        headers=tuple((key, str(value)) for key, value in message.items()),
        text=_part_text(text_part),
        html=_part_text(html_part),
        raw=raw,
        received_at=time.time(),
    )


def _part_text(part: Any) -> str | None:
    if part is None:
        return None
    content = part.get_content()
    # MIME text travels with CRLF line ends; show it the way a mail client would.
    return content.replace("\r\n", "\n") if isinstance(content, str) else None


class SmtpSink:
    """An SMTP server on ``host``:``port`` that records (or only counts) what it receives.

    ``port=0`` picks a free port; ``port`` holds the real one once started. ``store=False``
    keeps only the count, so a benchmark's memory stays flat. ``log_path`` appends one JSON
    line per message (recipients masked). ``credentials`` makes the sink offer AUTH
    PLAIN/LOGIN without TLS and accept only that user and password.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        store: bool = True,
        log_path: str | Path | None = None,
        on_message: Callable[[ReceivedMessage], None] | None = None,
        credentials: tuple[str, str] | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.store = store
        self.log_path = Path(log_path) if log_path is not None else None
        self._on_message = on_message
        self._credentials = credentials
        self._tls_context = tls_context
        self._cond = threading.Condition()
        self._messages: list[ReceivedMessage] = []
        self._count = 0
        self._connections = 0
        self._faults = _Faults()
        self._log: IO[str] | None = None
        self._controller: _Controller | None = None

    # --- life cycle --------------------------------------------------------------------
    def start(self) -> SmtpSink:
        """Start listening in a background thread; returns self.

        Raises:
            RuntimeError: the sink is already running.
            OSError: the port cannot be bound.
        """
        if self._controller is not None:
            raise RuntimeError("SmtpSink is already running")
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("a", encoding="utf-8")
        kwargs: dict[str, Any] = {}
        if self._credentials is not None:
            kwargs.update(authenticator=self._authenticate, auth_require_tls=self._tls_context is not None)
        if self._tls_context is not None:
            kwargs.update(tls_context=self._tls_context, require_starttls=True)
        controller = _Controller(
            _Handler(self), hostname=self.host, port=self.port, server_hostname="herald-sink", **kwargs
        )
        controller.start()
        self._controller = controller
        self.port = controller.port
        return self

    def stop(self) -> None:
        """Stop listening and close the log; stored messages stay readable."""
        controller, self._controller = self._controller, None
        if controller is not None:
            controller.stop()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- what arrived ------------------------------------------------------------------
    @property
    def messages(self) -> list[ReceivedMessage]:
        """A snapshot of the stored messages, oldest first (empty when ``store=False``)."""
        with self._cond:
            return list(self._messages)

    @property
    def count(self) -> int:
        """How many messages were accepted, stored or not."""
        with self._cond:
            return self._count

    @property
    def connections(self) -> int:
        """How many SMTP sessions greeted the sink (counted once per connection at EHLO/HELO)."""
        with self._cond:
            return self._connections

    def clear(self) -> None:
        """Forget stored messages and reset the message and connection counters."""
        with self._cond:
            self._messages.clear()
            self._count = 0
            self._connections = 0

    def by_recipient(self) -> dict[str, list[ReceivedMessage]]:
        """Stored messages grouped by envelope recipient."""
        grouped: dict[str, list[ReceivedMessage]] = {}
        for message in self.messages:
            for rcpt in message.rcpt_tos:
                grouped.setdefault(rcpt, []).append(message)
        return grouped

    def wait_for(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` messages were accepted; False if ``timeout`` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._count >= n, timeout=timeout)

    # --- fault injection ---------------------------------------------------------------
    def refuse(self, pattern: str, code: int = 550, text: str | None = None) -> None:
        """Refuse RCPT for addresses matching the regex ``pattern`` (``{address}`` in text is echoed)."""
        reply = text or "5.1.1 <{address}>: Recipient address rejected: User unknown"
        with self._cond:
            self._faults.refusals.append(_Rule(re.compile(pattern), code, reply))

    def defer(self, pattern: str, times: int = 1, code: int = 451, text: str | None = None) -> None:
        """Answer RCPT with ``code`` the first ``times`` times per matching address, then accept."""
        reply = text or "4.7.1 <{address}>: Recipient address rejected: Try again later"
        with self._cond:
            self._faults.deferrals.append(_Rule(re.compile(pattern), code, reply, times=times, seen={}))

    def fail_next_data(self, n: int = 1, code: int = 451, text: str | None = None) -> None:
        """Answer the next ``n`` DATA transfers with ``code`` instead of accepting them."""
        reply = text or ("4.3.0 Temporary failure, try again" if code < 500 else "5.3.0 Message rejected")
        with self._cond:
            self._faults.data_failures.extend([(code, reply)] * n)

    def drop_next_data(self, n: int = 1) -> None:
        """Close the connection instead of answering the next ``n`` DATA transfers."""
        with self._cond:
            self._faults.drops += n

    def latency(self, seconds: float) -> None:
        """Delay every DATA reply by ``seconds`` (0 turns it off)."""
        with self._cond:
            self._faults.latency_s = max(0.0, seconds)

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        with self._cond:
            self._faults = _Faults()

    # --- called from the server thread -------------------------------------------------
    def _count_session(self, session: Session) -> None:
        if getattr(session, _COUNTED, False):
            return
        setattr(session, _COUNTED, True)
        with self._cond:
            self._connections += 1

    def _rcpt_fault(self, address: str) -> str | None:
        with self._cond:
            for rule in self._faults.refusals:
                if rule.pattern.search(address):
                    return f"{rule.code} {rule.text.replace('{address}', address)}"
            for rule in self._faults.deferrals:
                if rule.pattern.search(address) and rule.seen is not None and rule.times is not None:
                    used = rule.seen.get(address, 0)
                    if used < rule.times:
                        rule.seen[address] = used + 1
                        return f"{rule.code} {rule.text.replace('{address}', address)}"
        return None

    def _data_fault(self) -> tuple[float, str | None, bool]:
        with self._cond:
            faults = self._faults
            if faults.drops:
                faults.drops -= 1
                return faults.latency_s, None, True
            if faults.data_failures:
                code, reply = faults.data_failures.pop(0)
                return faults.latency_s, f"{code} {reply}", False
            return faults.latency_s, None, False

    def _accept(self, mail_from: str, rcpt_tos: tuple[str, ...], raw: bytes) -> None:
        parsed = None
        if self.store or self._log is not None or self._on_message is not None:
            parsed = parse_message(mail_from, rcpt_tos, raw)
        with self._cond:
            self._count += 1
            if parsed is not None and self.store:
                self._messages.append(parsed)
            if parsed is not None and self._log is not None:
                self._log.write(json.dumps(_log_record(parsed), ensure_ascii=False) + "\n")
                self._log.flush()
            self._cond.notify_all()
        if parsed is not None and self._on_message is not None:
            self._on_message(parsed)

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if self._credentials is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = self._credentials
        ok = auth_data.login == user.encode() and auth_data.password == password.encode()
        return AuthResult(success=ok, handled=False)


def _log_record(message: ReceivedMessage) -> dict[str, Any]:
    return {
        "received_at": message.received_at,
        "mail_from": mask_email(message.mail_from),
        "rcpt_tos": [mask_email(rcpt) for rcpt in message.rcpt_tos],
        "subject": message.subject,
        "message_id": message.message_id,
        "size": len(message.raw),
    }


class _Handler:
    """aiosmtpd hooks; each delegates to the sink so state lives in one place."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_HELO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str) -> str:
        self._sink._count_session(session)
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        self._sink._count_session(session)
        session.host_name = hostname
        return responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        fault = self._sink._rcpt_fault(address)
        if fault is not None:
            return fault
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        delay, fault, drop = self._sink._data_fault()
        if delay:
            await asyncio.sleep(delay)
        if drop:
            if server.transport is not None:
                server.transport.close()
            return "421 4.4.2 Connection dropped by the sink"
        if fault is not None:
            return fault
        raw = envelope.original_content or b""
        self._sink._accept(envelope.mail_from or "", tuple(envelope.rcpt_tos), bytes(raw))
        return "250 2.0.0 Message accepted for delivery"


class _Controller(Controller):
    """aiosmtpd's threaded controller, taught to report the port it got when asked for 0."""

    def _trigger_server(self) -> None:
        sockets = getattr(self.server, "sockets", None)
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        super()._trigger_server()  # type: ignore[no-untyped-call]


def main(argv: list[str] | None = None) -> int:
    """Run the sink until Ctrl-C, printing one masked line per message."""
    parser = argparse.ArgumentParser(prog="python -m worker.sandbox.smtp_sink", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8025)
    parser.add_argument("--jsonl", metavar="PATH", default=None, help="append one JSON line per message")
    parser.add_argument("--no-store", action="store_true", help="count only; keep memory flat")
    args = parser.parse_args(argv)

    def show(message: ReceivedMessage) -> None:
        rcpts = ", ".join(mask_email(rcpt) for rcpt in message.rcpt_tos)
        print(f"{time.strftime('%H:%M:%S')} {rcpts} {message.message_id} {message.subject[:80]}", flush=True)

    sink = SmtpSink(args.host, args.port, store=not args.no_store, log_path=args.jsonl, on_message=show)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with sink:
        print(f"SMTP sink listening on {sink.host}:{sink.port} (Ctrl-C to stop)", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    print(f"{sink.count} message(s) received", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
