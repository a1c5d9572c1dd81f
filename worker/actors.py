"""The dramatiq actors: thin wrappers that parse a message, call the pipeline, and enqueue.

Actors are declared on an explicit broker by ``declare_actors`` (no import-time magic), so
tests and the CLI can build as many pipelines as they like; ``worker.app`` is the module
dramatiq's own CLI imports.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage, Middleware

from channels import check_channels, check_providers
from worker.announce.publishing import publish_announcement
from worker.announce.site import SiteBuilder
from worker.broker import CONTROL_QUEUE, FANOUT_QUEUE, INGEST_ACTOR, INGEST_QUEUE, delivery_queue
from worker.config import Settings
from worker.core.clock import utcnow
from worker.core.errors import ConfigurationError, InvalidEvent, PermanentDeliveryError, TransientDeliveryError
from worker.deadman import claim_timer, sweep
from worker.delivery.deliver import deliver_batch, exhaust_batch
from worker.delivery.reconcile import reconcile
from worker.fanout.outbox import PUBLISH_ACTOR, Dispatch, enqueue
from worker.fanout.pages import finish_page, plan_page
from worker.intake.events import Event
from worker.intake.ingest import ingest as ingest_payload
from worker.runtime import Runtime
from worker.schedule.jobs import run_job
from worker.schedule.scheduler import RUN_ACTOR
from worker.store import schedules
from worker.store.engine import read_only, schema_is_current
from worker.store.intake import IntakeOutcome, fanout_cursor

log = logging.getLogger("herald.actors")


@dataclass(frozen=True)
class Actors:
    """The pipeline's actors on one broker."""

    ingest: dramatiq.Actor[Any, Any]
    fanout: dramatiq.Actor[Any, Any]
    deliver: dict[str, dramatiq.Actor[Any, Any]]
    exhausted: dramatiq.Actor[Any, Any]
    publish: dramatiq.Actor[Any, Any]
    sweep: dramatiq.Actor[Any, Any]
    runtime: Runtime


class RuntimeCloser(Middleware):
    """Closes SMTP connections and database pools when a worker process stops."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.runtime.close()


class SweepTicker(Middleware):
    """Runs the dead-man check every ``sweep_interval_s`` from whichever worker wins the timer.

    Every worker process ticks; the shared ``timers`` row lets one of them per interval
    enqueue the sweep, so the check survives any worker (or Redis) going away.
    """

    def __init__(self, runtime: Runtime, send: Callable[[], object]) -> None:
        self.runtime = runtime
        self.send = send
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="herald-sweep-ticker", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        interval = self.runtime.settings.sweep_interval_s
        while not self._stop.wait(min(interval / 2, 5.0)):
            try:
                if claim_timer(self.runtime, interval):
                    self.send()
            except Exception as exc:  # the database or broker is away; the next tick tries again
                log.warning("sweep timer: %s: %s", type(exc).__name__, " ".join(str(exc).split())[:200])


def check_wiring(settings: Settings, runtime: Runtime) -> None:
    """Everything a worker needs, checked before it takes a message.

    Raises:
        ConfigurationError: unknown channel, a bad routing policy or provider profile, a
            missing or broken template, or an old schema.
    """
    check_channels(settings.channels)
    policy = runtime.policy
    policy.check(runtime.renderer, settings.channels)
    for channel in sorted(policy.used_channels() & set(settings.channels)):
        check_providers(settings, channel, policy.channels[channel].providers)
    if any(route.announce for route in policy.routes):
        SiteBuilder(runtime.renderer, locales=policy.locales, base_url=settings.resolved_announcements_url).check()
    if not schema_is_current(runtime.engine):
        raise ConfigurationError("the database schema is not current; run `herald migrate` first")


def declare_actors(broker: dramatiq.Broker, settings: Settings, *, check: bool = True) -> Actors:
    """Declare herald's actors on ``broker``.

    Raises:
        ConfigurationError: when ``check`` is set and the wiring is wrong.
    """
    runtime = Runtime(settings)
    if check:
        check_wiring(settings, runtime)
    broker.add_middleware(RuntimeCloser(runtime))
    retry_options: dict[str, Any] = {
        "max_retries": settings.retry_max,
        "min_backoff": settings.retry_min_backoff_ms,
        "max_backoff": settings.retry_max_backoff_ms,
    }

    def planner(event: Event) -> str:
        return runtime.policy.plan_for(event, settings.channels).to_json()

    def hand_on(dispatch: Dispatch) -> None:
        if dispatch:
            enqueue(broker, dispatch)

    def ingest(payload: str | dict[str, Any], unreadable: str | None = None) -> None:
        result = ingest_payload(
            runtime.engine,
            payload,
            max_bytes=settings.max_event_bytes,
            planner=planner,
            rules=settings.notice_rules,
            unreadable=unreadable,
            allowed_special_domains=settings.email_allowed_special_domains,
        )
        if result.outcome is IntakeOutcome.REJECTED:
            return
        if result.republish is not None:
            hand_on(Dispatch(publish={result.republish}))
        if result.fanout_from is not None:
            assert result.event_id is not None
            fanout_actor.send(result.event_id, result.fanout_from)

    def fanout(event_id: str, cursor: str) -> None:
        with read_only(runtime.engine) as conn:
            if fanout_cursor(conn, event_id) != cursor:
                return  # another copy of this step already moved on
        page = plan_page(
            runtime.engine,
            runtime.router,
            runtime.event(event_id),
            cursor,
            page_size=settings.page_size,
            announce_all_above=runtime.policy.announce_all_above,
        )
        hand_on(page.dispatch)
        if finish_page(runtime.engine, event_id, cursor, page) and page.next_cursor is not None:
            fanout_actor.send(event_id, page.next_cursor)

    def make_deliver(channel: str) -> Callable[[str, list[str], int], None]:
        def deliver(event_id: str, refs: list[str], step: int = 0) -> None:
            message = CurrentMessage.get_current_message()
            claimant = message.message_id if message is not None else "local"
            outcome = deliver_batch(runtime, event_id, channel, refs, claimant=claimant, step=step)
            hand_on(outcome.dispatch)
            if outcome.awaiting:
                reconcile_actor.send_with_options(
                    args=(channel, list(outcome.awaiting), 1), delay=int(settings.confirmation_grace_s * 1000)
                )
            if outcome.unfinished:
                # Raising hands the batch to dramatiq's Retries; what was sent is skipped next time.
                raise TransientDeliveryError(
                    f"{outcome.unfinished} of {len(refs)} {channel} deliveries for event {event_id} will be retried"
                )

        deliver.__name__ = f"deliver_{channel}"
        return deliver

    def reconcile_sent(channel: str, provider_message_ids: list[str], round_: int) -> None:
        final = round_ >= settings.confirmation_rounds
        still_open, dispatch = reconcile(runtime, channel, provider_message_ids, final=final)
        hand_on(dispatch)
        if still_open:
            # Ask again later, waiting longer each round.
            delay = int(settings.confirmation_grace_s * 1000 * 2**round_)
            reconcile_actor.send_with_options(args=(channel, still_open, round_ + 1), delay=delay)

    def exhausted(message_data: dict[str, Any], retry_info: dict[str, Any]) -> None:
        actor_name = message_data.get("actor_name", "")
        args = message_data.get("args") or []
        if actor_name == PUBLISH_ACTOR:
            # The sweep publishes again later: people waiting for it never stay waiting for good.
            log.error("announcement %s could not be published after every retry", args[0] if args else "?")
            return
        channel = channel_of.get(actor_name)
        if channel is None or len(args) < 2:
            log.error("retry-exhausted notice for an unknown message: %s", actor_name)
            return
        step = int(args[2]) if len(args) > 2 else 0
        claimant = str(message_data.get("message_id", ""))  # the batch's claims are held under its message id
        hand_on(exhaust_batch(runtime, args[0], channel, args[1], claimant=claimant, step=step))

    def publish(announcement_id: str) -> None:
        try:
            published = publish_announcement(runtime, announcement_id)
        except TransientDeliveryError as exc:
            # A folder that cannot be written, a webhook away: one line, then dramatiq's
            # Retries (a Retry is not logged with a traceback); the sweep takes over after them.
            log.warning(
                "announcement %s not published yet, will retry: %s (%s)", announcement_id, exc.message, exc.code
            )
            raise dramatiq.Retry(exc.message) from None
        if published is not None and published.again:
            publish_actor.send(announcement_id)

    def run_schedule(job_id: int) -> None:
        with read_only(runtime.engine) as conn:
            found = schedules.get(conn, job_id)
        if found is None:
            log.error("no scheduled job %s", job_id)
            return
        event = runtime.event(found.event_id)  # parsed outside the write transaction
        with runtime.engine.begin() as conn:
            job = schedules.get(conn, job_id)
            assert job is not None
            work = run_job(conn, job, event, utcnow())
        hand_on(work.dispatch)
        if work.fanout is not None:
            fanout_actor.send(*work.fanout)

    def sweep_once() -> None:
        result = sweep(runtime)
        hand_on(result.dispatch)
        for channel, pmids in result.unconfirmed.items():
            if channel in deliver_actors:
                reconcile_actor.send(channel, pmids, settings.confirmation_rounds)
        for event_id, cursor in result.fanouts:
            fanout_actor.send(event_id, cursor)

    ingest_actor = dramatiq.actor(
        actor_name=INGEST_ACTOR,
        queue_name=INGEST_QUEUE,
        broker=broker,
        throws=(InvalidEvent,),
        **retry_options,
    )(ingest)
    fanout_actor = dramatiq.actor(actor_name="fanout", queue_name=FANOUT_QUEUE, broker=broker, **retry_options)(fanout)
    exhausted_actor = dramatiq.actor(
        actor_name="delivery_exhausted", queue_name=CONTROL_QUEUE, broker=broker, **retry_options
    )(exhausted)
    reconcile_actor = dramatiq.actor(actor_name="reconcile", queue_name=CONTROL_QUEUE, broker=broker, **retry_options)(
        reconcile_sent
    )
    publish_actor = dramatiq.actor(
        actor_name=PUBLISH_ACTOR,
        queue_name=CONTROL_QUEUE,
        broker=broker,
        on_retry_exhausted="delivery_exhausted",
        **retry_options,
    )(publish)
    dramatiq.actor(actor_name=RUN_ACTOR, queue_name=CONTROL_QUEUE, broker=broker, **retry_options)(run_schedule)
    # One sweep at a time is plenty; a sweep that fails is simply the next one's work.
    sweep_actor = dramatiq.actor(actor_name="sweep", queue_name=CONTROL_QUEUE, broker=broker, max_retries=0)(sweep_once)
    deliver_actors: dict[str, dramatiq.Actor[Any, Any]] = {}
    channel_of: dict[str, str] = {}
    for channel in settings.channels:
        name = f"deliver_{channel}"
        deliver_actors[channel] = dramatiq.actor(
            actor_name=name,
            queue_name=delivery_queue(channel),
            broker=broker,
            throws=(PermanentDeliveryError,),
            on_retry_exhausted="delivery_exhausted",
            **retry_options,
        )(make_deliver(channel))
        channel_of[name] = channel
    broker.add_middleware(SweepTicker(runtime, sweep_actor.send))
    return Actors(ingest_actor, fanout_actor, deliver_actors, exhausted_actor, publish_actor, sweep_actor, runtime)
