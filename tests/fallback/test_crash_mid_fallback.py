"""A worker killed with SIGKILL in the middle of a fallback wave: after a new worker starts,
nobody has two chains, nobody is left non-terminal, and duplicate SMS stay within the
chunks that were in flight at the kill."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import select
from support import SEQUENTIAL, Pipeline, Rig, incident, start_workers, stop_workers, write_routing

from worker.sandbox.smtp_sink import SmtpSink
from worker.store.schema import deliveries

PEOPLE = 400
UNREACHABLE = 100  # their SMS is undelivered and they do not answer the phone
CHUNK = 10


def test_sigkill_during_a_wave_of_fallbacks_leaves_one_chain_each_and_everyone_terminal(
    rig: Rig, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    smtp_sink.refuse(r"^p\d+@", code=550, text="5.1.1 mailbox unavailable")
    numbers = [f"+1415555{i:04d}" for i in range(PEOPLE)]
    unreachable = numbers[:UNREACHABLE]
    rig.sandbox.set_faults(
        latency_s=0.01,
        undelivered_numbers={n: 30003 for n in unreachable},
        call_behaviour={n: "no-answer" for n in unreachable},
    )
    settings = rig.settings(
        routing_file=write_routing(tmp_path, SEQUENTIAL),
        batch_size=50,
        record_every=CHUNK,
        sms_concurrency=4,
        broker_heartbeat_timeout_ms=3_000,
        broker_maintenance_chance=1_000_000,
        stuck_after_s=5.0,
        sms_rate_per_second=150.0,
    )
    audience = [
        {"user_id": f"p{i:04d}", "email": f"p{i}@example.com", "phone": number, "locale": "en"}
        for i, number in enumerate(numbers)
    ]
    event = incident(audience, severity="critical")
    event_id = event["event_id"]
    log = tmp_path / "workers.log"

    watcher = Pipeline(settings, threads=1)  # publishes and watches; worker processes do the work
    first = start_workers(settings, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        watcher.publish(event)
        deadline = time.monotonic() + 120
        while len(rig.sandbox.requests) < 120:
            assert time.monotonic() < deadline, f"the SMS wave never started; see {log}"
            assert first.poll() is None, log.read_text()
            time.sleep(0.02)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        sms_before_kill = len(rig.sandbox.requests)
        with watcher.engine.connect() as conn:
            claims = conn.execute(
                select(deliveries.c.claimed_by).where(
                    deliveries.c.event_id == event_id, deliveries.c.channel == "sms", deliveries.c.status == "sending"
                )
            ).all()
        sms_batches_in_flight = len({who for (who,) in claims})
        assert sms_before_kill < PEOPLE, "the kill came too late to test anything"

        second = start_workers(settings, log)
        watcher.wait_terminal([event_id], timeout=180)
        routes = watcher.routes(event_id)
        rows = watcher.ledger_rows(event_id)
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_workers(proc)
        watcher.broker.close()
        watcher.engine.dispose()

    assert Counter(r.outcome for r in routes.values()) == {"reached": PEOPLE - UNREACHABLE, "covered": UNREACHABLE}
    # One chain each: every hand-on happened once, and in order.
    fallbacks = Counter((r.recipient_ref, r.step) for r in rows if r.status == "fallback")
    assert max(fallbacks.values()) == 1, "a recipient was handed on twice"
    steps: dict[str, list[int]] = {}
    for r in rows:
        if r.status == "fallback":
            steps.setdefault(r.recipient_ref, []).append(r.step)
    assert Counter(tuple(s) for s in steps.values()) == {(1,): PEOPLE - UNREACHABLE, (1, 2, 3): UNREACHABLE}
    assert Counter(r.recipient_ref for r in rows if r.status == "covered") == Counter(
        ref for ref, route in routes.items() if route.outcome == "covered"
    )

    by_number = Counter(m.to for m in rig.sandbox.messages)
    duplicates = sum(n - 1 for n in by_number.values())
    print(
        f"\nfallback crash: {sms_before_kill} SMS requests before SIGKILL, {sms_batches_in_flight} SMS batches "
        f"in flight, {duplicates} duplicate SMS after recovery (bound {max(sms_batches_in_flight, 1) * CHUNK})"
    )
    assert set(by_number) == set(numbers)
    assert duplicates <= max(sms_batches_in_flight, 1) * CHUNK
    assert Counter(c.to for c in rig.sandbox.calls) <= Counter({n: 2 for n in unreachable})
