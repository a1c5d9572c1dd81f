"""What a step of the pipeline hands on: delivery batches and announcements to publish.

Routing decisions are made inside a database transaction; the messages they call for are
sent only after it commits (``enqueue``). A process that dies in between loses nothing: the
rows it committed are pending, and the dead-man check (``worker.deadman``) sends them again.
Messages are built by name, so the HTTP app can hand work on without declaring actors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dramatiq

from worker.broker import CONTROL_QUEUE, delivery_queue, publish

#: The actor that publishes an announcement (on the control queue).
PUBLISH_ACTOR = "publish_announcement"


@dataclass(frozen=True, slots=True)
class Batch:
    """Recipients of one event to send on one channel at one step of its plan, as one message."""

    event_id: str
    channel: str
    refs: list[str]
    step: int = 0


@dataclass(slots=True)
class Dispatch:
    """Messages to send once the transaction that decided them has committed."""

    batches: list[Batch] = field(default_factory=list)
    publish: set[str] = field(default_factory=set)  # announcement ids

    def extend(self, other: Dispatch) -> None:
        """Add another step's messages to these."""
        self.batches.extend(other.batches)
        self.publish |= other.publish

    def __bool__(self) -> bool:
        return bool(self.batches or self.publish)


def cut(event_id: str, channel: str, refs: Iterable[str], step: int, size: int) -> list[Batch]:
    """``refs`` in batches of at most ``size``."""
    ordered = list(refs)
    return [Batch(event_id, channel, ordered[i : i + size], step) for i in range(0, len(ordered), size)]


def delivery_message(batch: Batch) -> dramatiq.Message[Any]:
    """The message a ``deliver_<channel>`` actor takes: (event_id, refs, step)."""
    return dramatiq.Message(
        queue_name=delivery_queue(batch.channel),
        actor_name=f"deliver_{batch.channel}",
        args=(batch.event_id, list(batch.refs), batch.step),
        kwargs={},
        options={},
    )


def publish_message(announcement_id: str) -> dramatiq.Message[Any]:
    """The message that (re)publishes one announcement."""
    return dramatiq.Message(
        queue_name=CONTROL_QUEUE, actor_name=PUBLISH_ACTOR, args=(announcement_id,), kwargs={}, options={}
    )


def enqueue(broker: dramatiq.Broker, dispatch: Dispatch) -> None:
    """Send every message of ``dispatch``.

    Raises:
        BrokerUnavailable: Redis could not be reached; what was decided is safe in the database.
    """
    for batch in dispatch.batches:
        publish(broker, delivery_message(batch))
    for announcement_id in sorted(dispatch.publish):
        publish(broker, publish_message(announcement_id))
