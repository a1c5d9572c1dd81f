"""A worker process killed with SIGKILL in the middle of a 2,000-recipient fan-out: after a new
worker starts, every recipient ends terminal, and duplicate emails stay within the batches
that were in flight at the kill."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from support import Pipeline, incident, people, start_workers, stop_workers

from worker.config import Settings
from worker.sandbox.smtp_sink import SmtpSink
from worker.store.schema import deliveries

RECIPIENTS = 2_000
BATCH = 50
CHUNK = 10  # messages sent between two ledger writes


def test_sigkill_mid_fanout_ends_with_everyone_terminal_and_bounded_duplicates(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    settings = make_settings(
        batch_size=BATCH,
        record_every=CHUNK,
        page_size=500,
        smtp_connections=2,
        # Let a dead worker's messages come back within seconds, not a minute.
        broker_heartbeat_timeout_ms=3_000,
        broker_maintenance_chance=1_000_000,
    )
    smtp_sink.latency(0.02)
    event = incident(people(RECIPIENTS))
    event_id = event["event_id"]
    log = tmp_path / "workers.log"

    # The test process only publishes and watches; worker processes do all the work.
    watcher = Pipeline(settings, threads=1)
    first = start_workers(settings, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        watcher.publish(event)
        deadline = time.monotonic() + 120
        while smtp_sink.count < 500:
            assert time.monotonic() < deadline, f"no progress; see {log}"
            assert first.poll() is None, log.read_text()
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        sent_before_kill = smtp_sink.count

        with watcher.engine.connect() as conn:
            claimed = conn.execute(
                select(deliveries.c.channel, deliveries.c.claimed_by).where(
                    deliveries.c.event_id == event_id, deliveries.c.status == "sending"
                )
            ).all()
        email_batches_in_flight = len({who for channel, who in claimed if channel == "email"})
        assert sent_before_kill < RECIPIENTS, "the kill came too late to test anything"

        second = start_workers(settings, log)
        watcher.wait_terminal([event_id], timeout=180)
        counts = watcher.counts(event_id)
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_workers(proc)
        watcher.broker.close()
        watcher.engine.dispose()

    assert counts == {("email", "delivered"): RECIPIENTS, ("insite", "delivered"): RECIPIENTS}
    by_id = Counter(m.message_id for m in smtp_sink.messages)
    duplicates = sum(n - 1 for n in by_id.values())
    assert len(by_id) == RECIPIENTS
    assert sorted({a for m in smtp_sink.messages for a in m.rcpt_tos}) == sorted(p["email"] for p in people(RECIPIENTS))
    print(
        f"\ncrash test: {sent_before_kill} emails before SIGKILL, {email_batches_in_flight} email batches in flight, "
        f"{duplicates} duplicate emails after recovery (bound {email_batches_in_flight * CHUNK})"
    )
    # The bound is the batches in flight; recording every CHUNK messages makes it tighter.
    assert duplicates <= email_batches_in_flight * CHUNK <= email_batches_in_flight * BATCH
