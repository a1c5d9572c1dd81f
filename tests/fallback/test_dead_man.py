"""Redis restarted without its data in the middle of a fan-out: every message on the queues
is gone. The dead-man check finds what stands still (a fan-out that stopped, deliveries
pending or held under an expired lease) and pushes it on, so everyone still ends terminal."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from support import Pipeline, incident, people

from worker.config import Settings
from worker.sandbox.smtp_sink import SmtpSink


def test_messages_lost_with_redis_mid_fanout_are_recovered_by_the_dead_man_check(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink
) -> None:
    settings = make_settings(
        page_size=100, batch_size=25, stuck_after_s=2.0, lease_s=2.0, sweep_interval_s=0.5, record_every=5
    )
    smtp_sink.latency(0.01)
    audience = people(400)
    event = incident(audience)
    event_id = event["event_id"]
    first = Pipeline(settings, threads=2)
    with first:
        first.publish(event)
        deadline = time.monotonic() + 60
        while smtp_sink.count < 60:
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.02)
    # The worker has stopped; now Redis "restarts" empty: every queued message is lost.
    lost = 0
    for key in first.broker.client.scan_iter(f"{settings.broker_namespace}*"):
        lost += 1
        first.broker.client.delete(key)
    first.broker.close()
    first.engine.dispose()
    assert lost, "there should have been messages to lose"
    with Pipeline(settings) as second:
        second.wait_terminal([event_id], timeout=120)
        counts = second.counts(event_id)
        outcomes = second.outcomes(event_id)
    assert counts == {("email", "delivered"): 400, ("insite", "delivered"): 400}
    assert outcomes == {"reached": 400}
    received = Counter(a for m in smtp_sink.messages for a in m.rcpt_tos)
    assert set(received) == {p["email"] for p in audience}
