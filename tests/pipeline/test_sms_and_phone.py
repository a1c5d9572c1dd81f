"""SMS and phone calls end to end: herald's twilio client → the Twilio sandbox over HTTP →
signed callbacks → `herald serve` → the ledger."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support import Pipeline, Rig, every_type_at_once, incident, phones, start_workers, stop_workers, write_routing

from worker.config import Settings
from worker.delivery.rendering import Renderer
from worker.intake.events import parse_event
from worker.sandbox.twilio import TwilioSandbox
from worker.service.serving import free_port

SID = "AC" + "1" * 32
TOKEN = "pipeline-test-token"


@pytest.fixture
def twilio(rig: Rig, tmp_path: Path) -> Rig:
    """The Twilio sandbox and herald's callback app; every notice goes out on every enabled
    channel at once (these tests are about the channels, not routing)."""
    rig.defaults.update(
        channels=("insite", "sms", "phone"),
        routing_file=write_routing(tmp_path, every_type_at_once("[sms, phone]")),
        sweep_interval_s=30.0,
    )
    return rig


def test_sms_and_calls_reach_100_people_and_callbacks_settle_the_ledger(twilio: Rig) -> None:
    settings = twilio.settings()
    event = incident(phones(100), severity="critical")
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]], timeout=120)
        counts = pipeline.counts(event["event_id"])
        rows = pipeline.ledger_rows(event["event_id"])
    assert counts == {("sms", "delivered"): 100, ("phone", "acknowledged"): 100}

    renderer = Renderer(settings.templates_dir, sms_max_segments=settings.sms_max_segments)
    parsed = parse_event(event, max_bytes=settings.max_event_bytes)
    locale_of = {p["phone"]: p["locale"] for p in phones(100)}
    sandbox = twilio.sandbox
    assert sorted(m.to for m in sandbox.messages) == sorted(locale_of)
    for message in sandbox.messages:
        assert message.from_ == settings.twilio_from
        assert message.body == renderer.render(parsed, "sms", locale_of[message.to]).text
        assert (message.status_callback or "").startswith(f"{settings.public_url}/twilio/status?event=")
    assert sorted(c.to for c in sandbox.calls) == sorted(locale_of)
    for call in sandbox.calls:
        assert call.twiml is not None and "<Gather" in call.twiml and "<Say" in call.twiml
        assert (call.status_callback or "").startswith(f"{settings.public_url}/twilio/voice-status?event=")
        assert parsed.data.title not in (call.url or "")  # the alert text never travels in a URL
    assert all(cb.ok for cb in sandbox.callbacks)

    sms_rows = [r for r in rows if r.channel == "sms"]
    assert {r.status for r in sms_rows} == {"sent", "delivered"}
    assert all(r.segments and 1 <= r.segments <= 3 for r in sms_rows if r.status == "sent")
    assert {r.status for r in rows if r.channel == "phone"} == {"sent", "acknowledged"}


def test_invalid_numbers_never_reach_twilio_and_unsubscribed_ones_fail_permanently(twilio: Rig) -> None:
    good = phones(4)
    people = [
        *good,
        {"user_id": "bad1", "phone": "12345", "locale": "en"},
        {"user_id": "landline", "phone": "+442079460958", "locale": "en"},
        {"user_id": "stop", "phone": "+14155550999", "locale": "en"},
    ]
    twilio.sandbox.set_faults(fail_numbers={"+14155550999": 21610})
    event = incident(people)
    with Pipeline(twilio.settings(channels=("insite", "sms"))) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]], timeout=60)
        rows = {r.recipient_ref: r for r in pipeline.ledger_rows(event["event_id"]) if r.status == "failed"}
        counts = pipeline.counts(event["event_id"])
    assert counts == {("sms", "delivered"): 4, ("sms", "failed"): 3}
    asked = {r.to for r in twilio.sandbox.messages} | {
        str(r.to) for r in twilio.sandbox.requests if getattr(r, "to", None)
    }
    assert "12345" not in asked and "+442079460958" not in asked
    reasons = sorted((r.error_code, r.reason) for r in rows.values())
    assert ("21610", "recipient has unsubscribed (replied STOP)") in reasons
    assert any(code == "not-mobile" for code, _ in reasons)
    assert any(code == "invalid-contact" for code, _ in reasons)


def test_429_and_500_answers_are_retried_until_every_sms_is_delivered(twilio: Rig) -> None:
    twilio.sandbox.set_faults(rate_429=0.3, rate_500=0.1, seed=7)
    event = incident(phones(60))
    with Pipeline(twilio.settings(channels=("insite", "sms"))) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]], timeout=120)
        counts = pipeline.counts(event["event_id"])
        rows = pipeline.ledger_rows(event["event_id"])
    assert counts == {("sms", "delivered"): 60}
    refused = [r for r in twilio.sandbox.requests if r.status_code in (429, 500)]
    assert refused, "the fault injection should have refused some requests"
    retried = [r for r in rows if r.tries > 1 or r.status == "retrying"]
    assert retried, "retries must be visible in the ledger"
    # Every refused request is on the ledger: as an extra try of the attempt that then got
    # through, or as one of the tries of an attempt that ended "retrying".
    ledgered = sum(r.tries - 1 for r in rows if r.status == "sent") + sum(
        r.tries for r in rows if r.status == "retrying"
    )
    assert ledgered == len(refused)


def test_the_sms_rate_limit_holds_across_worker_processes(twilio: Rig, tmp_path: Path) -> None:
    limit = 10
    event = incident(phones(60))
    settings = twilio.settings(channels=("insite", "sms"), sms_rate_per_second=float(limit), batch_size=10)
    watcher = Pipeline(settings, threads=1)  # publishes and watches; two worker processes do the sending
    workers = start_workers(settings, tmp_path / "workers.log", processes=2, threads=2)
    try:
        watcher.publish(event)
        watcher.wait_terminal([event["event_id"]], timeout=120)
    finally:
        stop_workers(workers)
        watcher.broker.close()
        watcher.engine.dispose()
    busiest = twilio.sandbox.max_in_window(1.0)
    print(f"\nrate limit {limit}/s: at most {busiest} requests in any one-second window")
    assert len(twilio.sandbox.messages) == 60
    # The limiter keeps every sliding second at or under the limit when requests leave herald;
    # the sandbox stamps them on arrival, so scheduling jitter on a shared machine may add a little.
    assert busiest <= limit * 1.2, f"{busiest} requests in one second with a limit of {limit}/s"
    assert twilio.sandbox.max_in_window(3.0) <= limit * 3 + 1


def test_when_callbacks_never_arrive_herald_asks_twilio_and_every_delivery_ends_terminal(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """herald serve is down: no callback lands, yet nothing stays "sent" for ever."""
    unreachable = f"http://127.0.0.1:{free_port()}"
    with TwilioSandbox(account_sid=SID, auth_token=TOKEN, callback_retries=0) as sandbox:
        settings = make_settings(
            channels=("insite", "sms", "phone"),
            routing_file=write_routing(tmp_path, every_type_at_once("[sms, phone]")),
            twilio_account_sid=SID,
            twilio_auth_token=TOKEN,
            twilio_base_url=sandbox.url,
            public_url=unreachable,
            sms_rate_per_second=500.0,
            phone_rate_per_second=500.0,
            confirmation_grace_s=1.0,
        )
        event = incident(phones(10))
        with Pipeline(settings) as pipeline:
            pipeline.publish(event)
            pipeline.wait_terminal([event["event_id"]], timeout=90)
            counts = pipeline.counts(event["event_id"])
            rows = pipeline.ledger_rows(event["event_id"])
        assert sandbox.callbacks and not any(cb.ok for cb in sandbox.callbacks)
    # The carrier said "delivered" to Twilio; herald learnt it by asking.
    assert counts[("sms", "delivered")] == 10
    # Nobody could press 1 through a dead callback URL: the calls ended unconfirmed.
    assert counts[("phone", "failed")] == 10
    assert {r.error_code for r in rows if r.channel == "phone" and r.status == "failed"} == {"no-confirmation"}
