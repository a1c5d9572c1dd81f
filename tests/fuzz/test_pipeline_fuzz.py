"""A stream of fuzzed payloads through the whole pipeline, put on the queue as producers do.

A real in-process dramatiq worker on the test's Redis runs herald's actors against SQLite or
PostgreSQL and a real SMTP server; a real scheduler runs beside it (its clock ten years ahead,
so that every policy change's jobs come due now). After the stream, one valid canary event
shows the worker still works. Then: every payload left exactly one intake row, no worker
thread died, every accepted event fanned out to its whole audience, and every recipient
ended terminal (reached, covered or unreached). The figures are printed with ``-s``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from budget import FUZZ, NO_SHRINK, Tally, examples
from hypothesis import given, settings
from sqlalchemy import Engine, func, select
from strategies import POOL, Payload, Stream, streams
from support import Pipeline, incident, people

from worker.config import Settings
from worker.core.clock import utcnow
from worker.core.statuses import ROUTE_TERMINAL
from worker.core.statuses import TERMINAL as DELIVERY_TERMINAL
from worker.intake.events import InlineAudience, PolicyNotice, UserIdsAudience, audience_of
from worker.sandbox.smtp_sink import SmtpSink
from worker.schedule.jobs import derived_id
from worker.schedule.scheduler import Scheduler
from worker.store.intake import event_summary, load_event
from worker.store.recipients import upsert_people
from worker.store.schedules import Job, JobState, of_event
from worker.store.schema import deliveries, events, intake, routes

pytestmark = pytest.mark.fuzz

#: The scheduler's clock runs this far ahead, so that every job of a valid policy change is due.
HORIZON = timedelta(days=3650)

#: How long the pipeline may take, after the last payload was published, to record them all.
INTAKE_TIMEOUT_S = 60.0

#: How long every accepted event may take to reach a terminal outcome for every recipient.
TERMINAL_TIMEOUT_S = 90.0


class EscapeWatch(logging.Handler):
    """Collects the messages actors failed on, from dramatiq's log: per message id the
    exception type, and per actor and exception how often (the cause when a fan-out stalls)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.failed: dict[str, str] = {}
        self.by_actor: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if not record.getMessage().startswith("Failed to process message"):
            return
        message = record.args[0] if isinstance(record.args, tuple) and record.args else None
        message_id = getattr(message, "message_id", None)
        error = record.exc_info[1] if record.exc_info else None
        kind = type(error).__name__ if error is not None else "?"
        if message_id is not None:
            self.failed.setdefault(str(message_id), kind)
        said = " ".join(str(error).split())[:140] if error is not None else ""
        self.by_actor[f"{getattr(message, 'actor_name', '?')}: {kind}: {said}"] += 1

    def summary(self) -> str:
        """Each actor's failures, most frequent first."""
        return "\n  ".join(f"{count} × {what}" for what, count in self.by_actor.most_common(8))

    @contextmanager
    def watching(self) -> Iterator[EscapeWatch]:
        dramatiq_log = logging.getLogger("dramatiq")
        dramatiq_log.addHandler(self)
        try:
            yield self
        finally:
            dramatiq_log.removeHandler(self)


class SchedulerThread:
    """``herald scheduler`` in a thread, ticking with its clock ``HORIZON`` ahead."""

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        # A job in flight must not look stale to a clock ten years ahead.
        ahead = settings.model_copy(update={"stuck_after_s": HORIZON.total_seconds() * 2})
        self.scheduler = Scheduler(ahead, pipeline.engine, pipeline.broker, claimant=f"fuzz-{uuid.uuid4().hex[:6]}")
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fuzz-scheduler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.scheduler.tick(now=utcnow() + HORIZON)
            except Exception as exc:  # recorded and asserted on: a scheduler must not die
                self.errors.append(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")

    def __enter__(self) -> SchedulerThread:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def _intake_since(engine: Engine, after_id: int) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(intake).where(intake.c.id > after_id).order_by(intake.c.id)))


def _last_intake_id(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(intake.c.id), 0))).scalar_one())


def _wait_for_intake(engine: Engine, after_id: int, expected: int, watch: EscapeWatch) -> list[Any]:
    """Wait until ``expected`` payloads have an intake row, or until the count stands still
    while some messages are failing (they escaped ingest and are being retried)."""
    deadline = time.monotonic() + INTAKE_TIMEOUT_S
    last, still_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        rows = _intake_since(engine, after_id)
        if len(rows) >= expected:
            return rows
        if len(rows) != last:
            last, still_since = len(rows), time.monotonic()
        elif watch.failed and time.monotonic() - still_since > 10:
            return rows
        time.sleep(0.1)
    return _intake_since(engine, after_id)


def _import_pool(engine: Engine) -> None:
    """The users that ``user_ids`` and ``all`` audiences find in the recipients table."""
    from worker.intake.events import RecipientIn

    with engine.begin() as conn:
        upsert_people(conn, [RecipientIn(user_id=uid, email=f"{uid}@example.com", name=uid) for uid in POOL])


def _fanout_set(engine: Engine, accepted: list[str], tally: Tally) -> list[str]:
    """The events that must fan out: every accepted one, except a policy change whose notices
    were cancelled (replaced by a newer version) or are due beyond the horizon; plus herald's
    own reminders of changes whose reminder job ran."""
    chosen: list[str] = []
    with engine.connect() as conn:
        for event_id in accepted:
            jobs = {job.job: job for job in of_event(conn, event_id)}
            if not jobs:
                chosen.append(event_id)
                continue
            send = jobs.get(Job.SEND_NOTICES)
            if send is not None and send.state is JobState.DONE:
                chosen.append(event_id)
            elif send is not None and send.state is JobState.CANCELLED:
                tally["policy changes replaced before their notices"] += 1
            else:
                tally["policy changes due beyond the horizon"] += 1
            reminder = jobs.get(Job.REMINDER)
            if reminder is not None and reminder.state is JobState.DONE:
                derived = derived_id(event_id, PolicyNotice.REMINDER)
                if conn.execute(select(events.c.event_id).where(events.c.event_id == derived)).first() is not None:
                    chosen.append(derived)
    return chosen


def _wait_for_schedules(engine: Engine, accepted: list[str], timeout: float = 60.0) -> list[str]:
    """Wait until no job of these events that is due within the horizon is still open."""
    deadline = time.monotonic() + timeout
    horizon = utcnow() + HORIZON - timedelta(minutes=1)
    open_jobs: list[str] = []
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            open_jobs = [
                f"{job.event_id}:{job.job.value}:{job.state.value}"
                for event_id in accepted
                for job in of_event(conn, event_id)
                if job.state in (JobState.PENDING, JobState.CLAIMED, JobState.ENQUEUED) and job.due_at <= horizon
            ]
        if not open_jobs:
            return []
        time.sleep(0.2)
    return open_jobs


def _unfinished(engine: Engine, event_ids: list[str]) -> dict[str, str]:
    """Per event, what is not terminal yet: its fan-out, recipients, deliveries (reading only
    the columns needed, so that one unreadable column does not hide the rest)."""
    left: dict[str, list[str]] = {}
    route_done = [o.value for o in ROUTE_TERMINAL]
    delivery_done = [s.value for s in DELIVERY_TERMINAL]
    with engine.connect() as conn:
        for start in range(0, len(event_ids), 200):
            chunk = event_ids[start : start + 200]
            done = set(
                conn.execute(
                    select(events.c.event_id).where(events.c.event_id.in_(chunk), events.c.fanout_done_at.is_not(None))
                ).scalars()
            )
            for event_id in chunk:
                if event_id not in done:
                    left.setdefault(event_id, []).append("fan-out not done")
            for event_id, outcome, count in conn.execute(
                select(routes.c.event_id, routes.c.outcome, func.count())
                .where(routes.c.event_id.in_(chunk), routes.c.outcome.not_in(route_done))
                .group_by(routes.c.event_id, routes.c.outcome)
            ):
                left.setdefault(event_id, []).append(f"{count} recipients {outcome}")
            for event_id, channel, status, count in conn.execute(
                select(deliveries.c.event_id, deliveries.c.channel, deliveries.c.status, func.count())
                .where(deliveries.c.event_id.in_(chunk), deliveries.c.status.not_in(delivery_done))
                .group_by(deliveries.c.event_id, deliveries.c.channel, deliveries.c.status)
            ):
                left.setdefault(event_id, []).append(f"{count} {channel} deliveries {status}")
    return {event_id: ", ".join(what) for event_id, what in left.items()}


def _wait_terminal(engine: Engine, event_ids: list[str], labels: dict[str, str]) -> str:
    """Wait until every event fanned out and every recipient and delivery is terminal;
    return what is not, naming each event's payload, or an empty string."""
    deadline = time.monotonic() + TERMINAL_TIMEOUT_S
    while True:
        try:
            left = _unfinished(engine, event_ids)
        except Exception as exc:  # a stored event that cannot be read back is a finding too
            return f"reading the events back failed: {type(exc).__name__}: {_one_line(exc)}"
        if not left:
            return ""
        if time.monotonic() > deadline:
            shown = [
                f"{event_id} ({labels.get(event_id.split('@')[0], '?')[:120]}): {what}"
                for event_id, what in left.items()
            ]
            return f"{len(left)} events not terminal after {TERMINAL_TIMEOUT_S:.0f} s:\n  " + "\n  ".join(shown[:10])
        time.sleep(0.2)


def _audience_gaps(engine: Engine, event_ids: list[str], labels: dict[str, str]) -> list[str]:
    """Events that did not reach their whole audience (inline or by id; everybody is checked
    against the known users), or whose summary (``herald events show``) cannot be read."""
    gaps: list[str] = []
    with engine.connect() as conn:
        for event_id in event_ids:
            label = labels.get(event_id.split("@")[0], "?")[:120]
            try:
                summary = event_summary(conn, event_id)
                audience = audience_of(load_event(conn, event_id))
            except Exception as exc:  # stored, but not readable: a finding like any other
                conn.rollback()
                gaps.append(f"{event_id} ({label}): reading it back raised {type(exc).__name__}: {_one_line(exc)}")
                continue
            got = int(conn.execute(select(func.count()).where(routes.c.event_id == event_id)).scalar_one())
            if isinstance(audience, InlineAudience):
                want = len({person.user_id for person in audience.recipients})
            elif isinstance(audience, UserIdsAudience):
                want = len(set(audience.user_ids))
            else:
                want = max(len(POOL), got)  # everybody: at least the users imported for the test
            if summary is None or not summary.fanout_done or got != want:
                gaps.append(
                    f"{event_id} ({label}): {got} of {want} recipients, fan-out done: {summary and summary.fanout_done}"
                )
    return gaps


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def _route_outcomes(engine: Engine, event_ids: list[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    with engine.connect() as conn:
        for start in range(0, len(event_ids), 200):
            chunk = event_ids[start : start + 200]
            rows = conn.execute(
                select(routes.c.outcome, func.count()).where(routes.c.event_id.in_(chunk)).group_by(routes.c.outcome)
            )
            counts.update({outcome: int(count) for outcome, count in rows})
    return counts


def _clip(payload: Payload) -> str:
    return repr(payload)[:300]


@settings(FUZZ, max_examples=examples(3), phases=NO_SHRINK)
@given(stream=streams(size=60))
def test_a_fuzzed_stream_on_the_queue_is_recorded_and_every_accepted_event_reaches_everyone(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink, tmp_path: Path, tally: Tally, stream: Stream
) -> None:
    """Given a stream of valid, mutated and malformed payloads (some sent twice, some reusing
    an event_id with another body), published on the ingest queue as producers do, when
    herald's worker and scheduler run, then every payload has exactly one intake row, the
    worker is alive and still delivers a canary, every accepted event fanned out to its
    whole audience and every recipient ended terminal."""
    marker = uuid.uuid4().hex[:8]
    stream = Stream(payload.fresh(marker) for payload in stream)
    settings_ = make_settings(announcements_dir=tmp_path / "site")
    canary = incident(people(2, prefix=f"fz-canary-{marker}-"))
    with Pipeline(settings_) as pipeline, SchedulerThread(settings_, pipeline) as scheduler:
        with EscapeWatch().watching() as watch:
            _import_pool(pipeline.engine)
            before = _last_intake_id(pipeline.engine)
            started = time.monotonic()
            sent = [pipeline.publish(payload.text) for payload in stream]
            canary_message = pipeline.publish(json.dumps(canary))
            rows = _wait_for_intake(pipeline.engine, before, len(stream) + 1, watch)
            recorded_s = time.monotonic() - started
            accepted = [row.event_id for row in rows if row.outcome == "accepted"]
            open_jobs = _wait_for_schedules(pipeline.engine, accepted)
            fanning = _fanout_set(pipeline.engine, accepted, tally)
            labels = {p.event_id: p.label for p in stream if p.event_id} | {canary["event_id"]: "the canary"}
            not_terminal = _wait_terminal(pipeline.engine, fanning, labels)
            gaps = _audience_gaps(pipeline.engine, fanning, labels)
            by_outcome = _route_outcomes(pipeline.engine, fanning)
            rows = _intake_since(pipeline.engine, before)  # again: a payload recorded twice shows now
            outcomes = Counter(row.outcome for row in rows)
            dead = [t.name for t in [*pipeline.worker.workers, *pipeline.worker.consumers.values()] if not t.is_alive()]
            failed = dict(watch.failed)
            actor_failures = watch.summary()
        elapsed = time.monotonic() - started

    escaped = [f"{kind}: {_clip(stream[sent.index(mid)])}" for mid, kind in failed.items() if mid in sent]
    if canary_message in failed:
        escaped.append(f"{failed[canary_message]}: the canary")
    recipients = sum(by_outcome.values())
    terminal = sum(by_outcome[o.value] for o in ROUTE_TERMINAL)
    lost = (recipients - terminal) + max(len(stream) + 1 - len(rows), 0)
    tally.update(
        {
            "payloads": len(stream),
            "events": len(fanning),
            "recipients": recipients,
            "terminal": terminal,
            "lost": lost,
            **{key: value for key, value in outcomes.items()},
        }
    )
    tally["rejected as conflicts"] += sum(
        1 for row in rows if row.outcome == "rejected" and "different body" in (row.reason or "")
    )
    print(
        f"\n[fuzz] stream of {len(stream)} (+1 canary): intake {dict(outcomes)} in {recorded_s:.1f} s; "
        f"{len(fanning)} events fanned out to {recipients} recipients, {terminal} terminal, lost {lost}; "
        f"emails at the sink {len(smtp_sink.messages)}; {elapsed:.1f} s"
    )

    tally["payloads ingest raised on"] += len(escaped)
    problems = []
    if len(rows) != len(stream) + 1:
        problems.append(
            f"{len(rows)} intake rows for {len(stream) + 1} payloads; ingest raised on these (retried):\n  "
            + "\n  ".join(escaped[:10])
        )
    if dead:
        problems.append(f"worker threads died: {dead}")
    if scheduler.errors:
        problems.append(f"the scheduler failed: {scheduler.errors[:3]}")
    if canary["event_id"] not in fanning:
        problems.append("the canary was not accepted and sent")
    if open_jobs:
        problems.append(f"scheduled jobs still open: {open_jobs[:10]}")
    if not_terminal:
        problems.append(not_terminal + (f"\nactors failed meanwhile:\n  {actor_failures}" if actor_failures else ""))
    if gaps:
        problems.append(f"fan-outs that missed part of their audience: {gaps[:10]}")
    assert not problems, "\n".join(problems)
    assert lost == 0
