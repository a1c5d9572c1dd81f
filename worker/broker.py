"""The broker: dramatiq on Redis, from ``HERALD_BROKER_URL`` or the embedded Redis.

This module also fixes the wire contract for producers in other languages: the ingest
queue, the actor name, and the one helper that publishes an event the way they must.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage, default_middleware

from worker.config import Settings
from worker.core.errors import BrokerUnavailable
from worker.queue_encoding import INGEST_ACTOR, INGEST_QUEUE, ForgivingJSONEncoder

__all__ = ["INGEST_ACTOR", "INGEST_QUEUE"]
FANOUT_QUEUE = "herald.fanout"
CONTROL_QUEUE = "herald.control"


def delivery_queue(channel: str) -> str:
    """The queue a channel's delivery batches travel on, so one slow channel never blocks another."""
    return f"herald.{channel}"


def worker_command(processes: int, threads: int, queues: list[str] | None = None) -> list[str]:
    """The command line that runs herald's actors under dramatiq's own supervisor."""
    command = [sys.executable, "-m", "dramatiq", "worker.app", "--processes", str(processes), "--threads", str(threads)]
    return command + (["--queues", *queues] if queues else [])


def broker_url(settings: Settings) -> str:
    """The Redis URL to use: the configured one, or the embedded server's socket (started if needed)."""
    if settings.broker_url:
        return settings.broker_url
    from worker.embedded_redis import embedded_redis_url

    return embedded_redis_url(settings.embedded_redis_path)


def build_broker(settings: Settings) -> RedisBroker:
    """A Redis broker with dramatiq's default middleware plus CurrentMessage, reading messages
    with herald's forgiving encoder (``worker.queue_encoding``).

    Raises:
        BrokerUnavailable: the embedded Redis could not be started.
    """
    if not isinstance(dramatiq.get_encoder(), ForgivingJSONEncoder):
        dramatiq.set_encoder(ForgivingJSONEncoder())
    middleware = [m() for m in default_middleware] + [CurrentMessage()]
    return RedisBroker(  # type: ignore[no-untyped-call]
        url=broker_url(settings),
        namespace=settings.broker_namespace,
        middleware=middleware,
        heartbeat_timeout=settings.broker_heartbeat_timeout_ms,
        maintenance_chance=settings.broker_maintenance_chance,
    )


def ingest_message(payload: str | dict[str, Any]) -> dramatiq.Message[Any]:
    """The message a producer puts on the ingest queue: one positional argument, the event."""
    body = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return dramatiq.Message(queue_name=INGEST_QUEUE, actor_name=INGEST_ACTOR, args=(body,), kwargs={}, options={})


def publish(broker: dramatiq.Broker, message: dramatiq.Message[Any]) -> str:
    """Enqueue a message and return its id.

    Raises:
        BrokerUnavailable: Redis refused or dropped the connection.
    """
    broker.declare_queue(message.queue_name)
    try:
        return broker.enqueue(message).message_id
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise BrokerUnavailable(f"cannot reach the broker: {exc}") from None
