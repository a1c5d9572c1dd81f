"""A failure that belongs to one recipient is recorded against them and never stops the others."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from support import Pipeline, incident, people

from worker.config import Settings
from worker.delivery.rendering import Renderer
from worker.sandbox.smtp_sink import SmtpSink


def test_a_notice_that_cannot_be_rendered_for_one_person_fails_them_alone(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_render = Renderer.render

    def render(self: Renderer, event: Any, channel: str, locale: str, time_zone: str | None = None) -> Any:
        if locale == "fr":  # a fault no shipped template has: injected for one person's locale
            raise OverflowError("date value out of range")
        return real_render(self, event, channel, locale, time_zone)

    monkeypatch.setattr(Renderer, "render", render)
    crowd = people(6)
    crowd[2]["locale"] = "fr"
    event = incident(crowd)
    with Pipeline(make_settings()) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]], timeout=60)
        counts = pipeline.counts(event["event_id"])
        rows = pipeline.ledger_rows(event["event_id"])
    assert counts[("email", "delivered")] == 5 and counts[("email", "failed")] == 1
    (failed,) = [r for r in rows if r.channel == "email" and r.status == "failed"]
    assert failed.error_code == "render"
    assert failed.reason == "the notice could not be rendered: OverflowError: date value out of range"
    assert len(smtp_sink.messages) == 5
