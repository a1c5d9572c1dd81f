"""Policy-change notices on a durable schedule: what a change needs done, and when.

The privacy policy promises a notice on the website at least a week before a substantial
change takes effect. An accepted policy change therefore gets jobs in the ``schedules``
table rather than an immediate fan-out: the website notice (``publish_notice``, at
``publish_at`` or at once), the individual notices (``send_notices``, at ``notify_at`` or
with the website notice) and an optional reminder (``reminder``, at ``remind_at``).
``herald scheduler`` hands each job to the workers when it comes due (``worker.schedule.scheduler``);
this module decides what the jobs are and does their work.

A new version of a document replaces one whose jobs are still to run: those are
cancelled, and a change whose notice already went public is withdrawn publicly. Every
step is written to the ledger under the recipient ``public``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection, select

from worker.announce.site import announcement_slug
from worker.core.statuses import RouteMark
from worker.fanout.outbox import Dispatch
from worker.intake.events import Event, PolicyChange, PolicyNotice, body_digest, topic_of
from worker.store import announcements, event_contacts, schedules
from worker.store.intake import accept_event, fanout_cursor, load_event
from worker.store.ledger import Note, note
from worker.store.schedules import Job, JobState
from worker.store.schema import events

#: The ledger's recipient for rows about the public rather than a person.
PUBLIC = "public"

#: The jobs that make up a change's notices (a withdrawal, once due, is never cancelled).
_NOTICE_JOBS = (Job.PUBLISH_NOTICE, Job.SEND_NOTICES, Job.REMINDER)

_JOB_WORDS = {
    Job.PUBLISH_NOTICE: "website notice goes public",
    Job.SEND_NOTICES: "individual notices go out",
    Job.REMINDER: "reminder goes out",
    Job.WITHDRAW: "withdrawal notice goes public",
}


def jobs_for(event: PolicyChange, now: datetime) -> list[tuple[Job, datetime]]:
    """The jobs a policy change needs and when each is due (never before now)."""
    data = event.data
    public = event.notice_at(now)
    jobs = [(Job.PUBLISH_NOTICE, public), (Job.SEND_NOTICES, max(now, data.notify_at) if data.notify_at else public)]
    if data.remind_at is not None:
        jobs.append((Job.REMINDER, max(now, data.remind_at)))
    return jobs


def describe(job: Job) -> str:
    """What a job does, in words for a schedule listing."""
    return _JOB_WORDS[job]


@dataclass
class Scheduled:
    """What accepting one policy change scheduled, and what it replaced."""

    jobs: list[tuple[Job, datetime]] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # event ids of earlier versions cancelled
    withdrawn: list[str] = field(default_factory=list)  # of those, the ones already public


def schedule_change(conn: Connection, event: PolicyChange, now: datetime) -> Scheduled:
    """Put an accepted policy change on the schedule, replacing earlier pending versions.

    Runs in the transaction that stored the event, so a change is never stored without its
    jobs, nor scheduled twice.
    """
    data = event.data
    result = Scheduled(jobs=jobs_for(event, now))
    schedules.add(conn, event.event_id, result.jobs, now)
    notes = [
        Note(
            event.event_id,
            PUBLIC,
            "schedule",
            0,
            RouteMark.SCHEDULED,
            f"{describe(job)} at {due.isoformat(timespec='seconds')}",
        )
        for job, due in result.jobs
    ]
    if data.override is not None:
        notes.append(
            Note(
                event.event_id,
                PUBLIC,
                "policy",
                0,
                RouteMark.OVERRIDE,
                f"lead-time rule waived by {data.override.operator}: {data.override.legal_basis}",
                code="lead-time",
            )
        )
    note(conn, notes)
    for earlier in _earlier_versions(conn, event, now):
        _call_off(conn, earlier, f"replaced by version {data.version} ({event.event_id})", now, result)
    return result


def cancel_change(conn: Connection, event_id: str, *, operator: str, reason: str, now: datetime) -> Scheduled:
    """Cancel a policy change's jobs still to run; if its notice is public, withdraw it publicly."""
    result = Scheduled()
    _call_off(conn, event_id, f"cancelled by {operator}: {reason}", now, result)
    return result


def _call_off(conn: Connection, event_id: str, why: str, now: datetime, result: Scheduled) -> None:
    """Cancel a change's notice jobs, and withdraw it publicly if its notice is out already."""
    cancelled = schedules.cancel(conn, event_id, why, now, jobs=_NOTICE_JOBS)
    jobs = schedules.of_event(conn, event_id)
    public = any(j.job is Job.PUBLISH_NOTICE and j.state is JobState.DONE for j in jobs)
    withdraw = public and not any(j.job is Job.WITHDRAW for j in jobs)
    if not cancelled and not withdraw:
        return
    result.replaced.append(event_id)
    what = f"{_jobs_text(cancelled)} " if cancelled else ""
    note(conn, [Note(event_id, PUBLIC, "schedule", 0, RouteMark.CANCELLED, f"{what}{why}")])
    if withdraw:
        schedules.add(conn, event_id, [(Job.WITHDRAW, now)], now)
        result.withdrawn.append(event_id)


def cancel_reminder(conn: Connection, event_id: str, *, operator: str, reason: str, now: datetime) -> bool:
    """Cancel only a change's reminder."""
    why = f"cancelled by {operator}: {reason}"
    cancelled = schedules.cancel(conn, event_id, why, now, jobs=[Job.REMINDER])
    if cancelled:
        note(conn, [Note(event_id, PUBLIC, "schedule", 0, RouteMark.CANCELLED, f"reminder {why}")])
    return bool(cancelled)


@dataclass
class JobWork:
    """What running a job asks the worker to send next."""

    dispatch: Dispatch = field(default_factory=Dispatch)
    fanout: tuple[str, str] | None = None  # (event_id, cursor) of a fan-out to start
    done: bool = False


def run_job(conn: Connection, job: schedules.ScheduledJob, event: Event, now: datetime) -> JobWork:
    """Do one due job inside the caller's transaction; doing it twice changes nothing.

    Publishing is asked of the publisher (``dispatch.publish``) and notices of the fan-out
    (``fanout``); both are idempotent, so a job the broker delivered twice sends once.
    """
    work = JobWork()
    if job.state in (JobState.DONE, JobState.CANCELLED) or not isinstance(event, PolicyChange):
        return work
    if job.job is Job.PUBLISH_NOTICE:
        work.dispatch.publish.add(_announcement(conn, event, now))
    elif job.job is Job.SEND_NOTICES:
        cursor = fanout_cursor(conn, event.event_id)
        if cursor is not None:
            work.fanout = (event.event_id, cursor)
    elif job.job is Job.REMINDER:
        derived = derive(conn, event, PolicyNotice.REMINDER, now)
        work.dispatch.publish.add(_announcement(conn, event, now))
        cursor = fanout_cursor(conn, derived)
        if cursor is not None:
            work.fanout = (derived, cursor)
    elif job.job is Job.WITHDRAW:
        derive(conn, event, PolicyNotice.WITHDRAWAL, now)
        work.dispatch.publish.add(_announcement(conn, event, now))
    work.done = schedules.finish(conn, job.id, now)
    if not work.done and job.job is Job.PUBLISH_NOTICE:
        # Cancelled while it was being published: the notice is out, so withdraw it too.
        schedules.add(conn, event.event_id, [(Job.WITHDRAW, now)], now)
    mark = f"{describe(job.job)} ({job.job.value} job {job.id})"
    note(conn, [Note(event.event_id, PUBLIC, "schedule", 0, RouteMark.RAN, mark)])
    return work


def derive(conn: Connection, parent: PolicyChange, notice: PolicyNotice, now: datetime) -> str:
    """Store herald's own reminder or withdrawal of a change, as an event of the same topic
    (so it joins the announcement's timeline) and under the parent's routing plan."""
    event_id = derived_id(parent.event_id, notice)
    body = json.loads(parent.model_dump_json(by_alias=False))
    body["event_id"] = event_id
    body["source"] = "herald"
    body["occurred_at"] = now.isoformat()
    body["data"]["notice"] = notice.value
    plan = conn.execute(select(events.c.plan).where(events.c.event_id == parent.event_id)).scalar_one_or_none()
    child = PolicyChange.model_validate(body)
    existing = conn.execute(select(events.c.event_id).where(events.c.event_id == event_id)).first()
    if existing is None:
        accept_event(conn, child, body_digest(body), body, plan=plan)
        event_contacts.copy_given(conn, parent.event_id, event_id)  # the same people, reached the same way
        announcements.bump(conn, topic_of(child), now)
    return event_id


def derived_id(parent_id: str, notice: PolicyNotice) -> str:
    """The id of herald's reminder or withdrawal of ``parent_id`` (at most 128 characters)."""
    suffix = f"@{notice.value}"
    if len(parent_id) + len(suffix) <= 128:
        return parent_id + suffix
    digest = hashlib.sha256(parent_id.encode()).hexdigest()[:8]
    return f"{parent_id[: 128 - len(suffix) - 9]}-{digest}{suffix}"


def _announcement(conn: Connection, event: PolicyChange, now: datetime) -> str:
    return announcements.ensure(conn, topic_of(event), event.type, event.event_id, now, announcement_slug).id


def _earlier_versions(conn: Connection, event: PolicyChange, now: datetime) -> list[str]:
    """Other versions of the same document that are not in force yet and not withdrawn:
    the new version replaces them."""
    key = event.data.document_key.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    rows = conn.execute(
        select(events.c.event_id).where(
            events.c.event_type == "policy_change",
            events.c.topic.like(f"policy:{key}:%", escape="\\"),
            events.c.event_id != event.event_id,
        )
    )
    earlier: list[str] = []
    for (event_id,) in rows:
        jobs = schedules.of_event(conn, event_id)
        if not jobs or any(j.job is Job.WITHDRAW for j in jobs):
            continue  # herald's own reminders and withdrawals have no jobs; withdrawn ones are done with
        other = load_event(conn, event_id)
        if isinstance(other, PolicyChange) and other.data.effective_at > now:
            earlier.append(event_id)
    return earlier


def notices_started(conn: Connection, event_id: str) -> bool:
    """Whether a policy change's individual notices have been handed to the fan-out."""
    return any(j.job is Job.SEND_NOTICES and j.state is JobState.DONE for j in schedules.of_event(conn, event_id))


def _jobs_text(jobs: list[Job]) -> str:
    names = ", ".join(sorted(j.value for j in jobs))
    return f"{names}:"
