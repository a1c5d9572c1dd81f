"""``herald scheduler``: hands due jobs of the durable schedule to the workers.

Each tick claims the due jobs (a lease, safe with any number of schedulers: see
``worker.store.schedules``), puts one ``run_schedule`` message per job on the broker, and
then records them as enqueued. The clock is a parameter (``tick(now=...)``), so tests step
through a week without sleeping. A scheduler that dies anywhere in a tick loses nothing:
claimed jobs come back when their lease runs out; jobs enqueued twice do their work once.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import dramatiq
from sqlalchemy import Engine

from worker.broker import CONTROL_QUEUE, publish
from worker.config import Settings
from worker.core.clock import utcnow
from worker.store import schedules

log = logging.getLogger("herald.scheduler")

#: The actor that runs one scheduled job (``worker.actors``).
RUN_ACTOR = "run_schedule"


def job_message(job_id: int) -> dramatiq.Message[Any]:
    """The message that runs one scheduled job."""
    return dramatiq.Message(queue_name=CONTROL_QUEUE, actor_name=RUN_ACTOR, args=(job_id,), kwargs={}, options={})


@dataclass(frozen=True, slots=True)
class Tick:
    """What one tick did."""

    claimed: int
    enqueued: int


class Scheduler:
    """One scheduler: its identity (for leases), its database and its broker."""

    def __init__(self, settings: Settings, engine: Engine, broker: dramatiq.Broker, *, claimant: str | None = None):
        self.settings = settings
        self.engine = engine
        self.broker = broker
        self.claimant = claimant or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease = timedelta(seconds=settings.scheduler_lease_s)
        # A job enqueued this long ago and still not done lost its message (e.g. Redis restarted).
        self.stale_after = timedelta(seconds=settings.stuck_after_s)

    def tick(self, now: datetime | None = None, *, batch: int = 100) -> Tick:
        """Claim what is due at ``now``, enqueue it, and record it as enqueued.

        Raises:
            BrokerUnavailable: the broker refused; the claims run out and are taken again.
        """
        moment = now or utcnow()
        claimed = enqueued = 0
        while True:
            with self.engine.begin() as conn:
                jobs = schedules.claim_due(
                    conn, moment, claimant=self.claimant, lease=self.lease, stale_after=self.stale_after, limit=batch
                )
            if not jobs:
                return Tick(claimed, enqueued)
            claimed += len(jobs)
            for job in jobs:
                publish(self.broker, job_message(job.id))
            enqueued += len(jobs)
            # A worker may already have run (and finished) a job before this records it; that
            # job is simply not marked, so the count is of what went to the broker.
            with self.engine.begin() as conn:
                schedules.mark_enqueued(conn, [job.id for job in jobs], self.claimant, utcnow())
            log.info("handed %d due jobs to the workers", len(jobs))
            if len(jobs) < batch:
                return Tick(claimed, enqueued)

    def run(self, stop: threading.Event, *, on_error: Callable[[Exception], None] | None = None) -> None:
        """Tick every ``scheduler_interval_s`` until ``stop`` is set; errors wait for the next tick."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # the database or broker is away: try again next tick
                log.warning("scheduler tick failed: %s: %s", type(exc).__name__, " ".join(str(exc).split())[:200])
                if on_error is not None:
                    on_error(exc)
            stop.wait(self.settings.scheduler_interval_s)
