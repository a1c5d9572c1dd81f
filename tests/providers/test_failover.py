"""Backup providers: what one provider fails to send, the next sends, and the failing one rests.

Real parts only: aiosmtpd relays (SmtpSink), Twilio sandboxes spoken to by the real twilio
client over HTTP, and the test Redis holding the cooldowns.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, create_engine

from channels import check_providers, create_channel, provider_settings
from channels.base import Channel, ReportsBack
from channels.email import EmailChannel
from channels.failover import FailoverChannel
from worker.config import Settings
from worker.core.errors import ConfigurationError, DeliveryError
from worker.core.messages import Content, DeliveryKey, OutboundMessage, Receipt, Recipient
from worker.core.statuses import DeliveryStatus
from worker.sandbox.smtp_sink import SmtpSink
from worker.sandbox.twilio import TwilioSandbox
from worker.service.serving import free_port

CONTENT = Content(cache_key="evt-f:en", locale="en", subject="Security notice", text="We reset your sessions.\n")
SMS = Content(cache_key="evt-f:sms", locale="en", subject="", text="Security notice: we reset your sessions.")


def mails(count: int, start: int = 0) -> list[OutboundMessage]:
    return [mail(n) for n in range(start, start + count)]


def mail(n: int, address: str | None = None) -> OutboundMessage:
    ref = f"r{n:04d}"
    recipient = Recipient(ref=ref, user_id=f"u{n}", email=address or f"user{n}@example.com")
    return OutboundMessage(DeliveryKey("evt-f", ref, "email"), recipient, CONTENT)


def texts(count: int) -> list[OutboundMessage]:
    people = [Recipient(ref=f"s{n:04d}", user_id=f"s{n}", phone=f"+1415555{n:04d}") for n in range(count)]
    return [OutboundMessage(DeliveryKey("evt-f", p.ref, "sms"), p, SMS) for p in people]


@pytest.fixture
def settings_for(tmp_path: Path, redis_url: str) -> Callable[..., Settings]:
    """Settings on the test Redis with a namespace of their own; keywords override any field."""
    namespace = f"herald-test-{uuid.uuid4().hex[:8]}"

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "broker_url": redis_url,
            "broker_namespace": namespace,
            "smtp_host": "127.0.0.1",
            "smtp_timeout_s": 2.0,
            "smtp_tries": 2,
            "smtp_connections": 2,
        }
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def engine() -> Iterator[Engine]:
    """An engine for the registry's signature; email and SMS never touch it."""
    made = create_engine("sqlite://")
    yield made
    made.dispose()


@pytest.fixture
def rdb(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def cooldown_key(settings: Settings, channel: str, provider: str) -> str:
    return f"{settings.broker_namespace}:cooldown:{channel}:{provider}"


def backup_relay(sink: SmtpSink) -> dict[str, dict[str, Any]]:
    return {"relay-2": {"smtp_host": sink.host, "smtp_port": sink.port}}


def run(channel: Channel, scenario: Callable[[], Any]) -> Any:
    """Run ``scenario`` on one event loop, closing the channel on it afterwards."""

    async def main() -> Any:
        try:
            return await scenario()
        finally:
            await channel.aclose()

    return asyncio.run(main())


# --- email: one relay down ------------------------------------------------------------------


def test_a_relay_that_is_down_hands_its_mail_to_the_backup_and_rests_for_the_cooldown(
    settings_for: Callable[..., Settings], engine: Engine, smtp_sink: SmtpSink, rdb: redis.Redis
) -> None:
    # Given a primary relay nobody listens on and a backup relay that works
    down = free_port()
    settings = settings_for(smtp_port=down, providers=backup_relay(smtp_sink))
    channel = create_channel("email", settings, engine, providers=("primary", "relay-2"), cooldown_s=1.5)
    key = cooldown_key(settings, "email", "primary")
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        # When a batch is sent
        seen["first"] = await channel.send(mails(5))
        seen["first_ttl_ms"] = rdb.pttl(key)
        # and the primary comes back while it is still resting
        with SmtpSink(port=down) as primary:
            primary.clear()
            seen["ttl_before_second_ms"] = rdb.pttl(key)
            seen["second"] = await channel.send(mails(3, start=5))
            seen["during"] = (primary.count, primary.connections)
            deadline = time.monotonic() + 5
            while rdb.exists(key) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            # then, once the cooldown is over, the primary is used again
            seen["third"] = await channel.send(mails(2, start=8))
            seen["after"] = sorted(rcpt for m in primary.messages for rcpt in m.rcpt_tos)

    run(channel, scenario)

    first: list[Receipt] = seen["first"]
    assert [r.status for r in first] == [DeliveryStatus.DELIVERED] * 5
    assert {r.detail["provider"] for r in first} == {"relay-2"}
    assert {r.detail.get("failed_over") for r in first} == {"primary"}
    assert 0 < seen["first_ttl_ms"] <= 1500, "the primary rests in Redis, with an expiry"
    assert seen["ttl_before_second_ms"] > 0, "the machine was too slow to send within the cooldown"

    second: list[Receipt] = seen["second"]
    assert [r.status for r in second] == [DeliveryStatus.DELIVERED] * 3
    assert {r.detail["provider"] for r in second} == {"relay-2"}
    assert all("failed_over" not in r.detail for r in second), "the resting primary was not tried"
    assert seen["during"] == (0, 0), "no connection to the primary while it rests"

    third: list[Receipt] = seen["third"]
    assert [r.status for r in third] == [DeliveryStatus.DELIVERED] * 2
    assert {r.detail["provider"] for r in third} == {"primary"}
    assert seen["after"] == ["user8@example.com", "user9@example.com"]
    backup = sorted(rcpt for m in smtp_sink.messages for rcpt in m.rcpt_tos)
    assert backup == sorted(f"user{n}@example.com" for n in range(8))


def test_a_recipient_the_primary_refuses_is_not_tried_on_the_backup(
    settings_for: Callable[..., Settings], engine: Engine, smtp_sink: SmtpSink, rdb: redis.Redis
) -> None:
    # Given a primary relay that refuses one mailbox with 550, and a backup relay
    smtp_sink.refuse(r"^gone@")
    with SmtpSink(port=0) as backup:
        settings = settings_for(smtp_port=smtp_sink.port, providers=backup_relay(backup))
        channel = create_channel("email", settings, engine, providers=("primary", "relay-2"))

        # When a batch with that mailbox is sent
        batch = [mail(0), mail(1, "gone@example.com"), mail(2)]
        receipts: list[Receipt] = run(channel, lambda: channel.send(batch))

        # Then the refusal is final, the backup is never asked and the primary does not rest
        ok, refused, ok2 = receipts
        assert ok.status is ok2.status is DeliveryStatus.DELIVERED
        assert refused.status is DeliveryStatus.FAILED
        assert refused.error is not None and refused.error.code == "550" and not refused.error.provider
        assert {r.detail["provider"] for r in receipts} == {"primary"}
        assert (backup.count, backup.connections) == (0, 0)
    assert rdb.exists(cooldown_key(settings, "email", "primary")) == 0


def test_with_both_relays_down_receipts_are_transient_provider_faults_and_resting_relays_are_still_tried(
    settings_for: Callable[..., Settings], engine: Engine, rdb: redis.Redis
) -> None:
    settings = settings_for(smtp_port=free_port(), providers={"relay-2": {"smtp_port": free_port()}})
    channel = create_channel("email", settings, engine, providers=("primary", "relay-2"), cooldown_s=30)
    primary_key = cooldown_key(settings, "email", "primary")
    backup_key = cooldown_key(settings, "email", "relay-2")
    seen: dict[str, Any] = {}

    async def scenario() -> None:
        seen["first"] = await channel.send(mails(4))
        seen["resting"] = (rdb.pttl(primary_key), rdb.pttl(backup_key))
        # The primary now rests longer than the backup: the backup, sooner back, goes first.
        rdb.pexpire(primary_key, 60_000)
        seen["second"] = await channel.send(mails(2, start=4))

    run(channel, scenario)

    first: list[Receipt] = seen["first"]
    assert [r.status for r in first] == [DeliveryStatus.RETRYING] * 4
    assert all(isinstance(r.error, DeliveryError) and r.error.transient and r.error.provider for r in first)
    assert {(r.detail["provider"], r.detail["failed_over"]) for r in first} == {("relay-2", "primary")}
    assert all(ttl > 0 for ttl in seen["resting"]), "both relays rest"

    second: list[Receipt] = seen["second"]
    assert [r.status for r in second] == [DeliveryStatus.RETRYING] * 2, "resting relays are tried, not skipped"
    assert {(r.detail["provider"], r.detail["failed_over"]) for r in second} == {("primary", "relay-2")}


def test_an_unreachable_redis_does_not_stop_sending(
    settings_for: Callable[..., Settings], engine: Engine, smtp_sink: SmtpSink, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a Redis URL nobody answers on, a primary relay that is down and a backup that works
    settings = settings_for(
        broker_url=f"redis://127.0.0.1:{free_port()}/0", smtp_port=free_port(), providers=backup_relay(smtp_sink)
    )
    channel = create_channel("email", settings, engine, providers=("primary", "relay-2"))

    async def scenario() -> tuple[list[Receipt], list[Receipt]]:
        return await channel.send(mails(3)), await channel.send(mails(3, start=3))

    with caplog.at_level(logging.WARNING, logger="herald.failover"):
        first, second = run(channel, scenario)

    # Then every message still goes out, and the missing cooldowns are reported once
    for receipts in (first, second):
        assert [r.status for r in receipts] == [DeliveryStatus.DELIVERED] * 3
        assert {r.detail["provider"] for r in receipts} == {"relay-2"}
    assert smtp_sink.count == 6
    unavailable = [r for r in caplog.records if "cooldowns unavailable" in r.getMessage()]
    assert len(unavailable) == 1


# --- SMS: one Twilio account failing ----------------------------------------------------------


def test_sms_go_out_through_the_backup_account_which_also_answers_for_its_messages(
    settings_for: Callable[..., Settings], engine: Engine, rdb: redis.Redis
) -> None:
    # Given a primary Twilio answering 500 to every create, and a backup Twilio that works
    with (
        TwilioSandbox(faults={"rate_500": 1.0}, callback_retries=0) as primary,
        TwilioSandbox(callback_retries=0) as backup,
    ):
        settings = settings_for(
            twilio_base_url=primary.url,
            twilio_tries=2,
            public_url=f"http://127.0.0.1:{free_port()}",
            sms_rate_per_second=500.0,
            providers={"twilio-2": {"twilio_base_url": backup.url}},
        )
        channel = create_channel("sms", settings, engine, providers=("primary", "twilio-2"))
        assert isinstance(channel, ReportsBack)
        primary_key = cooldown_key(settings, "sms", "primary")
        seen: dict[str, Any] = {}

        async def scenario() -> None:
            seen["receipts"] = receipts = await channel.send(texts(4))
            seen["rested"] = rdb.exists(primary_key)
            sid = str(receipts[0].provider_message_id)
            assert backup.wait_for(lambda sb: all(m.status == "delivered" for m in sb.messages), timeout=10)
            rdb.delete(primary_key)  # so the primary, which never saw this SID, is asked first
            assert isinstance(channel, ReportsBack)
            seen["verdict"] = await channel.fetch_verdict(sid)
            try:
                await channel.fetch_verdict("SM" + "f" * 32)
            except DeliveryError as error:
                seen["unknown"] = error

        run(channel, scenario)

    receipts: list[Receipt] = seen["receipts"]
    assert [r.status for r in receipts] == [DeliveryStatus.SENT] * 4
    assert {r.detail["provider"] for r in receipts} == {"twilio-2"}
    assert all(r.tries == 3 for r in receipts), "two refused tries on the primary, one on the backup"
    assert sorted(m.to for m in backup.messages) == sorted(str(m.recipient.phone) for m in texts(4))
    assert primary.messages == [] and {r.status_code for r in primary.requests} == {500}
    assert seen["rested"] == 1
    assert seen["verdict"] == (DeliveryStatus.DELIVERED, None)
    assert seen["unknown"].code == "20404"


def test_an_sms_whose_outcome_is_unknown_is_not_sent_again_through_the_backup(
    settings_for: Callable[..., Settings], engine: Engine, rdb: redis.Redis
) -> None:
    # Given a primary Twilio that takes every SMS but answers ``{}``, and a backup that works
    with (
        TwilioSandbox(faults={"rate_unreadable": 1.0, "unreadable_body": "empty-json"}, callback_retries=0) as primary,
        TwilioSandbox(callback_retries=0) as backup,
    ):
        settings = settings_for(
            twilio_base_url=primary.url,
            public_url=f"http://127.0.0.1:{free_port()}",
            sms_rate_per_second=500.0,
            providers={"twilio-2": {"twilio_base_url": backup.url}},
        )
        channel = create_channel("sms", settings, engine, providers=("primary", "twilio-2"))
        receipts: list[Receipt] = run(channel, lambda: channel.send(texts(3)))
        rested = rdb.exists(cooldown_key(settings, "sms", "primary"))

    # Then each went out once, through the primary only, and comes back as an unknown outcome
    assert len(primary.messages) == 3 and backup.requests == []
    assert [r.status for r in receipts] == [DeliveryStatus.RETRYING] * 3
    assert all(r.error is not None and r.error.outcome_unknown for r in receipts)
    assert all(r.may_have_gone_out and r.provider_message_id is None and r.tries == 1 for r in receipts)
    assert {r.detail["provider"] for r in receipts} == {"primary"}
    assert rested == 1, "the misbehaving provider still rests"


def test_email_over_several_relays_does_not_claim_to_report_back(
    settings_for: Callable[..., Settings], engine: Engine, smtp_sink: SmtpSink
) -> None:
    settings = settings_for(providers=backup_relay(smtp_sink))
    plain = create_channel("email", settings, engine)
    several = create_channel("email", settings, engine, providers=("primary", "relay-2"))
    assert type(plain) is EmailChannel, "the primary alone is the plain channel, no wrapper"
    assert isinstance(several, FailoverChannel) and not isinstance(several, ReportsBack)
    assert several.channel == "email" and list(several.providers) == ["primary", "relay-2"]


# --- start-up checks ------------------------------------------------------------------------

PROFILES: dict[str, dict[str, Any]] = {
    "relay-2": {"smtp_host": "mx2.example.net", "smtp_port": "2525", "smtp_password": "pw-relay-2"},
    "twilio-2": {"twilio_account_sid": "AC" + "2" * 32, "twilio_auth_token": "tok-2", "sms_rate_per_second": 5},
    "typo": {"smtp_hots": "mx3.example.net"},
    "leaky": {"smtp_password": "pw-leaky", "smtp_timeout_s": -1},
    "bad-port": {"smtp_port": "seventy"},
    "huge-port": {"smtp_port": 70_000},
}


@pytest.mark.parametrize(
    ("channel", "providers", "problem"),
    [
        ("email", ("primary", "relay-9"), "'relay-9' of channel 'email' is not in HERALD_PROVIDERS"),
        ("email", ("primary", "typo"), "unknown setting 'smtp_hots'"),
        ("email", ("primary", "twilio-2"), "'twilio_account_sid' is not a setting of the email channel"),
        ("sms", ("primary", "relay-2"), "'smtp_host' is not a setting of the sms channel"),
        ("phone", ("relay-2",), "'smtp_host' is not a setting of the phone channel"),
        ("insite", ("primary", "relay-2"), "channel 'insite' takes no backup providers"),
        ("email", ("primary", "bad-port"), "'bad-port': smtp_port: Input should be a valid integer"),
        ("email", ("primary", "huge-port"), "'huge-port': smtp_port: Input should be less than or equal to 65535"),
        ("email", ("primary", "leaky"), "'leaky': smtp_timeout_s: Input should be greater than 0"),
        ("email", ("primary", "primary"), "lists a provider twice"),
        ("email", (), "needs at least one provider"),
        ("fax", ("primary",), "unknown channel 'fax'"),
    ],
)
def test_a_wrong_provider_fails_at_start_up_with_one_line(
    channel: str, providers: tuple[str, ...], problem: str
) -> None:
    settings = Settings(providers=PROFILES)
    with pytest.raises(ConfigurationError) as caught:
        check_providers(settings, channel, providers)
    message = str(caught.value)
    assert problem in message
    assert "\n" not in message and "pw-" not in message


@pytest.mark.parametrize(
    ("channel", "providers"),
    [
        ("email", ("primary",)),
        ("email", ("primary", "relay-2")),
        ("email", ("relay-2", "primary")),
        ("sms", ("primary", "twilio-2")),
        ("phone", ("twilio-2",)),
        ("insite", ("primary",)),
    ],
)
def test_good_providers_pass(channel: str, providers: tuple[str, ...]) -> None:
    check_providers(Settings(providers=PROFILES), channel, providers)


def test_a_profile_is_laid_over_the_primary_settings_with_types_coerced() -> None:
    settings = Settings(smtp_from="herald <a@example.org>", smtp_tries=5, providers=PROFILES)

    relay = provider_settings(settings, "email", "relay-2")

    assert (relay.smtp_host, relay.smtp_port) == ("mx2.example.net", 2525)
    assert relay.smtp_password.get_secret_value() == "pw-relay-2"
    assert (relay.smtp_from, relay.smtp_tries) == ("herald <a@example.org>", 5), "the rest is the primary's"
    assert provider_settings(settings, "email", "primary") is settings
    twilio = provider_settings(settings, "sms", "twilio-2")
    assert twilio.twilio_auth_token.get_secret_value() == "tok-2" and twilio.sms_rate_per_second == 5.0
