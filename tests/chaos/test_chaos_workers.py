"""Worker processes that die or freeze in the middle of a fan-out.

SIGKILL three times in a row: each new worker group takes over the dead one's messages once
its heartbeat times out, and the claims keep re-sends within the chunks that were in flight.
SIGSTOP past the heartbeat timeout: dramatiq hands the frozen worker's messages to another
process, then the frozen one wakes up and finishes them too; two runs of one batch at once,
and the claims must still keep duplicates within the bound.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from faults import ONE_BACKEND, QUICK, ChaosRun, Received, paused, worker_processes
from sqlalchemy import func, select
from support import incident, people

from worker.config import Settings
from worker.sandbox.smtp_sink import SmtpSink
from worker.store.engine import read_only
from worker.store.schema import deliveries

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

RECIPIENTS = 400
RECOVERY_S = 120.0


def test_workers_sigkilled_three_times_in_a_row_mid_fanout(
    chaos: Callable[[Settings], ChaosRun], make_settings: Callable[..., Settings], smtp_sink: SmtpSink, backend: str
) -> None:
    settings = make_settings(**QUICK)
    smtp_sink.latency(0.03)
    run = chaos(settings)
    event_id = run.publish(incident(people(RECIPIENTS)))
    run.start_workers(threads=3)
    for kill in range(1, 4):
        target = kill * RECIPIENTS // 5
        run.wait_for(lambda n=target: smtp_sink.count >= n, f"{target} emails before kill {kill}")  # type: ignore[misc]
        run.kill_workers()
        run.fault(f"SIGKILL {kill} at {smtp_sink.count} emails", [event_id])
        assert smtp_sink.count < RECIPIENTS, "the kill came too late to land mid fan-out"
        run.start_workers(threads=3)
    done = run.settle([event_id], RECOVERY_S)

    result = run.figures([event_id], expected=RECIPIENTS, received=Received.of(smtp_sink))
    print("\n" + result.line("sigkill-x3", backend, f"{run.in_flight} batches in flight at 3 kills"))
    assert done or result.lost, "not settled, yet nothing lost?"
    assert run.in_flight > 0, "no batch was in flight at any kill: the faults tested nothing"
    result.check()
    assert len({a for m in smtp_sink.messages for a in m.rcpt_tos}) == RECIPIENTS


@pytest.mark.parametrize("database_url", [ONE_BACKEND], indirect=True)
def test_a_worker_sigstopped_past_the_heartbeat_timeout_runs_its_batches_twice_within_the_bound(
    chaos: Callable[[Settings], ChaosRun], make_settings: Callable[..., Settings], smtp_sink: SmtpSink, backend: str
) -> None:
    settings = make_settings(**QUICK)
    heartbeat_s = settings.broker_heartbeat_timeout_ms / 1000
    smtp_sink.latency(0.03)
    run = chaos(settings)
    event_id = run.publish(incident(people(RECIPIENTS)))
    first = run.start_workers(threads=2)
    run.wait_for(lambda: smtp_sink.count >= RECIPIENTS // 5, "the fan-out to start")
    (frozen,) = worker_processes(first)
    with paused(frozen):
        run.fault(f"SIGSTOP pid {frozen.pid}", [event_id])
        at_stop = smtp_sink.count
        # A second group takes over: past the heartbeat timeout its maintenance requeues the
        # frozen worker's messages, and it runs them while the frozen one still holds them.
        run.start_workers(threads=2)
        run.wait_for(lambda: reclaimed(run, event_id) > 0, "the frozen worker's batches to run again")
        time.sleep(heartbeat_s)
    done = run.settle([event_id], RECOVERY_S)

    result = run.figures([event_id], expected=RECIPIENTS, received=Received.of(smtp_sink))
    print("\n" + result.line("sigstop", backend, f"stopped at {at_stop} emails until its batches ran again"))
    assert at_stop < RECIPIENTS, "the stop came too late to land mid fan-out"
    assert done or result.lost, "not settled, yet nothing lost?"
    result.check()


def reclaimed(run: ChaosRun, event_id: str) -> int:
    """Deliveries of the event claimed more than once."""
    with read_only(run.engine) as conn:
        stmt = select(func.count()).where(deliveries.c.event_id == event_id, deliveries.c.attempts > 1)
        return int(conn.execute(stmt).scalar_one())
