"""Given a 300-recipient critical incident where the SMTP server refuses 40 addresses, the
sandbox fails 30 numbers and 20 people have no contact at all, when herald runs, then each
of them is handed down the chain exactly once per stage, those with nothing left are
covered by the one announcement, whose page and feeds exist and validate, and every one of
the 300 ends with exactly one terminal outcome."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import feedparser
import httpx
from sqlalchemy import select
from support import SEQUENTIAL, Pipeline, Rig, incident, write_routing

from worker.announce.site import page_path
from worker.sandbox.smtp_sink import SmtpSink
from worker.store.schema import announcements, recipients

NORMAL, REFUSED, FAILING_NUMBERS, NO_CONTACT = 240, 40, 30, 20


def population() -> list[dict[str, Any]]:
    """240 fine; 40 whose email is refused (30 of them with a failing number too); 20 with nothing."""
    people: list[dict[str, Any]] = []
    for i in range(NORMAL):
        people.append({"user_id": f"ok{i:03d}", "email": f"ok{i}@example.com", "phone": f"+1415555{i:04d}"})
    for i in range(REFUSED):
        people.append({"user_id": f"refused{i:03d}", "email": f"refused{i}@example.com", "phone": f"+1628555{i:04d}"})
    for i in range(NO_CONTACT):
        people.append({"user_id": f"none{i:03d}"})
    for i, person in enumerate(people):
        person["locale"] = "zh-CN" if i % 3 == 0 else "en"
        person["name"] = f"Person {i}"
    return people


def failing_numbers() -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
    """Of the refused people's numbers: 15 refused by Twilio outright, 15 undelivered by the
    carrier and unanswered when called."""
    numbers = [f"+1628555{i:04d}" for i in range(FAILING_NUMBERS)]
    refused = {n: 21211 for n in numbers[:15]}
    undelivered = {n: 30003 for n in numbers[15:]}
    unanswered = {n: "no-answer" for n in numbers[15:]}
    return refused, undelivered, unanswered


def test_everyone_ends_reached_or_covered_by_one_announcement_after_one_pass_down_the_chain(
    rig: Rig, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    smtp_sink.refuse(r"^refused\d+@", code=550, text="5.1.1 mailbox unavailable")
    fail, undelivered, unanswered = failing_numbers()
    rig.sandbox.set_faults(fail_numbers=fail, undelivered_numbers=undelivered, call_behaviour=unanswered)
    settings = rig.settings(routing_file=write_routing(tmp_path, SEQUENTIAL))
    event = incident(population(), severity="critical", incident_id="INC-2026-0300")
    event_id = event["event_id"]

    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event_id], timeout=180)
        routes = pipeline.routes(event_id)
        rows = pipeline.ledger_rows(event_id)
        with pipeline.engine.connect() as conn:
            ref_of = {uid: ref for uid, ref in conn.execute(select(recipients.c.user_id, recipients.c.ref))}
            (announcement,) = conn.execute(select(announcements)).all()

    who = {ref: uid for uid, ref in ref_of.items()}
    group = {ref: uid.rstrip("0123456789") for ref, uid in who.items()}
    failing = {ref_of[f"refused{i:03d}"] for i in range(FAILING_NUMBERS)}

    # Every one of the 300 has one route, ending terminal: reached, or covered by the announcement.
    assert len(routes) == 300
    outcomes = Counter(r.outcome for r in routes.values())
    assert outcomes == {"reached": NORMAL + REFUSED - FAILING_NUMBERS, "covered": FAILING_NUMBERS + NO_CONTACT}
    for ref, route in routes.items():
        if group[ref] == "ok":
            assert (route.outcome, route.reached_channel, route.stage) == ("reached", "email", 0)
        elif group[ref] == "refused" and ref not in failing:
            assert (route.outcome, route.reached_channel, route.stage) == ("reached", "sms", 1)
        else:
            assert (route.outcome, route.announcement_id, route.stage) == ("covered", announcement.id, 2)

    # Handed down the chain exactly once per stage, and only those who needed it.
    fallbacks = Counter((r.recipient_ref, r.step) for r in rows if r.status == "fallback")
    assert all(n == 1 for n in fallbacks.values()), "a recipient was handed on twice"
    expected: set[tuple[str, int]] = set()
    for ref in routes:
        if group[ref] == "refused":
            expected.add((ref, 1))
        if ref in failing or group[ref] == "none":
            expected |= {(ref, 1), (ref, 2), (ref, 3)}  # to sms, to phone, to the announcement
    assert set(fallbacks) == expected
    reasons = {r.recipient_ref: r.reason for r in rows if r.status == "fallback" and r.step == 1}
    assert "email failed (550)" in reasons[ref_of["refused000"]]
    assert "email failed (no-contact)" in reasons[ref_of["none000"]]

    # One terminal ledger row per covered person, naming the one announcement and when it went public.
    covered = [r for r in rows if r.status == "covered"]
    assert Counter(r.recipient_ref for r in covered) == Counter(
        ref for ref, route in routes.items() if route.outcome == "covered"
    )
    assert {r.provider_message_id for r in covered} == {announcement.id}
    since = announcement.first_public_at
    assert all(f"public since {since.isoformat(timespec='seconds')[:19]}" in r.reason for r in covered)
    assert not [r for r in rows if r.status == "unreached"]

    # Each channel was tried at most once per person, and only where the chain led.
    per_channel = Counter((r.recipient_ref, r.channel) for r in rows if r.status in ("delivered", "sent", "failed"))
    sms_tried = {ref for ref, channel in per_channel if channel == "sms"}
    phone_tried = {ref for ref, channel in per_channel if channel == "phone"}
    assert sms_tried == {ref for ref in routes if group[ref] in ("refused", "none")}
    assert phone_tried == failing | {ref for ref in routes if group[ref] == "none"}
    # Twilio refused the first 15 failing numbers outright, so it accepted SMS for the other 25.
    assert Counter(m.to for m in rig.sandbox.messages) == Counter(f"+1628555{i:04d}" for i in range(15, REFUSED))
    assert Counter(c.to for c in rig.sandbox.calls) == Counter(list(unanswered))

    # The announcement's page and feeds exist, validate, and herald serve serves the same bytes.
    site = settings.resolved_announcements_dir
    for locale in ("en", "zh-CN"):
        page = site / page_path(announcement.id, locale)
        assert page.is_file()
        assert "INC-2026-0300" in page.read_text(encoding="utf-8")
        feed = feedparser.parse((site / locale / "feed.atom").read_bytes())
        assert feed.bozo == 0, feed.get("bozo_exception")
        assert feed.version == "atom10"
        (entry,) = feed.entries
        assert entry.link == f"{settings.resolved_announcements_url}/{page_path(announcement.id, locale)}"
        items = json.loads((site / locale / "feed.json").read_text(encoding="utf-8"))["items"]
        assert [item["url"] for item in items] == [entry.link]
        served = httpx.get(f"{rig.public_url}/announcements/{page_path(announcement.id, locale)}")
        assert served.status_code == 200 and served.content == page.read_bytes()
    assert httpx.get(f"{rig.public_url}/announcements/.build.lock").status_code == 404
    assert httpx.get(f"{rig.public_url}/announcements/").status_code == 200
    published = [r for r in rows if r.status == "published"]
    assert len(published) == 1 and published[0].recipient_ref == "public"
