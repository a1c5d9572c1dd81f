"""The dramatiq actors: thin wrappers that parse a message, call the pipeline, and enqueue.

Actors are declared on an explicit broker by ``declare_actors`` (no import-time magic), so
tests and the CLI can build as many pipelines as they like; ``worker.app`` is the module
dramatiq's own CLI imports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage, Middleware

from channels import check_channels
from worker.broker import CONTROL_QUEUE, FANOUT_QUEUE, INGEST_ACTOR, INGEST_QUEUE, delivery_queue
from worker.config import Settings
from worker.delivery import deliver_batch, exhaust_batch
from worker.errors import ConfigurationError, InvalidEvent, PermanentDeliveryError, TransientDeliveryError
from worker.events import EVENT_TYPES
from worker.fanout import finish_page, plan_page
from worker.ingest import ingest as ingest_payload
from worker.reconcile import reconcile
from worker.runtime import Runtime
from worker.store.engine import read_only, schema_is_current
from worker.store.intake import IntakeOutcome, fanout_cursor

log = logging.getLogger("herald.actors")

#: Locales every template set must provide.
REQUIRED_LOCALES = ("en", "zh-CN")


@dataclass(frozen=True)
class Actors:
    """The pipeline's actors on one broker."""

    ingest: dramatiq.Actor[Any, Any]
    fanout: dramatiq.Actor[Any, Any]
    deliver: dict[str, dramatiq.Actor[Any, Any]]
    exhausted: dramatiq.Actor[Any, Any]
    runtime: Runtime


class RuntimeCloser(Middleware):
    """Closes SMTP connections and database pools when a worker process stops."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        self.runtime.close()


def check_wiring(settings: Settings, runtime: Runtime) -> None:
    """Everything a worker needs, checked before it takes a message.

    Raises:
        ConfigurationError: unknown channel, missing or broken template, or an old schema.
    """
    check_channels(settings.channels)
    runtime.renderer.check(EVENT_TYPES, settings.channels, REQUIRED_LOCALES)
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

    def ingest(payload: str | dict[str, Any]) -> None:
        result = ingest_payload(runtime.engine, payload, max_bytes=settings.max_event_bytes)
        if result.outcome is not IntakeOutcome.REJECTED and result.fanout_from is not None:
            assert result.event_id is not None
            fanout_actor.send(result.event_id, result.fanout_from)

    def fanout(event_id: str, cursor: str) -> None:
        with read_only(runtime.engine) as conn:
            if fanout_cursor(conn, event_id) != cursor:
                return  # another copy of this step already moved on
        page = plan_page(
            runtime.engine,
            runtime.event(event_id),
            cursor,
            channels=settings.channels,
            page_size=settings.page_size,
            batch_size=settings.batch_size,
        )
        for batch in page.batches:
            deliver_actors[batch.channel].send(batch.event_id, batch.refs, 0)
        if finish_page(runtime.engine, event_id, cursor, page) and page.next_cursor is not None:
            fanout_actor.send(event_id, page.next_cursor)

    def make_deliver(channel: str) -> Callable[[str, list[str], int], None]:
        def deliver(event_id: str, refs: list[str], step: int = 0) -> None:
            message = CurrentMessage.get_current_message()
            claimant = message.message_id if message is not None else "local"
            outcome = deliver_batch(runtime, event_id, channel, refs, claimant=claimant, step=step)
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
        still_open = reconcile(runtime, channel, provider_message_ids, final=final)
        if still_open:
            # Ask again later, waiting longer each round.
            delay = int(settings.confirmation_grace_s * 1000 * 2**round_)
            reconcile_actor.send_with_options(args=(channel, still_open, round_ + 1), delay=delay)

    def exhausted(message_data: dict[str, Any], retry_info: dict[str, Any]) -> None:
        channel = channel_of.get(message_data.get("actor_name", ""))
        args = message_data.get("args") or []
        if channel is None or len(args) < 2:
            log.error("retry-exhausted notice for an unknown message: %s", message_data.get("actor_name"))
            return
        exhaust_batch(runtime, args[0], channel, args[1], step=int(args[2]) if len(args) > 2 else 0)

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
    return Actors(ingest_actor, fanout_actor, deliver_actors, exhausted_actor, runtime)
