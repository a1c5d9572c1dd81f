"""EmailChannel against a real SMTP server (the aiosmtpd sink herald ships)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator, Sequence
from email.utils import parseaddr
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from pydantic import SecretStr

import channels.email as email_module
from channels.email import EmailChannel, message_id_for
from worker.config import Settings
from worker.core.errors import PermanentDeliveryError, TransientDeliveryError, UnknownOutcomeError
from worker.core.messages import Content, DeliveryKey, OutboundMessage, Receipt, Recipient
from worker.core.statuses import DeliveryStatus
from worker.sandbox.smtp_sink import SmtpSink

EN = Content(
    cache_key="evt-1:en",
    locale="en",
    subject="Security notice: what happened to your account",
    text="Hello,\n\nWe detected unusual access.\n.\nA line that starts with a dot.\n",
    html="<p>Hello,</p><p>We detected <b>unusual</b> access.</p>\n",
)
ZH = Content(
    cache_key="evt-1:zh-CN",
    locale="zh-CN",
    subject="安全通知：您的账户发生了什么",
    text="您好，\n\n我们检测到异常访问。请修改密码。\n",
    html="<p>您好，</p><p>我们检测到<b>异常访问</b>。</p>\n",
)


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    with SmtpSink(port=0) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh(sink: SmtpSink) -> None:
    sink.clear_faults()
    sink.clear()


def settings_for(port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_from": "herald <security@example.com>",
        "smtp_connections": 4,
        "smtp_tries": 3,
        "smtp_timeout_s": 5.0,
        "smtp_starttls": False,
        "smtp_use_tls": False,
        "smtp_username": "",
    }
    values.update(overrides)
    return Settings(**values)


def channel_for(port: int, **overrides: Any) -> EmailChannel:
    return EmailChannel(settings_for(port, **overrides), retry_initial_s=0.001, retry_max_s=0.01)


def message(
    n: int,
    content: Content = EN,
    *,
    email: str | None = None,
    name: str | None = None,
    event_id: str = "evt-1",
) -> OutboundMessage:
    ref = f"r{n:04d}"
    recipient = Recipient(
        ref=ref,
        user_id=f"u{n}",
        name=f"User {n}" if name is None else name,
        email=f"user{n}@example.com" if email is None else email,
        locale=content.locale,
    )
    return OutboundMessage(DeliveryKey(event_id, ref, "email"), recipient, content)


def send(channel: EmailChannel, *batches: Sequence[OutboundMessage]) -> list[list[Receipt]]:
    """Send each batch in turn on one event loop, then close the channel."""

    async def run() -> list[list[Receipt]]:
        try:
            return [await channel.send(batch) for batch in batches]
        finally:
            await channel.aclose()

    return asyncio.run(run())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_mixed_locale_batch_arrives_decoded_with_distinct_deterministic_ids(sink: SmtpSink) -> None:
    batch = [message(n, EN if n % 2 else ZH, name="张三" if n == 7 else None) for n in range(50)]

    [receipts] = send(channel_for(sink.port), batch)

    assert sink.wait_for(50, timeout=5)
    assert [r.key for r in receipts] == [m.key for m in batch]
    assert {r.status for r in receipts} == {DeliveryStatus.DELIVERED}
    assert all(r.tries == 1 and r.error is None for r in receipts)
    ids = [r.provider_message_id for r in receipts]
    assert len(set(ids)) == 50
    assert ids == [message_id_for(m.key) for m in batch]
    received = sink.by_recipient()
    for sent, receipt in zip(batch, receipts, strict=True):
        address = sent.recipient.email
        assert address is not None
        [got] = received[address]
        assert got.rcpt_tos == (address,)
        assert got.mail_from == "security@example.com"
        assert got.subject == sent.content.subject
        assert got.to == f"{sent.recipient.name} <{address}>"
        assert got.message_id == receipt.provider_message_id
        assert got.header("X-Herald-Event") == ["evt-1"]
        assert got.header("MIME-Version") == ["1.0"]
        assert got.header("Date")
        assert got.text == sent.content.text
        assert got.html == sent.content.html


def test_message_id_is_the_same_for_the_same_delivery_key() -> None:
    key = DeliveryKey("evt-9", "r1", "email", 0)
    assert message_id_for(key) == message_id_for(DeliveryKey("evt-9", "r1", "email", 0))
    assert message_id_for(key) != message_id_for(DeliveryKey("evt-9", "r1", "email", 1))


def test_mime_is_built_once_per_content(sink: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[str] = []
    real_build = email_module.build_template

    def counting_build(content: Content, event_id: str, from_header: str) -> Any:
        builds.append(content.cache_key)
        return real_build(content, event_id, from_header)

    monkeypatch.setattr(email_module, "build_template", counting_build)
    batch = [message(n, EN if n % 2 else ZH) for n in range(40)]

    send(channel_for(sink.port), batch, batch)

    assert sorted(builds) == ["evt-1:en", "evt-1:zh-CN"]


def test_connections_are_reused_across_send_calls(sink: SmtpSink) -> None:
    channel = channel_for(sink.port, smtp_connections=2)

    first, second = send(channel, [message(n) for n in range(10)], [message(n) for n in range(10, 20)])

    assert sink.wait_for(20, timeout=5)
    assert {r.status for r in first + second} == {DeliveryStatus.DELIVERED}
    assert sink.connections == 2


def test_a_connection_lost_after_the_data_is_an_unknown_outcome_and_the_next_message_reconnects(
    sink: SmtpSink,
) -> None:
    """The server hung up after the whole message: it may have kept it, so it is not sent again now."""
    sink.drop_next_data(1)

    [receipts] = send(channel_for(sink.port, smtp_connections=1), [message(n) for n in range(3)])

    lost, *rest = receipts
    assert lost.status is DeliveryStatus.RETRYING and lost.tries == 1
    assert isinstance(lost.error, UnknownOutcomeError) and lost.error.code == "lost-after-data"
    assert lost.may_have_gone_out
    assert [r.status for r in rest] == [DeliveryStatus.DELIVERED] * 2
    assert sink.connections == 2
    assert sink.count == 2


class _TakesDataThenHangs:
    """An SMTP handler that counts each message it receives in full, then holds its reply past the timeout."""

    def __init__(self) -> None:
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received += 1  # the server's own loop: no lock needed
        await asyncio.sleep(1.0)
        return "250 too late"


def test_a_server_that_never_answers_the_final_dot_gets_the_message_once() -> None:
    """No reply within the timeout after the data: an unknown outcome, not retried, and the rest spared."""
    handler = _TakesDataThenHangs()
    server = Controller(handler, hostname="127.0.0.1", port=free_port())
    server.start()
    try:
        [receipts] = send(
            channel_for(server.port, smtp_timeout_s=0.2, smtp_tries=3, smtp_connections=1),
            [message(n) for n in range(3)],
        )
    finally:
        server.stop()

    silent, *spared = receipts
    assert silent.status is DeliveryStatus.RETRYING and silent.tries == 1
    assert isinstance(silent.error, UnknownOutcomeError) and silent.error.code == "no-reply-after-data"
    assert "timed out" in silent.error.message
    for receipt in spared:
        assert receipt.status is DeliveryStatus.RETRYING and receipt.tries == 0
        assert isinstance(receipt.error, TransientDeliveryError) and not receipt.error.outcome_unknown
        assert not receipt.may_have_gone_out
    assert handler.received == 1


def test_refused_recipients_fail_permanently_while_the_rest_are_delivered(sink: SmtpSink) -> None:
    sink.refuse(r"^gone\d+@")
    batch = [message(n, email=f"gone{n}@example.com" if n in (1, 4) else None) for n in range(6)]

    [receipts] = send(channel_for(sink.port), batch)

    for n, receipt in enumerate(receipts):
        if n in (1, 4):
            assert receipt.status is DeliveryStatus.FAILED
            assert isinstance(receipt.error, PermanentDeliveryError)
            assert receipt.error.code == "550"
            assert "Recipient address rejected: User unknown" in receipt.error.message
            assert "g***@example.com" in receipt.error.message
            assert f"gone{n}@" not in receipt.error.message
            assert receipt.tries == 1
        else:
            assert receipt.status is DeliveryStatus.DELIVERED
    assert sink.count == 4
    assert not any(a.startswith("gone") for a in sink.by_recipient())


def test_deferred_recipients_are_delivered_within_the_tries(sink: SmtpSink) -> None:
    sink.defer(r"^slow@", times=2, code=451)
    sink.defer(r"^stuck@", times=99, code=451)
    batch = [message(0, email="slow@example.com"), message(1, email="stuck@example.com"), message(2)]

    [receipts] = send(channel_for(sink.port, smtp_tries=3), batch)

    slow, stuck, plain = receipts
    assert slow.status is DeliveryStatus.DELIVERED and slow.tries == 3
    assert stuck.status is DeliveryStatus.RETRYING and stuck.tries == 3
    assert isinstance(stuck.error, TransientDeliveryError) and stuck.error.code == "451"
    assert plain.status is DeliveryStatus.DELIVERED and plain.tries == 1


def test_data_rejections_map_by_code(sink: SmtpSink) -> None:
    sink.fail_next_data(1, code=554)
    [[rejected]] = send(channel_for(sink.port, smtp_connections=1), [message(0)])
    sink.fail_next_data(1, code=451)
    [[retried]] = send(channel_for(sink.port, smtp_connections=1), [message(1)])

    assert rejected.status is DeliveryStatus.FAILED and rejected.error is not None
    assert rejected.error.code == "554" and rejected.tries == 1
    assert retried.status is DeliveryStatus.DELIVERED and retried.tries == 2


def test_a_server_that_is_not_listening_gives_transient_receipts() -> None:
    batch = [message(n) for n in range(5)]
    started = time.monotonic()

    [receipts] = send(channel_for(free_port(), smtp_connections=2), batch)

    assert time.monotonic() - started < 5
    assert [r.key for r in receipts] == [m.key for m in batch]
    assert {r.status for r in receipts} == {DeliveryStatus.RETRYING}
    assert all(isinstance(r.error, TransientDeliveryError) and r.error.code is None for r in receipts)
    tried = [r for r in receipts if r.tries]
    assert tried and all(r.tries == 3 for r in tried)
    assert all(r.detail.get("skipped") for r in receipts if not r.tries)


def test_a_slow_server_times_out_as_transient(sink: SmtpSink) -> None:
    sink.latency(1.0)

    [[receipt]] = send(channel_for(sink.port, smtp_timeout_s=0.2, smtp_tries=1), [message(0)])

    assert receipt.status is DeliveryStatus.RETRYING
    assert isinstance(receipt.error, TransientDeliveryError)
    assert "timed out" in receipt.error.message


def test_a_recipient_without_email_fails_without_a_network_call(sink: SmtpSink) -> None:
    [receipts] = send(channel_for(sink.port), [message(0, email=""), message(1, email="bad address@x")])

    assert [r.status for r in receipts] == [DeliveryStatus.FAILED, DeliveryStatus.FAILED]
    assert all(isinstance(r.error, PermanentDeliveryError) and r.tries == 0 for r in receipts)
    assert receipts[0].error is not None and receipts[0].error.message == "recipient has no email address"
    assert sink.connections == 0 and sink.count == 0


def test_a_non_ascii_display_name_is_rfc2047_encoded(sink: SmtpSink) -> None:
    [receipts] = send(channel_for(sink.port), [message(0, ZH, name="张三 (Zhang San)", email="zhang@example.com")])

    assert receipts[0].status is DeliveryStatus.DELIVERED
    [got] = sink.messages
    assert parseaddr(got.to) == ("张三 (Zhang San)", "zhang@example.com")
    head = got.raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert b"\r\nTo: =?utf-8?" in head


def test_crlf_in_subject_or_name_cannot_inject_a_header(sink: SmtpSink) -> None:
    hostile = Content(cache_key="evt-2:en", locale="en", subject="Hello\r\nBcc: x@y", text="body\n", html=None)
    batch = [message(0, hostile, email="victim@example.com", name="Eve\r\nCc: z@y", event_id="evt-2")]

    [receipts] = send(channel_for(sink.port), batch)

    assert receipts[0].status is DeliveryStatus.DELIVERED
    assert sink.wait_for(1)
    [got] = sink.messages
    assert got.rcpt_tos == ("victim@example.com",)
    assert got.header("Bcc") == [] and got.header("Cc") == []
    assert got.subject == "Hello Bcc: x@y"
    assert "victim@example.com" in got.to
    assert list(sink.by_recipient()) == ["victim@example.com"]
    assert got.html is None and got.text == "body\n"


def test_login_is_used_and_a_rejected_login_is_permanent() -> None:
    with SmtpSink(port=0, credentials=("herald", "s3cret")) as auth_sink:
        ok = channel_for(auth_sink.port, smtp_username="herald", smtp_password=SecretStr("s3cret"))
        bad = channel_for(auth_sink.port, smtp_username="herald", smtp_password=SecretStr("wrong"))

        [[delivered]] = send(ok, [message(0)])
        [refused] = send(bad, [message(n) for n in range(1, 6)])

    assert delivered.status is DeliveryStatus.DELIVERED
    assert {r.status for r in refused} == {DeliveryStatus.FAILED}
    assert all(isinstance(r.error, PermanentDeliveryError) and r.error.code == "535" for r in refused)
    assert sum(r.tries for r in refused) <= 4  # one failed login per connection, not one per message
    assert auth_sink.count == 1


def test_content_that_cannot_be_encoded_fails_only_its_own_message(sink: SmtpSink) -> None:
    broken = Content(cache_key="evt-3:en", locale="en", subject="Hi", text="bad \udc80 surrogate\n")

    [receipts] = send(channel_for(sink.port), [message(0, broken, event_id="evt-3"), message(1)])

    assert receipts[0].status is DeliveryStatus.FAILED and receipts[0].tries == 0
    assert isinstance(receipts[0].error, PermanentDeliveryError)
    assert receipts[1].status is DeliveryStatus.DELIVERED
