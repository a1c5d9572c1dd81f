"""A call's keypress and its `completed` callback are two requests; whichever herald serve
commits first, a person who pressed 1 ends acknowledged and reached, and is not sent the next
stage."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import Pipeline, Rig, incident, wait_for, write_routing

from worker.config import Settings
from worker.sandbox.twilio import Callback, TwilioSandbox
from worker.service.http import create_app
from worker.service.serving import ServerThread

NUMBER = "+14155550142"
ROUTES = """\
  - name: incident
    match: {type: security_incident}
    stages:
      - {channels: [phone], wait: 10m}
      - {channels: [sms], wait: 10m}
    announce: true
  - name: service
    match: {type: service_notice}
    stages: [{channels: [email, insite], wait: 10m}]
    announce: true
  - name: account
    match: {type: account_notice}
    stages: [{channels: [phone], wait: 10m}]
  - name: policy
    match: {type: policy_change}
    stages: [{channels: [email, insite], wait: 10m}]
    announce: true
"""


ORDERS = [("keypress", "completed"), ("completed", "keypress")]


def recorded(sandbox: TwilioSandbox) -> dict[str, Callback]:
    """The call's keypress and its final callback, as the sandbox sent them (signed)."""
    found: dict[str, Callback] = {}
    for cb in sandbox.callbacks:
        if cb.kind == "gather":
            found["keypress"] = cb
        elif cb.kind == "call-status" and cb.params.get("CallStatus") == "completed":
            found["completed"] = cb
    return found


@dataclass
class Outcome:
    """What herald recorded once both requests were applied and the workers had run."""

    route: Any
    rows: list[Any]
    before_workers: dict[tuple[str, str], int]
    after: dict[tuple[str, str], int]


def call_then_replay(rig: Rig, settings: Settings, event: dict[str, Any], order: tuple[str, str]) -> Outcome:
    """Place the call with herald serve down, then hand it the keypress and the call's end in ``order``."""
    event_id = event["event_id"]
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        wait_for(lambda: pipeline.counts(event_id) == {("phone", "sent"): 1})
        assert rig.sandbox.wait_for(lambda s: len(recorded(s)) == 2, timeout=30)
    callbacks = recorded(rig.sandbox)

    # No worker runs while the two requests are applied: a next stage the first one opens
    # stays unsent until the second has been applied.
    port = int(settings.public_url.rsplit(":", 1)[1])
    with ServerThread(create_app(settings), port=port):
        for name in order:
            cb = callbacks[name]
            headers = {"X-Twilio-Signature": cb.signature}
            assert httpx.post(cb.url, data=cb.params, headers=headers, timeout=10).is_success
        with Pipeline(settings) as pipeline:
            before_workers = pipeline.counts(event_id)
            pipeline.wait_terminal([event_id])
            # Whatever the first request handed on has been taken and done by the workers.
            for actor in pipeline.actors.deliver.values():
                pipeline.broker.join(actor.queue_name, timeout=20_000)
            (route,) = pipeline.routes(event_id).values()
            return Outcome(route, pipeline.ledger_rows(event_id), before_workers, pipeline.counts(event_id))


@pytest.mark.parametrize("order", ORDERS, ids="-then-".join)
def test_a_keypress_wins_whichever_request_commits_first(rig: Rig, tmp_path: Path, order: tuple[str, str]) -> None:
    settings = rig.build(routing_file=write_routing(tmp_path, ROUTES))
    event = incident([{"user_id": "caller", "name": "Caller", "phone": NUMBER, "locale": "en"}], severity="high")
    seen = call_then_replay(rig, settings, event, order)

    assert (seen.route.outcome, seen.route.reached_channel) == ("reached", "phone")
    assert seen.after.get(("phone", "acknowledged")) == 1
    assert rig.sandbox.messages == []  # the next stage's SMS was never sent
    phone_rows = [r.status for r in seen.rows if r.channel == "phone"]
    if order[0] == "completed":
        # The evidence keeps both: the call judged unconfirmed, the person moved on, then the
        # keypress that overturned it and the next stage left unsent.
        assert seen.before_workers == {("phone", "acknowledged"): 1, ("sms", "skipped"): 1}
        assert phone_rows == ["sent", "failed", "acknowledged"]
        (skipped,) = [r for r in seen.rows if r.channel == "sms"]
        assert skipped.status == "skipped" and "reached by phone" in (skipped.reason or "")
        assert [r.status for r in seen.rows if r.channel == "route"] == ["fallback", "reached"]
    else:
        assert seen.before_workers == seen.after == {("phone", "acknowledged"): 1}
        assert phone_rows == ["sent", "acknowledged"]


@pytest.mark.parametrize("order", ORDERS, ids="-then-".join)
def test_a_keypress_after_the_chain_ended_unreached_still_ends_reached(
    rig: Rig, tmp_path: Path, order: tuple[str, str]
) -> None:
    """An account notice is never announced: a call as its last stage, judged unconfirmed,
    ends the person unreached; the keypress that follows makes them reached."""
    settings = rig.build(routing_file=write_routing(tmp_path, ROUTES))
    now = datetime.now(UTC)
    person = {"user_id": "holder", "name": "Holder", "phone": NUMBER, "locale": "en"}
    event = {
        "event_id": f"acct-{uuid.uuid4().hex[:10]}",
        "type": "account_notice",
        "occurred_at": now.isoformat(),
        "source": "tests",
        "data": {
            "user_id": "holder",
            "action": "suspended",
            "reason": "Unusual sign-in activity.",
            "effective_at": now.isoformat(),
            "recipient": person,
        },
    }
    seen = call_then_replay(rig, settings, event, order)

    assert (seen.route.outcome, seen.route.reached_channel) == ("reached", "phone")
    assert seen.after == {("phone", "acknowledged"): 1}
    marks = [r.status for r in seen.rows if r.channel == "route"]
    if order[0] == "completed":
        assert marks == ["unreached", "reached"]
        assert "the chain had already ended" in seen.rows[-1].reason
    else:
        assert marks == []
