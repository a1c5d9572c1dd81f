"""A worker process killed with SIGKILL in the middle of a 2,000-recipient fan-out: after a new
worker starts, every recipient ends terminal, and duplicate emails stay within the batches
that were in flight at the kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from support import Pipeline, incident, people

from worker.config import Settings
from worker.sandbox.smtp_sink import SmtpSink
from worker.store.schema import deliveries

RECIPIENTS = 2_000
BATCH = 50


def _start_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "HERALD_BROKER_URL": settings.broker_url,
        "HERALD_BROKER_NAMESPACE": settings.broker_namespace,
        "HERALD_DATABASE_URL": settings.database_url,
        "HERALD_DATA_DIR": str(settings.data_dir),
        "HERALD_SMTP_PORT": str(settings.smtp_port),
        "HERALD_SMTP_CONNECTIONS": "2",
        "HERALD_BATCH_SIZE": str(BATCH),
        "HERALD_PAGE_SIZE": "500",
        "HERALD_RETRY_MIN_BACKOFF_MS": "200",
        "HERALD_RETRY_MAX_BACKOFF_MS": "2000",
        # Let a dead worker's messages come back within seconds, not a minute.
        "HERALD_BROKER_HEARTBEAT_TIMEOUT_MS": "3000",
        "HERALD_BROKER_MAINTENANCE_CHANCE": "1000000",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "worker.app", "--processes", "1", "--threads", "4"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        start_new_session=True,
    )


def test_sigkill_mid_fanout_ends_with_everyone_terminal_and_bounded_duplicates(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    settings = make_settings(batch_size=BATCH, page_size=500)
    smtp_sink.latency(0.02)
    event = incident(people(RECIPIENTS))
    event_id = event["event_id"]
    log = tmp_path / "workers.log"

    # The test process only publishes and watches; worker processes do all the work.
    watcher = Pipeline(settings, threads=1)
    first = _start_worker(settings, log)
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

        second = _start_worker(settings, log)
        watcher.wait_terminal([event_id], timeout=180)
        counts = watcher.counts(event_id)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
        watcher.broker.close()
        watcher.engine.dispose()

    assert counts == {("email", "delivered"): RECIPIENTS, ("insite", "delivered"): RECIPIENTS}
    by_id = Counter(m.message_id for m in smtp_sink.messages)
    duplicates = sum(n - 1 for n in by_id.values())
    assert len(by_id) == RECIPIENTS
    assert sorted({a for m in smtp_sink.messages for a in m.rcpt_tos}) == sorted(p["email"] for p in people(RECIPIENTS))
    print(
        f"\ncrash test: {sent_before_kill} emails before SIGKILL, {email_batches_in_flight} email batches in flight, "
        f"{duplicates} duplicate emails after recovery (bound {email_batches_in_flight * BATCH})"
    )
    assert duplicates <= email_batches_in_flight * BATCH
