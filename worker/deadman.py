"""The dead-man check: nothing may stay non-terminal for ever.

Messages can be lost where no retry reaches them: a process killed between committing a
decision and enqueueing its messages, a Redis restarted without its data, a callback that
never comes. Every ``sweep_interval_s`` one worker (whichever wins the ``timers`` row)
runs this sweep, which finds what has stood still longer than allowed and pushes it on:

* recipients whose stage's confirmation wait is over → settled (next stage or the end of
  the chain; this is also how the plan's waits take effect);
* deliveries pending, retrying or held under an expired lease for ``stuck_after_s`` →
  handed to their channel again (the claims make a second copy harmless);
* messages still only ``sent`` long after the last reconciliation round should have asked
  the provider → asked once more, finally;
* announcements with an unpublished change (unless its pages failed to build
  ``BUILD_ATTEMPTS`` times in a row), and people waiting on one → published;
* fan-outs that stopped moving → their current page is handed on again;
* callbacks still waiting for their delivery after ``callback_retention_s`` → dropped (the
  send they answer was never recorded, and its key was sent again under another id).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import update

from worker.announce.publishing import BUILD_ATTEMPTS
from worker.core.clock import utcnow
from worker.fanout.outbox import Dispatch, cut
from worker.runtime import Runtime
from worker.store import announcements, callbacks, deliveries, outcomes, routes, schedules
from worker.store.engine import read_only
from worker.store.intake import stalled_fanouts, touch_fanout
from worker.store.schema import timers

log = logging.getLogger("herald.sweep")

#: How many rows one sweep looks at per kind; the next sweep takes the rest.
SWEEP_LIMIT = 5_000
TIMER = "sweep"


@dataclass(slots=True)
class SweepResult:
    """What one sweep found and what it asks to send."""

    dispatch: Dispatch = field(default_factory=Dispatch)
    due: int = 0
    stuck: int = 0
    unconfirmed: dict[str, list[str]] = field(default_factory=dict)  # channel -> provider ids
    fanouts: list[tuple[str, str]] = field(default_factory=list)  # (event_id, cursor)
    republished: int = 0
    dropped_callbacks: int = 0

    @property
    def lost(self) -> int:
        """How many things it found stuck (past waits are routine and not counted)."""
        return self.stuck + sum(len(ids) for ids in self.unconfirmed.values()) + len(self.fanouts) + self.republished


def claim_timer(rt: Runtime, interval_s: float) -> bool:
    """Whether this process runs the next sweep: one compare-and-set on the shared timer row."""
    now = utcnow()
    with rt.engine.begin() as conn:
        moved = conn.execute(
            update(timers)
            .where(timers.c.name == TIMER, timers.c.due_at <= now)
            .values(due_at=now + timedelta(seconds=interval_s))
        )
        return bool(moved.rowcount)


def sweep(rt: Runtime) -> SweepResult:
    """Find what stands still and decide how to push it on; the caller enqueues the result."""
    settings = rt.settings
    now = utcnow()
    stuck_before = now - timedelta(seconds=settings.stuck_after_s)
    result = SweepResult()

    with rt.engine.begin() as conn:
        by_event: dict[str, list[str]] = defaultdict(list)
        for event_id, ref in routes.due(conn, now, SWEEP_LIMIT):
            by_event[event_id].append(ref)
        for event_id, refs in by_event.items():
            result.dispatch.extend(rt.router.settle(conn, event_id, refs, now))
            result.due += len(refs)

    with rt.engine.begin() as conn:
        groups: dict[tuple[str, str, int], list[str]] = defaultdict(list)
        for event_id, channel, step, ref, _status in outcomes.stuck(conn, stuck_before, now, SWEEP_LIMIT):
            groups[(event_id, channel, step)].append(ref)
        for (event_id, channel, step), refs in groups.items():
            deliveries.touch(conn, event_id, channel, step, refs)
            result.dispatch.batches += cut(event_id, channel, refs, step, settings.batch_size)
            result.stuck += len(refs)

    # Reconciliation asks after grace, 2×grace, 4×grace …; past the last round plus slack
    # its message must have been lost.
    rounds = settings.confirmation_rounds
    asked_by = timedelta(seconds=settings.confirmation_grace_s * (2**rounds) + settings.stuck_after_s)
    with rt.engine.begin() as conn:
        unconfirmed: dict[str, list[str]] = defaultdict(list)
        for channel, pmid in outcomes.unconfirmed_sent(conn, now - asked_by, SWEEP_LIMIT):
            unconfirmed[channel].append(pmid)
        for pmids in unconfirmed.values():
            deliveries.touch_sent(conn, pmids)
        result.unconfirmed = dict(unconfirmed)

    with rt.engine.begin() as conn:
        waiting = set(announcements.stalled(conn, stuck_before, give_up_after=BUILD_ATTEMPTS))
        announcements.touch(conn, sorted(waiting), now)
        result.dispatch.publish |= waiting
        result.republished = len(waiting)
        for event_id, cursor in stalled_fanouts(conn, stuck_before):
            touch_fanout(conn, event_id)
            result.fanouts.append((event_id, cursor))

    result.dropped_callbacks = _drop_stale_callbacks(rt, now - timedelta(seconds=settings.callback_retention_s))

    with read_only(rt.engine) as conn:
        overdue = schedules.overdue(conn, now - timedelta(seconds=max(60.0, 4 * settings.scheduler_interval_s)))
    if overdue:
        # Week-long waits are the scheduler's, not the sweep's: say so loudly, once a sweep.
        log.warning("%d scheduled jobs are overdue; is `herald scheduler` running?", overdue)
    if result.due:
        log.info("%d recipients reached the end of their stage's confirmation wait", result.due)
    if result.lost:
        log.warning(
            "dead-man check: %d deliveries stuck, %d unconfirmed, %d announcements and %d fan-outs pushed on",
            result.stuck,
            sum(len(ids) for ids in result.unconfirmed.values()),
            result.republished,
            len(result.fanouts),
        )
    return result


def _drop_stale_callbacks(rt: Runtime, received_before: datetime) -> int:
    """Drop callbacks that never matched a delivery; a read first, so an idle sweep writes nothing."""
    with read_only(rt.engine) as conn:
        if not callbacks.callbacks_received_before(conn, received_before):
            return 0
    with rt.engine.begin() as conn:
        dropped = callbacks.drop_stale_callbacks(conn, received_before, SWEEP_LIMIT)
    log.warning("dead-man check: dropped %d provider callbacks that never matched a delivery", dropped)
    return dropped
