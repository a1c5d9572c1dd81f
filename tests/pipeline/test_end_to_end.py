"""Given a security incident for many people, when herald runs, then everyone gets an email
in their own language and a station letter, and the ledger holds a terminal row for each."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable

from support import Pipeline, incident, people

from worker.config import Settings
from worker.delivery.rendering import Renderer
from worker.intake.events import parse_event
from worker.sandbox.smtp_sink import SmtpSink
from worker.store.inbox import letter_count

CJK = re.compile(r"[\u4e00-\u9fff]")


def test_incident_reaches_200_people_by_email_and_station_letter(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink
) -> None:
    settings = make_settings()
    event = incident(people(200))
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]], timeout=120)

        assert pipeline.counts(event["event_id"]) == {
            ("email", "delivered"): 200,
            ("insite", "delivered"): 200,
        }
        rows = pipeline.ledger_rows(event["event_id"])
        assert len(rows) == 400
        assert {row.status for row in rows} == {"delivered"}
        with pipeline.engine.connect() as conn:
            assert letter_count(conn, event["event_id"]) == 200

    renderer = Renderer(settings.templates_dir)
    parsed = parse_event(event, max_bytes=settings.max_event_bytes)
    expected = {loc: renderer.render(parsed, "email", loc) for loc in ("en", "zh-CN")}
    locale_of = {p["email"]: p["locale"] for p in event["data"]["audience"]["recipients"]}

    assert smtp_sink.wait_for(200, timeout=10)
    received = smtp_sink.messages
    assert Counter(addr for m in received for addr in m.rcpt_tos) == Counter(list(locale_of))
    for message in received:
        (address,) = message.rcpt_tos
        content = expected[locale_of[address]]
        assert message.subject == content.subject
        assert message.text.strip() == content.text.strip()
        assert bool(CJK.search(message.subject)) is (locale_of[address] == "zh-CN")
    assert len({m.message_id for m in received}) == 200
