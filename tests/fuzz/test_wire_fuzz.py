"""Raw messages that break the wire contract, written with plain HSET and RPUSH as a producer
in any language does (README, "Publishing from any language"), ahead of valid events.

The hostile message must leave one intake row like any other payload, and it must never keep
the valid events published right behind it from being recorded and fanned out.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest
import redis
from budget import FUZZ, NO_SHRINK, Tally, examples
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from strategies import WIRE_BREAKS, WireMessage, wire_messages
from support import Pipeline, incident, people

from worker.config import Settings
from worker.sandbox.smtp_sink import SmtpSink
from worker.store.schema import events, intake

pytestmark = pytest.mark.fuzz

#: How long the worker may take to record a handful of payloads.
RECORD_TIMEOUT_S = 20.0


def _hset_rpush(settings: Settings, args: bytes, kwargs: bytes = b"{}") -> str:
    """Publish one message with nothing but HSET and RPUSH; returns its id."""
    message_id = str(uuid.uuid4())
    body = (
        b'{"queue_name": "herald.ingest", "actor_name": "ingest", "args": [' + args + b'], "kwargs": ' + kwargs + b", "
        b'"options": {"redis_message_id": "'
        + message_id.encode()
        + b'"}, "message_id": "'
        + message_id.encode()
        + b'", '
        b'"message_timestamp": ' + str(int(time.time() * 1000)).encode() + b"}"
    )
    client = redis.Redis.from_url(settings.broker_url)
    try:
        client.hset(f"{settings.broker_namespace}:herald.ingest.msgs", message_id, body)
        client.rpush(f"{settings.broker_namespace}:herald.ingest", message_id)
    finally:
        client.close()
    return message_id


def _intake_total(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(intake)).scalar_one())


def _fanned_out(engine: Engine, event_ids: list[str]) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(events.c.event_id).where(events.c.event_id.in_(event_ids), events.c.fanout_done_at.is_not(None))
        )
        return set(rows.scalars())


@pytest.mark.parametrize("kind", WIRE_BREAKS)
@settings(FUZZ, max_examples=examples(1), phases=NO_SHRINK)
@given(data=st.data())
def test_a_message_that_breaks_the_wire_contract_is_recorded_and_blocks_nothing(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink, tally: Tally, kind: str, data: st.DataObject
) -> None:
    """Given one raw message that breaks the wire contract and three valid incidents published
    right behind it, when the worker runs, then every message has one intake row and the
    three incidents are fanned out."""
    hostile: WireMessage = data.draw(wire_messages(kind), label="hostile")
    behind = [incident(people(1, prefix=f"fz-wire-{i}-")) for i in range(3)]
    settings_ = make_settings()
    with Pipeline(settings_) as pipeline:
        before = _intake_total(pipeline.engine)
        _hset_rpush(settings_, hostile.args, hostile.kwargs)
        for event in behind:
            _hset_rpush(settings_, json.dumps(json.dumps(event)).encode())
        expected = 1 + len(behind)
        ids = [event["event_id"] for event in behind]
        deadline = time.monotonic() + RECORD_TIMEOUT_S
        while time.monotonic() < deadline:
            if _intake_total(pipeline.engine) - before >= expected and len(_fanned_out(pipeline.engine, ids)) == 3:
                break
            time.sleep(0.1)
        recorded = _intake_total(pipeline.engine) - before
        fanned = _fanned_out(pipeline.engine, ids)
    tally.update({"payloads": expected, "recorded": recorded, "lost": max(expected - recorded, 0)})
    print(
        f"\n[fuzz] wire, {hostile.label}: {recorded} of {expected} messages recorded, {len(fanned)} of 3 incidents sent"
    )
    assert recorded == expected and len(fanned) == len(ids), (
        f"{hostile!r} then 3 valid incidents: {recorded} of {expected} messages have an intake row "
        f"and {len(fanned)} of {len(ids)} incidents were fanned out after {RECORD_TIMEOUT_S:.0f} s"
    )
