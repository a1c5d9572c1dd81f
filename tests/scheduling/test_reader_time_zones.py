"""A policy notice states the effective date in the reader's own time zone, daylight saving
included; readers who gave no zone see their locale's (zh-CN: Asia/Shanghai) or UTC."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from support import Pipeline

from worker.config import Settings
from worker.delivery.rendering import Renderer, format_local
from worker.intake.events import validate_event
from worker.sandbox.smtp_sink import SmtpSink
from worker.schedule.scheduler import Scheduler


def change_at(effective: datetime, recipients: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "event_id": f"pc-dst-{effective:%Y%m%d%H%M}",
        "type": "policy_change",
        "occurred_at": "2027-01-01T00:00:00+00:00",
        "source": "legal",
        "data": {
            "document": "terms_of_service",
            "version": "2027-03",
            "title": "New rules for shared accounts",
            "summary_of_changes": "Accounts may be shared within one household.",
            "url": "https://www.example.com/legal/terms",
            "substantial": True,
            "effective_at": effective.isoformat(),
            "audience": {"recipients": recipients or [{"user_id": "u1", "email": "u1@example.com"}]},
        },
    }


@pytest.mark.parametrize(
    ("moment", "zone", "shown"),
    [
        # New York springs forward at 07:00 UTC on 14 March 2027 (02:00 EST becomes 03:00 EDT).
        ("2027-03-14T06:30:00+00:00", "America/New_York", "2027-03-14 01:30 (UTC-05:00, America/New_York)"),
        ("2027-03-14T07:30:00+00:00", "America/New_York", "2027-03-14 03:30 (UTC-04:00, America/New_York)"),
        # Berlin falls back at 01:00 UTC on 31 October 2027 (03:00 CEST becomes 02:00 CET).
        ("2027-10-31T00:30:00+00:00", "Europe/Berlin", "2027-10-31 02:30 (UTC+02:00, Europe/Berlin)"),
        ("2027-10-31T01:30:00+00:00", "Europe/Berlin", "2027-10-31 02:30 (UTC+01:00, Europe/Berlin)"),
        # A date line: late evening UTC is the next morning in Shanghai.
        ("2027-03-14T20:00:00+00:00", "Asia/Shanghai", "2027-03-15 04:00 (UTC+08:00, Asia/Shanghai)"),
        ("2027-03-14T20:00:00+00:00", "UTC", "2027-03-14 20:00 UTC"),
        ("2027-03-14T20:00:00+00:00", "Not/AZone", "2027-03-14 20:00 UTC"),
    ],
)
def test_local_times_across_daylight_saving_boundaries(moment: str, zone: str, shown: str) -> None:
    assert format_local(datetime.fromisoformat(moment), zone) == shown


@pytest.mark.parametrize("channel", ["email", "insite", "sms", "announcement"])
def test_every_policy_template_shows_the_effective_time_in_the_readers_zone(
    make_settings: Callable[..., Settings], channel: str
) -> None:
    renderer = Renderer(make_settings().templates_dir)
    event = validate_event(change_at(datetime(2027, 3, 14, 7, 30, tzinfo=UTC)), rules=None)
    new_york = renderer.render(event, channel, "en", "America/New_York")
    shanghai = renderer.render(event, channel, "zh-CN", "Asia/Shanghai")
    assert "2027-03-14 03:30 (UTC-04:00, America/New_York)" in new_york.text
    assert "2027-03-14 15:30 (UTC+08:00, Asia/Shanghai)" in shanghai.text
    assert "《服务条款》" in shanghai.text and "Terms of Service" in new_york.text
    # Words are shared per zone, not per person: the same zone renders once.
    assert renderer.render(event, channel, "en", "America/New_York") is new_york


def test_each_reader_is_emailed_the_time_in_their_own_zone(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink
) -> None:
    settings = make_settings()
    effective = datetime.now(UTC).replace(microsecond=0) + timedelta(days=10)
    readers = [
        {"user_id": "ny", "email": "ny@example.com", "locale": "en", "time_zone": "America/New_York"},
        {"user_id": "sh", "email": "sh@example.com", "locale": "zh-CN"},  # no zone: the locale's
        {"user_id": "bad", "email": "bad@example.com", "locale": "en", "time_zone": "Mars/Olympus"},
    ]
    event = change_at(effective, readers)
    event["occurred_at"] = datetime.now(UTC).isoformat()
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        deadline = datetime.now(UTC) + timedelta(seconds=30)
        scheduler = Scheduler(settings, pipeline.engine, pipeline.broker)
        while not scheduler.tick().enqueued:
            assert datetime.now(UTC) < deadline
        pipeline.wait_terminal([event["event_id"]], timeout=60)
    by_address = {m.rcpt_tos[0]: m.text or "" for m in smtp_sink.messages}
    assert format_local(effective, "America/New_York") in by_address["ny@example.com"]
    assert format_local(effective, "Asia/Shanghai") in by_address["sh@example.com"]
    assert effective.strftime("%Y-%m-%d %H:%M UTC") in by_address["bad@example.com"]
