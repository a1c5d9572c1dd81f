"""How herald reads messages off its queues: dramatiq's JSON, and what to do when it cannot.

Producers in other languages write dramatiq messages by hand (README, "Publishing from any
language"). Left to dramatiq, a message whose envelope cannot be read (not JSON, nested too
deep, not UTF-8, a field missing, another actor's name on the ingest queue) makes the
consumer fail, log the whole message, restart, and meet the same message again later: no
intake row, a payload in the logs, and a consumer that stalls every time.

``ForgivingJSONEncoder`` reads what dramatiq reads; anything else that carries the
``redis_message_id`` it must be acknowledged by becomes a call of the ingest actor that
records the message as rejected, with the reason and a masked excerpt. So a malformed
message, like a malformed event, ends in exactly one intake row and is acknowledged.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from dramatiq.encoder import JSONEncoder, MessageData
from dramatiq.errors import DecodeError

#: The queue and actor producers write to (``worker.broker`` re-exports them).
INGEST_QUEUE = "herald.ingest"
INGEST_ACTOR = "ingest"

_REDIS_ID = re.compile(rb'"redis_message_id"\s*:\s*"([A-Za-z0-9-]{1,64})"')
#: Envelope fields and the types dramatiq's ``Message`` needs them to have.
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "queue_name": str,
    "actor_name": str,
    "args": list,
    "kwargs": dict,
    "options": dict,
    "message_id": str,
    "message_timestamp": (int, float),
}


class ForgivingJSONEncoder(JSONEncoder):
    """dramatiq's JSON encoding; an envelope it cannot use is handed to ingest to be rejected."""

    def decode(self, data: bytes) -> MessageData:
        """The message's fields; for an unusable envelope, an ingest call carrying the reason.

        Raises:
            DecodeError: the message cannot even be acknowledged (no ``redis_message_id``).
        """
        try:
            fields = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError:
            return _to_ingest(data, "the message is not UTF-8", None)
        except RecursionError:
            return _to_ingest(data, "the message nests too deeply to be read", None)
        except ValueError as exc:  # JSONDecodeError, or a number of thousands of digits
            return _to_ingest(data, f"the message is not JSON: {_one_line(str(exc))}", None)
        problem = _envelope_problem(fields)
        if problem is not None:
            return _to_ingest(data, problem, fields if isinstance(fields, dict) else None)
        return fields  # type: ignore[no-any-return]


def _envelope_problem(fields: Any) -> str | None:
    """Why ``fields`` cannot be run as herald's message, or None when it can."""
    if not isinstance(fields, dict):
        return "the message is not a JSON object"
    for name, kind in _FIELDS.items():
        if not isinstance(fields.get(name), kind) or isinstance(fields.get(name), bool):
            return f"the message's {name} is missing or of the wrong type"
    if fields["queue_name"] == INGEST_QUEUE:
        if fields["actor_name"] != INGEST_ACTOR:
            return f"the ingest queue runs actor {INGEST_ACTOR!r}, not {_one_line(fields['actor_name'])[:60]!r}"
        args, kwargs = fields["args"], fields["kwargs"]
        retried = set(kwargs) == {"unreadable"} and isinstance(kwargs["unreadable"], str)  # one of ours, again
        if len(args) != 1 or not isinstance(args[0], str | dict) or (kwargs and not retried):
            return "an ingest message has one argument, the event as a JSON string, and no keyword arguments"
    return None


def _to_ingest(data: bytes, problem: str, fields: dict[str, Any] | None) -> MessageData:
    options = fields.get("options") if fields is not None else None
    redis_id = options.get("redis_message_id") if isinstance(options, dict) else None
    if not isinstance(redis_id, str):
        found = _REDIS_ID.search(data)
        redis_id = found.group(1).decode() if found else None
    if redis_id is None:
        raise DecodeError(f"unreadable message that cannot be acknowledged: {problem}", b"", None)  # type: ignore[no-untyped-call]
    return {
        "queue_name": INGEST_QUEUE,
        "actor_name": INGEST_ACTOR,
        "args": [data.decode("utf-8", "replace")],
        "kwargs": {"unreadable": problem},
        "options": {"redis_message_id": redis_id},
        "message_id": redis_id,
        "message_timestamp": int(time.time() * 1000),
    }


def _one_line(text: str) -> str:
    return " ".join(text.split())[:200]
