"""A queue message herald cannot run is recorded as rejected and acknowledged, like a bad event.

Producers in other languages write dramatiq's envelope by hand. Left to dramatiq, an envelope
that does not decode makes the consumer fail, print the message, restart and meet it again;
herald's encoder turns it into one rejected intake row instead.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from sqlalchemy import func, select
from support import Pipeline, incident, people

from worker.config import Settings
from worker.store.intake import list_rejections
from worker.store.schema import intake


def _envelope(message_id: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "queue_name": "herald.ingest",
        "actor_name": "ingest",
        "args": [json.dumps(incident(people(1)))],
        "kwargs": {},
        "options": {"redis_message_id": message_id},
        "message_id": message_id,
        "message_timestamp": int(time.time() * 1000),
    }
    body.update(fields)
    return body


def _broken_messages() -> dict[str, tuple[str, bytes]]:
    """Each unusable envelope, by name: (its redis id, its raw bytes)."""
    ids = {name: str(uuid.uuid4()) for name in ("json", "deep", "actor", "args", "fields", "utf8")}
    deep = "[" * 100_000 + "]" * 100_000
    return {
        "broken JSON": (ids["json"], f'{{"options": {{"redis_message_id": "{ids["json"]}"}}, "args": [oops'.encode()),
        "deeply nested argument": (
            ids["deep"],
            json.dumps(_envelope(ids["deep"], args=["X"])).replace('"X"', deep).encode(),
        ),
        "another actor": (ids["actor"], json.dumps(_envelope(ids["actor"], actor_name="ingest_v2")).encode()),
        "two arguments": (ids["args"], json.dumps(_envelope(ids["args"], args=["{}", "{}"])).encode()),
        "missing fields": (ids["fields"], json.dumps({"options": {"redis_message_id": ids["fields"]}}).encode()),
        "not UTF-8": (ids["utf8"], b'{"options": {"redis_message_id": "' + ids["utf8"].encode() + b'"}, "x": "\xff"}'),
    }


def test_unusable_envelopes_each_leave_one_rejected_row_and_good_events_still_arrive(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    good = incident(people(2, prefix="good"))
    broken = _broken_messages()
    with Pipeline(settings) as pipeline:
        client = redis.Redis.from_url(settings.broker_url)
        ns = settings.broker_namespace
        for message_id, raw in broken.values():
            client.hset(f"{ns}:herald.ingest.msgs", message_id, raw)
            client.rpush(f"{ns}:herald.ingest", message_id)
        pipeline.publish(good)
        pipeline.wait_terminal([good["event_id"]], timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with pipeline.engine.connect() as conn:
                if conn.execute(select(func.count()).select_from(intake)).scalar_one() >= len(broken) + 1:
                    break
            time.sleep(0.1)
        with pipeline.engine.connect() as conn:
            rejections = list_rejections(conn)
        left = client.hlen(f"{ns}:herald.ingest.msgs")
        client.close()
    reasons = sorted(r.reason for r in rejections)
    assert len(rejections) == len(broken), reasons
    assert all(r.startswith("the queue message could not be run: ") for r in reasons)
    assert any("not JSON" in r for r in reasons) and any("nests too deeply" in r for r in reasons)
    assert any("'ingest_v2'" in r for r in reasons) and any("not UTF-8" in r for r in reasons)
    assert left == 0  # every one acknowledged: nothing waits to be met again
