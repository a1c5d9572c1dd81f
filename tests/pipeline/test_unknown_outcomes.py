"""Provider calls whose outcome is unknown: a Twilio 2xx herald cannot read, an SMTP server that
takes a message and never answers the final dot. Neither is resent inside the attempt; each is
recorded as unknown and resent at most up to the cap of provider requests per delivery key,
which the ledger counts."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select
from support import Pipeline, Rig, every_type_at_once, incident, people, write_routing

from worker.config import Settings
from worker.service.serving import free_port
from worker.store.schema import deliveries, event_contacts


def phones(count: int) -> list[dict[str, str]]:
    """People with US mobile numbers."""
    return [{"user_id": f"p{i:04d}", "phone": f"+1415555{i:04d}", "locale": "en"} for i in range(count)]


@pytest.fixture
def twilio(rig: Rig, tmp_path: Path) -> Rig:
    """SMS only, with short retries and callbacks for unknown SIDs given up quickly."""
    rig.defaults.update(
        channels=("insite", "sms"),
        routing_file=write_routing(tmp_path, every_type_at_once("[sms]")),
        retry_min_backoff_ms=100,
        retry_max_backoff_ms=400,
        callback_settle_s=0.5,
        confirmation_grace_s=1.0,
        sweep_interval_s=30.0,
    )
    return rig


def sms_state(pipeline: Pipeline, event_id: str) -> tuple[dict[str, Any], dict[str, list[Any]], dict[str, str]]:
    """Per recipient ref: the SMS delivery row, its ledger rows, and the person's number."""
    with pipeline.engine.connect() as conn:
        rows = {
            r.recipient_ref: r
            for r in conn.execute(
                select(deliveries).where(deliveries.c.event_id == event_id, deliveries.c.channel == "sms")
            )
        }
        given = select(event_contacts.c.recipient_ref, event_contacts.c.phone).where(
            event_contacts.c.event_id == event_id
        )
        number_of = {ref: phone for ref, phone in conn.execute(given)}  # inline numbers are the event's
    history: dict[str, list[Any]] = {ref: [] for ref in rows}
    for row in pipeline.ledger_rows(event_id):
        if row.channel == "sms":
            history[row.recipient_ref].append(row)
    return rows, history, number_of


@pytest.mark.parametrize("body", ["alternate", "empty-json"])
def test_an_unreadable_2xx_with_no_callback_is_resent_at_most_up_to_the_cap(twilio: Rig, body: str) -> None:
    """Twilio accepts every SMS but answers ``<html>ok</html>`` or ``{}``, and no callback can
    reach herald (`herald serve` is down): herald never learns a SID and resends up to the cap."""
    twilio.sandbox.set_faults(rate_unreadable=1.0, unreadable_body=body)
    cap = 3
    event = incident(phones(4))
    settings = twilio.settings(max_provider_requests=cap)
    assert twilio.server is not None
    twilio.server.stop()  # the provider's callbacks go nowhere
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]], timeout=60)
        rows, history, number_of = sms_state(pipeline, event["event_id"])

    sent_to = Counter(m.to for m in twilio.sandbox.messages)
    asked = Counter(r.to for r in twilio.sandbox.requests)
    assert len(rows) == 4
    for ref, row in rows.items():
        number = number_of[ref]
        attempts = {r.attempt for r in history[ref] if r.attempt}
        # One request per attempt, never more than the cap, and the ledger knows how many.
        assert asked[number] == sent_to[number] == cap, (number, asked[number])
        assert len(attempts) >= asked[number]
        assert row.requests == cap
        assert all(r.tries <= 1 for r in history[ref])
        assert max(r.requests or 0 for r in history[ref]) == cap
        # Never recorded under a SID it does not have.
        assert row.provider_message_id is None
        assert all(r.provider_message_id in (None, "") for r in history[ref] if r.status != "covered")
        unknown = [r for r in history[ref] if r.error_class == "UnknownOutcomeError"]
        assert len(unknown) == cap
        assert {r.status for r in unknown[:-1]} == {"retrying"}
        assert (row.status, row.error_code) == ("failed", "request-cap")
        assert row.reason.startswith(f"provider request cap reached ({cap}): outcome of earlier requests unknown")


@pytest.mark.parametrize("body", ["alternate", "empty-json"])
def test_an_unreadable_2xx_is_settled_by_the_callback_that_names_its_key(twilio: Rig, body: str) -> None:
    """The same unreadable answers, with `herald serve` up: each SMS's status callback names its
    delivery key in its signed URL, so herald learns the SID it could not read and does not
    send the message again once the callback has come."""
    twilio.sandbox.set_faults(rate_unreadable=1.0, unreadable_body=body)
    event = incident(phones(6))
    with Pipeline(twilio.settings(retry_min_backoff_ms=2_000, retry_max_backoff_ms=4_000)) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]], timeout=60)
        rows, history, number_of = sms_state(pipeline, event["event_id"])

    sids = {m.sid: m.to for m in twilio.sandbox.messages}
    sent_to = Counter(m.to for m in twilio.sandbox.messages)
    for ref, row in rows.items():
        number = number_of[ref]
        assert (row.status, sids[row.provider_message_id]) == ("delivered", number)
        assert sent_to[number] == 1  # the callback came long before the next attempt was due
        statuses = [(r.status, r.error_class) for r in history[ref]]
        assert statuses[0] == ("retrying", "UnknownOutcomeError")
        assert ("sent", None) in statuses and statuses[-1] == ("delivered", None)


def test_unknown_outcomes_among_readable_answers_end_delivered_or_at_the_cap(twilio: Rig) -> None:
    twilio.sandbox.set_faults(rate_unreadable=0.5, seed=3)
    event = incident(phones(12))
    settings = twilio.settings()
    assert twilio.server is not None
    twilio.server.stop()  # no callback settles an unknown outcome: only resends and the cap do
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]], timeout=90)
        rows, history, number_of = sms_state(pipeline, event["event_id"])

    sent_to = Counter(m.to for m in twilio.sandbox.messages)
    sids = {m.sid: m.to for m in twilio.sandbox.messages}
    resent = 0
    for ref, row in rows.items():
        number = number_of[ref]
        assert sent_to[number] <= 5 and row.requests == sent_to[number]
        assert len({r.attempt for r in history[ref] if r.attempt}) >= sent_to[number]
        if row.status in ("sent", "delivered"):
            assert sids[row.provider_message_id] == number  # the SID of the answer herald could read
        else:
            assert (row.status, row.error_code) == ("failed", "request-cap")
        resent += sent_to[number] > 1
    assert "None" not in {r.provider_message_id for r in rows.values()}
    assert resent, "some SMS should have been resent after an unknown outcome"
    assert sum(row.status in ("sent", "delivered") for row in rows.values()) >= 9


# --- SMTP: the final dot is never answered ------------------------------------------------


class NeverAnswers:
    """An SMTP server that reads each message in full and then holds the reply past the client's timeout."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self.received: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._lock:
            self.received.update(envelope.rcpt_tos)
        await asyncio.sleep(self.hold_s)
        return "250 2.0.0 accepted, but too late"


def test_an_smtp_server_that_never_answers_the_final_dot_gets_each_message_at_most_once_per_attempt(
    make_settings: Callable[..., Settings],
) -> None:
    handler = NeverAnswers(hold_s=1.5)
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    cap = 3
    audience = people(3, prefix="slow")
    settings = make_settings(
        smtp_port=controller.port,
        smtp_timeout_s=0.4,
        retry_min_backoff_ms=100,
        retry_max_backoff_ms=300,
        retry_max=8,
        max_provider_requests=cap,
    )
    event = incident(audience)
    try:
        with Pipeline(settings) as pipeline:
            pipeline.publish(event)
            pipeline.wait_terminal([event["event_id"]], timeout=90)
            rows, history = {}, {}
            with pipeline.engine.connect() as conn:
                given = select(event_contacts.c.recipient_ref, event_contacts.c.email)
                email_of = {ref: mail for ref, mail in conn.execute(given)}
                for row in conn.execute(
                    select(deliveries).where(
                        deliveries.c.event_id == event["event_id"], deliveries.c.channel == "email"
                    )
                ):
                    rows[row.recipient_ref] = row
            for row in pipeline.ledger_rows(event["event_id"]):
                if row.channel == "email":
                    history.setdefault(row.recipient_ref, []).append(row)
    finally:
        controller.stop()

    assert len(rows) == 3
    for ref, row in rows.items():
        transmitted = handler.received[email_of[ref]]
        attempts = {r.attempt for r in history[ref] if r.attempt}
        assert 1 <= transmitted <= cap, (email_of[ref], transmitted)
        assert transmitted <= len(attempts)
        assert row.requests == transmitted
        # (``tries`` may exceed 1: a connection refused or timed out before any data is tried again.)
        assert (row.status, row.error_code) == ("failed", "request-cap")
        assert {r.error_class for r in history[ref] if r.status == "retrying"} <= {
            "UnknownOutcomeError",
            "TransientDeliveryError",
        }
        assert any(r.error_class == "UnknownOutcomeError" for r in history[ref])
