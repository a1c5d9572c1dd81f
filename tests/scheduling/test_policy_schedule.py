"""Policy changes at least a week ahead, on a durable schedule, with a controllable clock:
the scheduler is ticked at chosen times (``Scheduler.tick(now=...)``), never slept for."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from support import Pipeline, people, policy_change, wait_for

from worker.config import Settings
from worker.schedule.scheduler import Scheduler
from worker.store import schedules
from worker.store.intake import list_rejections
from worker.store.schedules import Job, JobState
from worker.store.schema import announcements, events


def jobs_of(pipeline: Pipeline, event_id: str) -> dict[Job, schedules.ScheduledJob]:
    with pipeline.engine.connect() as conn:
        return {job.job: job for job in schedules.of_event(conn, event_id)}


def accepted(pipeline: Pipeline, event_id: str) -> bool:
    with pipeline.engine.connect() as conn:
        return conn.execute(select(events.c.event_id).where(events.c.event_id == event_id)).first() is not None


def test_a_substantial_change_six_days_and_23_hours_ahead_is_refused_on_the_queue_naming_the_earliest_time(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    event = policy_change(ahead=timedelta(days=6, hours=23))
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        wait_for(lambda: bool(list_rejections_of(pipeline, event["event_id"])))
        (rejection,) = list_rejections_of(pipeline, event["event_id"])
    assert "at least 7 days (168 h) before it takes effect" in rejection.reason
    earliest = datetime.fromisoformat(re.search(r"earliest allowed effective_at is (\S+)$", rejection.reason)[1])  # type: ignore[index]
    effective = datetime.fromisoformat(event["data"]["effective_at"])
    assert timedelta(hours=1) - timedelta(seconds=5) <= earliest - effective <= timedelta(hours=1, seconds=5)


def list_rejections_of(pipeline: Pipeline, event_id: str) -> list[Any]:
    with pipeline.engine.connect() as conn:
        return [r for r in list_rejections(conn) if r.event_id == event_id]


def test_a_change_seven_days_ahead_goes_public_at_its_time_then_everyone_is_told(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(announcements_dir=tmp_path / "site")
    now = datetime.now(UTC)
    publish_at = now + timedelta(hours=2)
    event = policy_change(ahead=timedelta(days=7, hours=3), publish_at=publish_at.isoformat())
    event_id = event["event_id"]
    with Pipeline(settings) as pipeline:
        scheduler = Scheduler(settings, pipeline.engine, pipeline.broker)
        pipeline.publish(event)
        wait_for(lambda: accepted(pipeline, event_id))
        jobs = jobs_of(pipeline, event_id)
        assert {j: (job.state, job.due_at) for j, job in jobs.items()} == {
            Job.PUBLISH_NOTICE: (JobState.PENDING, publish_at),
            Job.SEND_NOTICES: (JobState.PENDING, publish_at),
        }

        assert scheduler.tick(now=now).claimed == 0  # nothing is due yet: nothing public, nobody told
        assert scheduler.tick(now=publish_at - timedelta(seconds=1)).claimed == 0
        with pipeline.engine.connect() as conn:
            assert conn.execute(select(announcements)).first() is None
        assert pipeline.outcomes(event_id) == {}

        assert scheduler.tick(now=publish_at).enqueued == 2
        pipeline.wait_terminal([event_id], timeout=60)
        wait_for(lambda: all(j.state is JobState.DONE for j in jobs_of(pipeline, event_id).values()))
        with pipeline.engine.connect() as conn:
            (announcement,) = conn.execute(select(announcements)).all()
        rows = pipeline.ledger_rows(event_id)
        outcomes = pipeline.outcomes(event_id)

    assert announcement.first_public_at is not None and announcement.topic == "policy:privacy_policy:2027-01"
    assert outcomes == {"reached": 4}
    page = (settings.resolved_announcements_dir / "en").glob("*.html")
    assert any("Clearer rules on how long we keep your data" in p.read_text() for p in page)
    marks = Counter((r.channel, r.status) for r in rows if r.recipient_ref == "public")
    assert marks[("schedule", "scheduled")] == 2 and marks[("schedule", "ran")] == 2
    assert marks[("announcement", "published")] == 1
    assert Counter(r.channel for r in rows if r.status == "delivered") == {"email": 4, "insite": 4}


def test_an_override_lets_a_change_through_and_the_ledger_names_the_basis_and_the_operator(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    event = policy_change(
        ahead=timedelta(days=2),
        override={"legal_basis": "Court order 2026/117 requires the change by Friday", "operator": "A. Legal"},
    )
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        wait_for(lambda: accepted(pipeline, event["event_id"]))
        wait_for(lambda: any(r.status == "override" for r in pipeline.ledger_rows(event["event_id"])))
        (row,) = [r for r in pipeline.ledger_rows(event["event_id"]) if r.status == "override"]
    assert row.recipient_ref == "public" and row.channel == "policy"
    assert "A. Legal" in row.reason and "Court order 2026/117" in row.reason


@pytest.mark.parametrize("rows", [500])
def test_two_schedulers_at_once_enqueue_each_due_job_exactly_once(
    make_settings: Callable[..., Settings], rows: int
) -> None:
    """Both race over the same 500 due rows in small batches; each row goes out once."""
    import threading

    settings = make_settings()
    now = datetime.now(UTC)
    pipeline = Pipeline(settings, threads=1)  # no worker runs: the queue shows exactly what was enqueued
    try:
        with pipeline.engine.begin() as conn:
            for i in range(rows):
                schedules.add(conn, f"evt-{i:04d}", [(Job.PUBLISH_NOTICE, now - timedelta(seconds=i))], now)
        first = Scheduler(settings, pipeline.engine, pipeline.broker, claimant="scheduler-a")
        second = Scheduler(settings, pipeline.engine, pipeline.broker, claimant="scheduler-b")
        counts: dict[str, int] = {}

        def run(scheduler: Scheduler) -> None:
            total = 0
            while (step := scheduler.tick(now=now, batch=25)).claimed:
                total += step.enqueued
            counts[scheduler.claimant] = total

        threads = [threading.Thread(target=run, args=(s,)) for s in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        queued = pipeline.broker.client.hgetall(f"{settings.broker_namespace}:herald.control.msgs")
        with pipeline.engine.connect() as conn:
            states = Counter((j.state, j.enqueues) for j in schedules.listing(conn, include_finished=True, limit=1000))
    finally:
        pipeline.broker.close()
        pipeline.engine.dispose()

    job_ids = Counter(json.loads(body)["args"][0] for body in queued.values())
    assert len(job_ids) == rows and set(job_ids.values()) == {1}, "a job was enqueued twice or not at all"
    assert states == {(JobState.ENQUEUED, 1): rows}
    assert sum(counts.values()) == rows
    print(f"\ntwo schedulers over {rows} due jobs: {counts}")


def test_a_scheduler_killed_between_claiming_and_enqueueing_loses_nothing_and_sends_once(
    make_settings: Callable[..., Settings], smtp_sink: Any, tmp_path: Path
) -> None:
    settings = make_settings(announcements_dir=tmp_path / "site", scheduler_lease_s=30.0)
    event = policy_change(ahead=timedelta(days=8))
    event_id = event["event_id"]
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        wait_for(lambda: accepted(pipeline, event_id))
        now = datetime.now(UTC)
        # The first scheduler claims both jobs, then dies before it enqueues anything.
        with pipeline.engine.begin() as conn:
            claimed = schedules.claim_due(
                conn, now, claimant="dead", lease=timedelta(seconds=30), stale_after=timedelta(minutes=15)
            )
        assert {j.job for j in claimed} == {Job.PUBLISH_NOTICE, Job.SEND_NOTICES}
        survivor = Scheduler(settings, pipeline.engine, pipeline.broker, claimant="survivor")
        assert survivor.tick(now=now + timedelta(seconds=10)).claimed == 0  # the dead one's lease still holds
        assert survivor.tick(now=now + timedelta(seconds=31)).enqueued == 2  # recovered
        pipeline.wait_terminal([event_id], timeout=60)
        wait_for(lambda: all(j.state is JobState.DONE for j in jobs_of(pipeline, event_id).values()))
        # And a job the broker delivers twice (a scheduler that died after enqueueing, before
        # recording it) does its work once: hand both jobs over again.
        for job in jobs_of(pipeline, event_id).values():
            pipeline.broker.enqueue(job_message_of(job.id))
        time.sleep(1.0)
        rows = pipeline.ledger_rows(event_id)
    assert sorted(a for m in smtp_sink.messages for a in m.rcpt_tos) == sorted(p["email"] for p in people(4))
    assert Counter(r.status for r in rows if r.channel == "announcement") == {"published": 1}


def job_message_of(job_id: int) -> Any:
    from worker.schedule.scheduler import job_message

    return job_message(job_id)


def test_a_job_whose_message_redis_lost_is_claimed_again_once_it_is_stale(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(announcements_dir=tmp_path / "site", stuck_after_s=60.0)
    event = policy_change(ahead=timedelta(days=8))
    pipeline = Pipeline(settings, threads=1)  # no worker: the messages just sit in Redis
    try:
        pipeline.publish(event)
        ingest = Pipeline(settings)
        with ingest:
            wait_for(lambda: accepted(ingest, event["event_id"]))
        now = datetime.now(UTC)
        scheduler = Scheduler(settings, pipeline.engine, pipeline.broker)
        assert scheduler.tick(now=now).enqueued == 2
        for key in pipeline.broker.client.scan_iter(f"{settings.broker_namespace}:herald.control*"):
            pipeline.broker.client.delete(key)  # Redis restarted without its data
        assert scheduler.tick(now=now + timedelta(seconds=30)).claimed == 0
        assert scheduler.tick(now=now + timedelta(seconds=61)).enqueued == 2
        with pipeline.engine.connect() as conn:
            assert [j.enqueues for j in schedules.of_event(conn, event["event_id"])] == [2, 2]
    finally:
        pipeline.broker.close()
        pipeline.engine.dispose()


def test_a_new_version_replaces_a_pending_one_and_its_week_starts_again(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(announcements_dir=tmp_path / "site")
    later = datetime.now(UTC) + timedelta(days=1)
    first = policy_change(ahead=timedelta(days=9), version="2027-01", publish_at=later.isoformat())
    too_soon = policy_change(ahead=timedelta(days=6), version="2027-02")
    second = policy_change(ahead=timedelta(days=8), version="2027-02")
    with Pipeline(settings) as pipeline:
        pipeline.publish(first)
        wait_for(lambda: accepted(pipeline, first["event_id"]))
        # The replacement is substantial too: its own week counts from now, not from version one's.
        pipeline.publish(too_soon)
        wait_for(lambda: bool(list_rejections_of(pipeline, too_soon["event_id"])))
        assert {j.state for j in jobs_of(pipeline, first["event_id"]).values()} == {JobState.PENDING}
        pipeline.publish(second)
        wait_for(lambda: accepted(pipeline, second["event_id"]))
        old, new = jobs_of(pipeline, first["event_id"]), jobs_of(pipeline, second["event_id"])
        cancelled = [r for r in pipeline.ledger_rows(first["event_id"]) if r.status == "cancelled"]
    assert {j.state for j in old.values()} == {JobState.CANCELLED}
    assert all("replaced by version 2027-02" in (j.note or "") for j in old.values())
    assert Job.WITHDRAW not in old  # it never went public: nothing to withdraw
    assert {j.state for j in new.values()} == {JobState.PENDING}
    assert len(cancelled) == 1 and second["event_id"] in cancelled[0].reason


def test_cancelling_after_the_notice_went_public_publishes_a_withdrawal(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from worker.schedule.jobs import cancel_change

    settings = make_settings(announcements_dir=tmp_path / "site")
    now = datetime.now(UTC)
    notify_at = now + timedelta(days=2)
    event = policy_change(ahead=timedelta(days=10), notify_at=notify_at.isoformat())
    event_id = event["event_id"]
    with Pipeline(settings) as pipeline:
        scheduler = Scheduler(settings, pipeline.engine, pipeline.broker)
        pipeline.publish(event)
        wait_for(lambda: accepted(pipeline, event_id))
        now = datetime.now(UTC)
        assert scheduler.tick(now=now).enqueued == 1  # the website notice only; the emails wait two days
        wait_for(lambda: jobs_of(pipeline, event_id)[Job.PUBLISH_NOTICE].state is JobState.DONE)
        wait_for(lambda: bool(published_revisions(pipeline)))
        with pipeline.engine.begin() as conn:
            result = cancel_change(conn, event_id, operator="B. Counsel", reason="drafting error", now=now)
        assert result.withdrawn == [event_id]
        assert scheduler.tick(now=now + timedelta(seconds=1)).enqueued == 1  # the withdrawal
        wait_for(lambda: max(published_revisions(pipeline)) >= 2)
        jobs = jobs_of(pipeline, event_id)
        (announcement,) = published_revisions(pipeline)
        page = next((settings.resolved_announcements_dir / "en").glob("policy-*.html")).read_text()
        outcomes = pipeline.outcomes(event_id)
    assert jobs[Job.SEND_NOTICES].state is JobState.CANCELLED and "B. Counsel" in (jobs[Job.SEND_NOTICES].note or "")
    assert jobs[Job.WITHDRAW].state is JobState.DONE
    assert announcement == 2
    assert "We have withdrawn the planned change to our Privacy Policy" in page
    assert outcomes == {}  # nobody was sent the change, so nobody needs the withdrawal one by one


def published_revisions(pipeline: Pipeline) -> list[int]:
    with pipeline.engine.connect() as conn:
        return [r.published_revision for r in conn.execute(select(announcements)) if r.published_revision]


def test_the_reminder_goes_out_at_its_time_to_the_same_people_and_joins_the_timeline(
    make_settings: Callable[..., Settings], smtp_sink: Any, tmp_path: Path
) -> None:
    settings = make_settings(announcements_dir=tmp_path / "site")
    remind_at = datetime.now(UTC) + timedelta(days=6)
    event = policy_change(ahead=timedelta(days=8), remind_at=remind_at.isoformat())
    event_id = event["event_id"]
    with Pipeline(settings) as pipeline:
        scheduler = Scheduler(settings, pipeline.engine, pipeline.broker)
        pipeline.publish(event)
        wait_for(lambda: accepted(pipeline, event_id))
        assert scheduler.tick(now=datetime.now(UTC)).enqueued == 2
        pipeline.wait_terminal([event_id], timeout=60)
        assert smtp_sink.wait_for(4, timeout=10)
        assert scheduler.tick(now=remind_at - timedelta(minutes=1)).claimed == 0
        assert scheduler.tick(now=remind_at).enqueued == 1
        reminder_id = f"{event_id}@reminder"
        wait_for(lambda: accepted(pipeline, reminder_id))
        pipeline.wait_terminal([reminder_id], timeout=60)
        wait_for(lambda: published_revisions(pipeline) == [2])
        page = next((settings.resolved_announcements_dir / "en").glob("policy-*.html")).read_text()
    assert smtp_sink.wait_for(8, timeout=10)
    reminders = [m for m in smtp_sink.messages if m.subject.startswith(("Reminder:", "【提醒】"))]
    assert sorted(a for m in reminders for a in m.rcpt_tos) == sorted(p["email"] for p in people(4))
    assert "Reminder: the new version (2027-01) of our Privacy Policy takes effect" in page


def test_a_new_version_withdraws_an_earlier_one_that_was_announced_but_is_not_in_force_yet(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(announcements_dir=tmp_path / "site")
    first = policy_change(ahead=timedelta(days=9), version="2027-01")
    second = policy_change(ahead=timedelta(days=8), version="2027-02")
    with Pipeline(settings) as pipeline:
        scheduler = Scheduler(settings, pipeline.engine, pipeline.broker)
        pipeline.publish(first)
        wait_for(lambda: accepted(pipeline, first["event_id"]))
        scheduler.tick(now=datetime.now(UTC))
        pipeline.wait_terminal([first["event_id"]], timeout=60)
        wait_for(lambda: all(j.state is JobState.DONE for j in jobs_of(pipeline, first["event_id"]).values()))
        pipeline.publish(second)
        wait_for(lambda: accepted(pipeline, second["event_id"]))
        old = jobs_of(pipeline, first["event_id"])
    assert old[Job.WITHDRAW].state is JobState.PENDING  # everyone was told of 2027-01: withdraw it publicly
    assert {old[j].state for j in (Job.PUBLISH_NOTICE, Job.SEND_NOTICES)} == {JobState.DONE}
