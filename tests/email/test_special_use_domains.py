"""Special-use mail domains (.internal, .local, .test, ...): refused unless the deployment allows
them with ``HERALD_EMAIL_ALLOWED_SPECIAL_DOMAINS``, e.g. a company whose mail lives on ``corp.internal``."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support import Pipeline, incident

from worker.config import Settings
from worker.core.contacts import check_email
from worker.sandbox.smtp_sink import SmtpSink

PEOPLE = [
    {"user_id": "corp", "name": "Corp", "email": "a@corp.internal", "locale": "en"},
    {"user_id": "lan", "name": "Lan", "email": "b@printer.local", "locale": "en"},
    {"user_id": "pub", "name": "Pub", "email": "c@example.com", "locale": "en"},
]


@pytest.mark.parametrize(
    ("allowed", "delivered"),
    [
        ("", {"c@example.com"}),
        ("internal", {"a@corp.internal", "c@example.com"}),
        ("internal, .LOCAL", {"a@corp.internal", "b@printer.local", "c@example.com"}),
    ],
)
def test_special_use_addresses_reach_the_smtp_server_only_when_allowed(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink, allowed: str, delivered: set[str]
) -> None:
    settings = make_settings(email_allowed_special_domains=allowed)
    event = incident(PEOPLE)
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]], timeout=60)
        failed = {r.reason for r in pipeline.ledger_rows(event["event_id"]) if r.status == "failed"}
        counts = pipeline.counts(event["event_id"])
    assert {to for message in smtp_sink.messages for to in message.rcpt_tos} == delivered
    assert counts[("email", "delivered")] == len(delivered)
    assert counts.get(("email", "failed"), 0) == len(PEOPLE) - len(delivered)
    assert all("special-use" in reason for reason in failed if reason and "email" in reason)


@pytest.mark.parametrize(
    ("raw", "allowed", "value"),
    [
        ("a@corp.internal", (), None),
        ("a@corp.internal", ("internal",), "a@corp.internal"),
        ("A.B@Mail.Corp.INTERNAL", ("internal",), "A.B@mail.corp.internal"),
        ("a@host.local", ("internal",), None),
        ("a@host.local", ("local",), "a@host.local"),
        ("a@example.test", ("test",), "a@example.test"),
        ("a@x.localhost", ("test", "local"), None),
        ("a@corp.ｉｎｔｅｒｎａｌ", (), None),  # full-width letters are the same name
        ("a@corp.ｉｎｔｅｒｎａｌ", ("internal",), "a@corp.internal"),
        ("a@internal", ("internal",), None),  # a bare top-level name is no mail domain
        ("a..b@corp.internal", ("internal",), None),  # the rest of the address is still checked
        ("a@bücher.de", (), "a@bücher.de"),
        ("a@example.com", (), "a@example.com"),
    ],
)
def test_check_email_refuses_special_use_domains_unless_allowed(
    raw: str, allowed: tuple[str, ...], value: str | None
) -> None:
    checked = check_email(raw, allowed_special_domains=allowed)
    assert checked.value == value
    assert (checked.problem is None) == (value is not None)
