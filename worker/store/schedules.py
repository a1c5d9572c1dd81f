"""The durable schedule: jobs due at a time of their own, claimed safely by any number of schedulers.

A job moves ``pending → claimed → enqueued → done`` (or to ``cancelled`` from any state
but done). Claiming is one statement that takes due rows nobody holds: on PostgreSQL with
``FOR UPDATE SKIP LOCKED``, so schedulers running at once never wait for, or take, each
other's rows; on SQLite every writer already holds the database's one write lock
(``BEGIN IMMEDIATE``), which serialises the claims. A claim is a lease: a scheduler that
dies after claiming but before enqueueing leaves rows whose lease runs out, and the next
claim takes them again. A job's work is idempotent, so a job handed to the broker twice
(a scheduler that died after enqueueing but before saying so) still does its work once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, update

from worker.core.clock import as_utc
from worker.store.dialect import insert_ignoring_conflicts
from worker.store.schema import schedules


class Job(str, Enum):
    """What a scheduled row does when it comes due."""

    PUBLISH_NOTICE = "publish_notice"  # the website notice of a policy change goes public
    SEND_NOTICES = "send_notices"  # the individual notices go out (the event's fan-out starts)
    REMINDER = "reminder"  # a reminder before the change takes effect
    WITHDRAW = "withdraw"  # a withdrawal notice for a change cancelled after it went public


class JobState(str, Enum):
    """Where a scheduled job stands."""

    PENDING = "pending"
    CLAIMED = "claimed"
    ENQUEUED = "enqueued"
    DONE = "done"
    CANCELLED = "cancelled"


_OPEN = (JobState.PENDING.value, JobState.CLAIMED.value, JobState.ENQUEUED.value)


@dataclass(frozen=True, slots=True)
class ScheduledJob:
    """One row of the schedule."""

    id: int
    event_id: str
    job: Job
    due_at: datetime
    state: JobState
    enqueues: int
    note: str | None
    done_at: datetime | None


def _job(row: Any) -> ScheduledJob:
    return ScheduledJob(
        id=row.id,
        event_id=row.event_id,
        job=Job(row.job),
        due_at=as_utc(row.due_at),
        state=JobState(row.state),
        enqueues=row.enqueues,
        note=row.note,
        done_at=as_utc(row.done_at) if row.done_at is not None else None,
    )


def add(conn: Connection, event_id: str, jobs: Iterable[tuple[Job, datetime]], now: datetime) -> None:
    """Schedule an event's jobs; a job the event already has is left as it is."""
    rows = [
        {
            "event_id": event_id,
            "job": job.value,
            "due_at": due,
            "state": JobState.PENDING.value,
            "enqueues": 0,
            "created_at": now,
            "updated_at": now,
        }
        for job, due in jobs
    ]
    insert_ignoring_conflicts(conn, schedules, rows, "event_id", "job")


def claim_due(
    conn: Connection, now: datetime, *, claimant: str, lease: timedelta, stale_after: timedelta, limit: int = 100
) -> list[ScheduledJob]:
    """Claim due jobs for ``claimant``: pending ones, claims whose lease ran out, and jobs
    enqueued long ago but never done (their message was lost with a Redis that forgot it)."""
    takeable = or_(
        and_(schedules.c.state == JobState.PENDING.value, schedules.c.due_at <= now),
        and_(schedules.c.state == JobState.CLAIMED.value, schedules.c.lease_until < now),
        and_(schedules.c.state == JobState.ENQUEUED.value, schedules.c.enqueued_at < now - stale_after),
    )
    due = select(schedules.c.id).where(takeable).order_by(schedules.c.due_at).limit(limit)
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(schedules)
        .where(schedules.c.id.in_(due.scalar_subquery()), takeable)
        .values(state=JobState.CLAIMED.value, claimed_by=claimant, lease_until=now + lease, updated_at=now)
        .returning(*schedules.c)
    )
    return sorted((_job(row) for row in conn.execute(stmt)), key=lambda j: (j.due_at, j.id))


def mark_enqueued(conn: Connection, ids: Sequence[int], claimant: str, now: datetime) -> int:
    """Record that the claimant handed these jobs to the broker; returns how many it still held."""
    if not ids:
        return 0
    result = conn.execute(
        update(schedules)
        .where(
            schedules.c.id.in_(list(ids)),
            schedules.c.state == JobState.CLAIMED.value,
            schedules.c.claimed_by == claimant,
        )
        .values(
            state=JobState.ENQUEUED.value,
            enqueued_at=now,
            enqueues=schedules.c.enqueues + 1,
            lease_until=None,
            updated_at=now,
        )
    )
    return int(result.rowcount)


def get(conn: Connection, job_id: int) -> ScheduledJob | None:
    """One job by id."""
    row = conn.execute(select(schedules).where(schedules.c.id == job_id)).one_or_none()
    return _job(row) if row is not None else None


def of_event(conn: Connection, event_id: str) -> list[ScheduledJob]:
    """An event's jobs, in due order."""
    rows = conn.execute(select(schedules).where(schedules.c.event_id == event_id).order_by(schedules.c.due_at))
    return [_job(row) for row in rows]


def finish(conn: Connection, job_id: int, now: datetime) -> bool:
    """Mark a job done; False when it was cancelled (or finished) meanwhile."""
    result = conn.execute(
        update(schedules)
        .where(schedules.c.id == job_id, schedules.c.state.in_(_OPEN))
        .values(state=JobState.DONE.value, done_at=now, lease_until=None, updated_at=now)
    )
    return bool(result.rowcount)


def cancel(conn: Connection, event_id: str, note: str, now: datetime, jobs: Sequence[Job] | None = None) -> list[Job]:
    """Cancel an event's jobs that are not done yet (all, or only ``jobs``); returns those cancelled."""
    condition = and_(schedules.c.event_id == event_id, schedules.c.state.in_(_OPEN))
    if jobs is not None:
        condition = and_(condition, schedules.c.job.in_([j.value for j in jobs]))
    rows = conn.execute(
        update(schedules)
        .where(condition)
        .values(state=JobState.CANCELLED.value, note=note, lease_until=None, updated_at=now)
        .returning(schedules.c.job)
    )
    return [Job(job) for (job,) in rows]


def listing(conn: Connection, *, include_finished: bool = False, limit: int = 200) -> list[ScheduledJob]:
    """Jobs in due order: those still to run, or every one."""
    stmt = select(schedules).order_by(schedules.c.due_at, schedules.c.id).limit(limit)
    if not include_finished:
        stmt = stmt.where(schedules.c.state.in_(_OPEN))
    return [_job(row) for row in conn.execute(stmt)]


def overdue(conn: Connection, before: datetime) -> int:
    """How many jobs were due before ``before`` and nobody has claimed (no scheduler runs?)."""
    stmt = select(func.count()).where(schedules.c.state == JobState.PENDING.value, schedules.c.due_at < before)
    return int(conn.execute(stmt).scalar_one())
