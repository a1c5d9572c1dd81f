"""`herald scheduler` SIGKILLed between claiming due jobs and enqueueing them.

The fault is real: the scheduler's Redis is stopped (SIGSTOP: the kernel accepts the
connection, nobody answers), so the scheduler claims the due jobs in the database and then
hangs in the enqueue; it is SIGKILLed there. Redis comes back and a second scheduler takes
the jobs once their lease runs out. Whether Redis still executes the dead scheduler's
buffered enqueue or not, each job does its work once and everyone is told once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from faults import QUICK, ChaosRun, OwnRedis, Received, kill_group
from sqlalchemy import select
from support import people, policy_change

from worker.config import Settings
from worker.sandbox.smtp_sink import SmtpSink
from worker.store import schedules
from worker.store.engine import read_only
from worker.store.schedules import JobState
from worker.store.schema import ledger
from worker.store.schema import schedules as schedule_rows

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

RECIPIENTS = 300
LEASE_S = 3.0


def test_the_scheduler_killed_between_claim_and_enqueue_loses_nothing_and_runs_each_job_once(
    chaos: Callable[[Settings], ChaosRun],
    make_settings: Callable[..., Settings],
    smtp_sink: SmtpSink,
    own_redis: OwnRedis,
    backend: str,
    tmp_path: Path,
) -> None:
    settings = make_settings(
        **QUICK,
        broker_url=own_redis.url,
        announcements_dir=tmp_path / "site",
        scheduler_interval_s=0.5,
        scheduler_lease_s=LEASE_S,
    )
    run = chaos(settings)
    run.start_workers(threads=3)
    run.wait_ready()
    publish_at = datetime.now(UTC) + timedelta(seconds=6)
    event = policy_change(
        ahead=timedelta(days=8), publish_at=publish_at.isoformat(), audience={"recipients": people(RECIPIENTS)}
    )
    event_id = run.publish(event)
    run.wait_for(lambda: len(jobs(run, event_id)) == 2, "the policy change's two jobs on the schedule")

    own_redis.pause()
    first = run.start_herald("scheduler", "--interval", "0.5")
    run.wait_for(
        lambda: claims(run, event_id) == {f"claimed by {first.pid}": 2}, "the first scheduler to claim both jobs", 60
    )
    kill_group(first)  # hung in the enqueue, after the claim was committed
    run.fault("scheduler SIGKILLed between claim and enqueue", [event_id])
    claimed_then = claims(run, event_id)
    own_redis.resume()
    run.start_herald("scheduler", "--interval", "0.5")
    done = run.settle([event_id], 90.0)
    run.wait_for(lambda: all(j.state is JobState.DONE for j in jobs(run, event_id)), "both jobs done", timeout=30)

    # The website notice's job hands the publication to a worker: wait for it to be public.
    run.wait_for(lambda: public_marks(run, event_id)[("announcement", "published")] >= 1, "the notice public", 30)
    result = run.figures([event_id], expected=RECIPIENTS, received=Received.of(smtp_sink))
    marks = public_marks(run, event_id)
    print(
        "\n"
        + result.line(
            "scheduler-kill",
            backend,
            f"scheduler SIGKILLed holding 2 claimed jobs, taken again after the {LEASE_S:g} s lease",
        )
    )
    assert claimed_then == {f"claimed by {first.pid}": 2}, "the kill did not land between claim and enqueue"
    assert done or result.lost, "not settled, yet nothing lost?"
    result.check()
    assert marks[("schedule", "ran")] == 2, f"each job must do its work once: {dict(marks)}"
    assert marks[("announcement", "published")] == 1, f"the notice must go up once: {dict(marks)}"
    assert len({a for m in smtp_sink.messages for a in m.rcpt_tos}) == RECIPIENTS


def public_marks(run: ChaosRun, event_id: str) -> Counter[tuple[str, str]]:
    """The event's ledger rows about the public (scheduling, publication), by channel and status."""
    with read_only(run.engine) as conn:
        return Counter(
            (channel, status)
            for channel, status in conn.execute(
                select(ledger.c.channel, ledger.c.status).where(
                    ledger.c.event_id == event_id, ledger.c.recipient_ref == "public"
                )
            )
        )


def jobs(run: ChaosRun, event_id: str) -> list[schedules.ScheduledJob]:
    with read_only(run.engine) as conn:
        return schedules.of_event(conn, event_id)


def claims(run: ChaosRun, event_id: str) -> Counter[str]:
    """The event's jobs by state, a claim named by the pid of the scheduler holding it."""
    with read_only(run.engine) as conn:
        rows = conn.execute(
            select(schedule_rows.c.state, schedule_rows.c.claimed_by).where(schedule_rows.c.event_id == event_id)
        ).all()
    return Counter(
        f"claimed by {who.split(':')[1]}" if state == JobState.CLAIMED.value and who else state for state, who in rows
    )
