"""Providers that misbehave for a while: the SMTP server down, then back; a Twilio-compatible
peer that refuses, fails and answers unreadably, slowly."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from faults import ONE_BACKEND, QUICK, ChaosRun, Received
from sqlalchemy import func, select
from support import Rig, every_type_at_once, incident, people, phones, write_routing

from worker.config import Settings
from worker.sandbox.smtp_sink import SmtpSink
from worker.store.engine import read_only
from worker.store.schema import ledger

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

RECIPIENTS = 400
#: How long the SMTP server stays down. The issue's figure is 60 s, which bench/soak.py uses;
#: The issue's 60 s, thirty times the longest retry backoff here, so every batch is refused
#: many times over before the server is back; shorter with HERALD_TEST_CHAOS_SMTP_OUTAGE_S.
OUTAGE_S = float(os.environ.get("HERALD_TEST_CHAOS_SMTP_OUTAGE_S", "60"))


@pytest.mark.parametrize("database_url", [ONE_BACKEND], indirect=True)
def test_the_smtp_server_down_then_back_loses_nothing(
    chaos: Callable[[Settings], ChaosRun], make_settings: Callable[..., Settings], smtp_sink: SmtpSink, backend: str
) -> None:
    # Enough of dramatiq's retries to outlast the outage (with jitter a retry waits at least
    # half the longest backoff): the emails are still herald's to send when the server is back.
    retries = int(3 * OUTAGE_S * 1000 / QUICK["retry_max_backoff_ms"]) + 10
    settings = make_settings(**QUICK, retry_max=retries)
    assert 5 * settings.retry_max_backoff_ms < OUTAGE_S * 1000, "the outage must outlast several retries"
    assert (retries - 5) * settings.retry_max_backoff_ms / 2 > OUTAGE_S * 1000, "the retries must outlast the outage"
    smtp_sink.latency(0.03)
    run = chaos(settings)
    event_id = run.publish(incident(people(RECIPIENTS)))
    run.start_workers(threads=3)
    run.wait_for(lambda: smtp_sink.count >= RECIPIENTS // 4, "the fan-out to start")
    smtp_sink.stop()
    run.fault("SMTP down", [event_id])
    at_stop = smtp_sink.count
    down_until = time.monotonic() + OUTAGE_S
    run.wait_for(lambda: time.monotonic() > down_until, "the outage to pass", timeout=OUTAGE_S + 5)
    refused = retrying_rows(run, event_id)
    smtp_sink.start()
    done = run.settle([event_id], 120.0)

    result = run.figures([event_id], expected=RECIPIENTS, received=Received.of(smtp_sink))
    print(
        "\n"
        + result.line(
            "smtp-down",
            backend,
            f"SMTP down {OUTAGE_S:g} s at {at_stop} emails, {refused} attempts recorded retrying meanwhile",
        )
    )
    assert at_stop < RECIPIENTS, "the outage came too late to land mid fan-out"
    assert refused, "no attempt met the outage: the fault tested nothing"
    assert done or result.lost, "not settled, yet nothing lost?"
    result.check()
    assert len({a for m in smtp_sink.messages for a in m.rcpt_tos}) == RECIPIENTS


PEOPLE = 120


@pytest.mark.parametrize("database_url", [ONE_BACKEND], indirect=True)
def test_a_twilio_peer_answering_429_500_and_unreadable_2xx_slowly_loses_nothing(
    chaos: Callable[[Settings], ChaosRun], rig: Rig, backend: str, tmp_path: Path
) -> None:
    rig.sandbox.set_faults(rate_429=0.3, rate_500=0.1, rate_unreadable=0.05, latency_s=0.05, seed=9)
    settings = rig.settings(
        **QUICK,
        channels=("insite", "sms", "phone"),
        routing_file=write_routing(tmp_path, every_type_at_once("[sms, phone]")),
        sms_concurrency=4,
        phone_concurrency=4,
    )
    run = chaos(settings)
    event_id = run.publish(incident(phones(PEOPLE), severity="critical"))
    run.start_workers(threads=3)
    # The recovery time: sending takes some 20 s; reconciliation asks Twilio about anything still
    # "sent" 10 s later and fails it 30 s after sending, so 75 s leaves nothing undecided.
    done = run.settle([event_id], 75.0)

    requests = rig.sandbox.requests
    refused = sum(1 for r in requests if r.status_code in (429, 500))
    unreadable = sum(1 for r in requests if getattr(r, "unreadable", False))
    result = run.figures([event_id], expected=PEOPLE, received=Received.of(sandbox=rig.sandbox))
    print(
        "\n"
        + result.line(
            "twilio-faults",
            backend,
            f"{PEOPLE} SMS + {PEOPLE} calls; {len(requests)} creates: {refused} answered 429/500, "
            f"{unreadable} answered an unreadable 2xx, each after 50 ms",
        )
    )
    assert refused and unreadable, "the peer's faults never fired"
    assert done or result.lost, "not settled, yet nothing lost?"
    result.check()


def retrying_rows(run: ChaosRun, event_id: str) -> int:
    """Ledger rows of the event that record an attempt to be retried."""
    with read_only(run.engine) as conn:
        stmt = select(func.count()).where(ledger.c.event_id == event_id, ledger.c.status == "retrying")
        return int(conn.execute(stmt).scalar_one())
