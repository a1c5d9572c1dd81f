"""Contacts given inline are the event's: used for that event, never written over the stored
record, kept only where retention can clear them (``event_contacts``), never in the body."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from support import Pipeline, env_for, incident, run

from worker.config import Settings
from worker.sandbox.smtp_sink import SmtpSink
from worker.store.schema import event_contacts, events, recipients


def _service_notice(audience: dict[str, Any], event_id: str) -> dict[str, Any]:
    """An optional notice (maintenance): it honours opt-outs."""
    return {
        "event_id": event_id,
        "type": "service_notice",
        "occurred_at": "2026-11-30T09:00:00Z",
        "source": "tests",
        "data": {
            "kind": "maintenance",
            "title": "Database upgrade",
            "starts_at": "2026-12-20T01:00:00Z",
            "ends_at": "2026-12-20T03:00:00Z",
            "services": ["api"],
            "audience": audience,
        },
    }


def test_an_inline_audience_never_overwrites_the_stored_record_or_its_opt_outs(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    settings = make_settings()
    table = tmp_path / "people.csv"
    table.write_text(
        "user_id,name,email,phone,locale,opt_out\nann,Ann Stored,ann@stored.example,,en,email\n", encoding="utf-8"
    )
    imported = run(["recipients", "import", str(table)], env_for(settings))
    assert imported.returncode == 0, imported.stderr
    inline = incident(
        [{"user_id": "ann", "name": "Ann Inline", "email": "ann@inline.example", "locale": "zh-CN", "opt_out": []}]
    )
    later = _service_notice({"user_ids": ["ann"]}, "maint-after-inline")
    with Pipeline(settings) as pipeline:
        pipeline.publish(inline)
        pipeline.wait_terminal([inline["event_id"]])
        pipeline.publish(later)
        pipeline.wait_terminal([later["event_id"]])
        with pipeline.engine.connect() as conn:
            stored = conn.execute(select(recipients).where(recipients.c.user_id == "ann")).one()
        later_counts = pipeline.counts(later["event_id"])

    # The incident went to the address it gave, in the language it gave.
    (incident_mail,) = smtp_sink.messages
    assert incident_mail.rcpt_tos == ("ann@inline.example",)
    assert _chinese(incident_mail.subject)
    # The stored record is as the import left it, opt-out included...
    assert (stored.name, stored.email, stored.locale, stored.opt_out) == (
        "Ann Stored",
        "ann@stored.example",
        "en",
        "email",
    )
    # ...so a later optional notice by user id honours it.
    assert later_counts[("email", "skipped")] == 1
    assert not any("ann@stored.example" in m.rcpt_tos for m in smtp_sink.messages)


def test_an_event_body_keeps_no_contacts_they_live_in_event_contacts(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink
) -> None:
    settings = make_settings()
    people = [
        {
            "user_id": "p1",
            "name": "Li Wei",
            "email": "li.wei@example.com",
            "phone": "+8613812345678",
            "locale": "zh-CN",
        },
        {"user_id": "p2", "name": "Sam Roe", "email": "sam@example.com", "opt_out": ["sms"]},
    ]
    event = incident(people)
    account = {
        "event_id": "acct-inline-1",
        "type": "account_notice",
        "occurred_at": "2026-11-30T09:00:00Z",
        "source": "tests",
        "data": {
            "user_id": "p3",
            "action": "suspended",
            "reason": "Unusual sign-ins.",
            "effective_at": "2026-12-01T09:00:00Z",
            "recipient": {"user_id": "p3", "name": "Pat Doe", "email": "pat@example.com"},
        },
    }
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        pipeline.publish(account)
        pipeline.wait_terminal([event["event_id"], account["event_id"]])
        with pipeline.engine.connect() as conn:
            bodies = [row.body for row in conn.execute(select(events.c.body))]
            given = {row.recipient_ref: row for row in conn.execute(select(event_contacts))}
            stored = list(conn.execute(select(recipients)))
        outcomes = pipeline.outcomes(event["event_id"])

    for body in bodies:
        for secret in ("li.wei@", "13812345678", "Li Wei", "sam@", "Sam Roe", "pat@", "Pat Doe"):
            assert secret not in body, (secret, body)
    assert json.loads(bodies[0])["data"].get("audience", {}).get("recipients", [{}])[0].keys() <= {"user_id"}
    assert {row.email for row in given.values()} == {"li.wei@example.com", "sam@example.com", "pat@example.com"}
    assert {row.phone for row in given.values()} == {"+8613812345678", None}
    assert all(row.email is None and row.name == "" for row in stored)  # the records carry no contacts
    assert outcomes == {"reached": 2}
    assert sorted(a for m in smtp_sink.messages for a in m.rcpt_tos) == [
        "li.wei@example.com",
        "pat@example.com",
        "sam@example.com",
    ]


def test_fields_an_event_leaves_out_come_from_the_stored_record(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    settings = make_settings()
    table = tmp_path / "people.csv"
    table.write_text("user_id,name,email,phone,locale\nbo,Bo,bo@stored.example,,zh-CN\n", encoding="utf-8")
    assert run(["recipients", "import", str(table)], env_for(settings)).returncode == 0
    event = incident([{"user_id": "bo", "name": "Bo Inline"}])  # no email given: the stored one applies
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]])
    (mail,) = smtp_sink.messages
    assert mail.rcpt_tos == ("bo@stored.example",)
    assert _chinese(mail.subject)  # the stored locale, as the event gave none


def _chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)
