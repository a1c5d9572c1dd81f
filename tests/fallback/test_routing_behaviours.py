"""Routing, one behaviour at a time: channels at once and the confirmation wait, preferences
and caps, retries exhausted, a lost hand-on, a station letter read, a backup relay."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from support import SEQUENTIAL, Pipeline, Rig, incident, write_routing

import worker.actors
from worker.config import Settings
from worker.fanout.outbox import Dispatch
from worker.sandbox.smtp_sink import SmtpSink
from worker.service.serving import ServerThread, free_port
from worker.store.inbox import inbox, read_letter
from worker.store.moves import Move
from worker.store.schema import recipients


def routes_of(**stages: str) -> str:
    """Routes with these stages for incidents and service notices (the rest: email + letter)."""
    incident_stages = stages.get("incident", "[{channels: [email, insite], wait: 10m}]")
    service_stages = stages.get("service", "[{channels: [email, insite], wait: 10m}]")
    return (
        f"  - name: incident\n    match: {{type: security_incident}}\n    stages: {incident_stages}\n"
        "    announce: true\n"
        f"  - name: service\n    match: {{type: service_notice}}\n    stages: {service_stages}\n"
        "    announce: true\n"
        "  - name: account\n    match: {type: account_notice}\n    stages: [{channels: [email, insite], wait: 10m}]\n"
        "  - name: policy\n    match: {type: policy_change}\n    stages: [{channels: [email, insite], wait: 10m}]\n"
        "    announce: true\n"
    )


def service_notice(recipients_: list[dict[str, Any]], **data: Any) -> dict[str, Any]:
    """An optional notice: a maintenance window."""
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "kind": "maintenance",
        "title": "Planned maintenance",
        "starts_at": (now + timedelta(days=2)).isoformat(),
        "ends_at": (now + timedelta(days=2, hours=1)).isoformat(),
        "services": ["web"],
        "audience": {"recipients": recipients_},
    }
    body.update(data)
    return {
        "event_id": f"svc-{time.monotonic_ns()}",
        "type": "service_notice",
        "occurred_at": now.isoformat(),
        "source": "tests",
        "data": body,
    }


def refs(pipeline: Pipeline) -> dict[str, str]:
    with pipeline.engine.connect() as conn:
        return {uid: ref for uid, ref in conn.execute(select(recipients.c.user_id, recipients.c.ref))}


def test_a_critical_incident_sends_email_letter_and_sms_at_once_and_calls_when_nothing_is_confirmed_in_time(
    rig: Rig, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    """The shipped critical route's shape with a 1 s wait: an SMS that is never confirmed
    does not hold the person back; the call that follows does reach them."""
    smtp_sink.refuse(r"^(late|never)@", code=550)
    rig.sandbox.set_faults(
        silent_numbers=["+14155550002", "+14155550003"], call_behaviour={"+14155550003": "no-answer"}
    )
    routing = write_routing(
        tmp_path,
        routes_of(incident="[{channels: [email, insite, sms], wait: 1s}, {channels: [phone], wait: 10m}]"),
    )
    settings = rig.settings(routing_file=routing, sweep_interval_s=0.5, confirmation_grace_s=600)
    people = [
        {"user_id": "fine", "email": "fine@example.com", "phone": "+14155550001"},
        {"user_id": "late", "email": "late@example.com", "phone": "+14155550002"},
        {"user_id": "never", "email": "never@example.com", "phone": "+14155550003"},
    ]
    event = incident(people, severity="critical")
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        wait_for_outcomes(pipeline, event["event_id"], 3)
        routes = pipeline.routes(event["event_id"])
        rows = pipeline.ledger_rows(event["event_id"])
        ref_of = refs(pipeline)

    assert sorted(m.to for m in rig.sandbox.messages) == ["+14155550001", "+14155550002", "+14155550003"]
    assert sorted(c.to for c in rig.sandbox.calls) == ["+14155550002", "+14155550003"]
    assert (routes[ref_of["fine"]].outcome, routes[ref_of["fine"]].reached_channel) == ("reached", "email")
    assert (routes[ref_of["late"]].outcome, routes[ref_of["late"]].reached_channel) == ("reached", "phone")
    assert routes[ref_of["never"]].outcome == "covered"
    (why,) = [r.reason for r in rows if r.status == "fallback" and r.recipient_ref == ref_of["late"]]
    assert why.startswith("stage 1 unconfirmed after 1s:") and "sms sent" in why and "email failed (550)" in why


def wait_for_outcomes(pipeline: Pipeline, event_id: str, count: int, timeout: float = 60.0) -> None:
    """Wait until ``count`` recipients have a terminal outcome (deliveries may still be open)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        outcomes = pipeline.outcomes(event_id)
        if sum(n for o, n in outcomes.items() if o in ("reached", "covered", "unreached")) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"outcomes after {timeout} s: {pipeline.outcomes(event_id)}")


@pytest.fixture
def cms() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A CMS webhook receiver: a real HTTP server that records what it is sent."""
    received: list[dict[str, Any]] = []

    async def hook(request: Request) -> Response:
        received.append({"body": json.loads(await request.body()), "headers": dict(request.headers)})
        return Response(status_code=204)

    port = free_port()
    with ServerThread(Starlette(routes=[Route("/hook", hook, methods=["POST"])]), port=port):
        yield f"http://127.0.0.1:{port}/hook", received


def test_an_optional_notice_honours_an_opt_out_and_a_mandatory_one_overrides_it(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink, tmp_path: Path, cms: tuple[str, list[Any]]
) -> None:
    hook_url, hooks = cms
    settings = make_settings(
        routing_file=write_routing(tmp_path, SEQUENTIAL),
        announcements_dir=tmp_path / "site",
        announcement_webhook_url=hook_url,
        announcement_webhook_secret="cms-secret",
    )
    person = {"user_id": "quiet", "email": "quiet@example.com", "locale": "en", "opt_out": ["email"]}
    optional = service_notice([person])
    mandatory = incident([person], severity="high")
    with Pipeline(settings) as pipeline:
        pipeline.publish(optional)
        pipeline.wait_terminal([optional["event_id"]], timeout=60)
        pipeline.publish(mandatory)
        pipeline.wait_terminal([mandatory["event_id"]], timeout=60)
        optional_rows = pipeline.ledger_rows(optional["event_id"])
        mandatory_rows = pipeline.ledger_rows(mandatory["event_id"])
        outcomes = (pipeline.outcomes(optional["event_id"]), pipeline.outcomes(mandatory["event_id"]))

    # Optional: email skipped with the reason; the letter alone reached nobody for sure, so the
    # public announcement covers the person (and the CMS heard of it).
    (skip,) = [r for r in optional_rows if r.channel == "email"]
    assert (skip.status, skip.error_code) == ("skipped", "opted-out")
    assert "opted out of email for optional notices" in skip.reason
    assert outcomes[0] == {"covered": 1}
    assert [m.rcpt_tos for m in smtp_sink.messages] == [("quiet@example.com",)]  # only the incident's email
    assert hooks and hooks[0]["body"]["event_id"] == optional["event_id"]
    assert hooks[0]["headers"]["x-herald-signature"].startswith("sha256=")
    # Mandatory: the opt-out is overridden, with the reason on the ledger, and the email goes out.
    (override,) = [r for r in mandatory_rows if r.status == "override"]
    assert override.channel == "email" and "mandatory notice" in override.reason
    assert [r.status for r in mandatory_rows if r.channel == "email"] == ["override", "delivered"]
    assert outcomes[1] == {"reached": 1}


def test_optional_notices_over_a_channels_cap_are_throttled_and_mandatory_ones_are_not(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, routes_of(), channels="  email: {cap: {count: 1, per: 24h}}\n")
    settings = make_settings(routing_file=routing, announcements_dir=tmp_path / "site")
    person = {"user_id": "busy", "email": "busy@example.com", "locale": "en"}
    first, second = service_notice([person]), service_notice([person], title="More maintenance")
    urgent = incident([person], severity="low")
    with Pipeline(settings) as pipeline:
        for event in (first, second, urgent):
            pipeline.publish(event)
            pipeline.wait_terminal([event["event_id"]], timeout=60)
        email = {
            e["event_id"]: [r for r in pipeline.ledger_rows(e["event_id"]) if r.channel == "email"]
            for e in (first, second, urgent)
        }

    assert [r.status for r in email[first["event_id"]]] == ["delivered"]
    (throttled,) = email[second["event_id"]]
    assert (throttled.status, throttled.error_code) == ("skipped", "throttled")
    assert "1 email notices in the last 1d" in throttled.reason
    assert [r.status for r in email[urgent["event_id"]]] == ["delivered"]
    assert len(smtp_sink.messages) == 2


def test_when_retries_run_out_the_recipient_moves_on_to_the_next_channel(
    rig: Rig, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    smtp_sink.defer(r"^stuck@", times=10_000, code=451)
    settings = rig.settings(
        routing_file=write_routing(tmp_path, SEQUENTIAL),
        smtp_tries=1,
        retry_max=1,
        retry_min_backoff_ms=100,
        retry_max_backoff_ms=200,
    )
    event = incident([{"user_id": "stuck", "email": "stuck@example.com", "phone": "+14155550009"}])
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]], timeout=60)
        rows = pipeline.ledger_rows(event["event_id"])
        outcomes = pipeline.outcomes(event["event_id"])
    email = [r for r in rows if r.channel == "email"]
    assert [r.status for r in email][-1] == "failed" and email[-1].error_code == "retries-exhausted"
    assert {r.status for r in email[:-1]} == {"retrying"}
    assert [r.step for r in rows if r.status == "fallback"] == [1]
    assert outcomes == {"reached": 1}
    assert [m.to for m in rig.sandbox.messages] == ["+14155550009"]


def test_a_hand_on_lost_between_commit_and_enqueue_is_found_by_the_dead_man_check(
    rig: Rig, smtp_sink: SmtpSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that dies right after deciding someone moves on to SMS never enqueues the SMS;
    the pending rows are all that is left. The sweep finds them and the person is reached."""
    smtp_sink.refuse(r"^gone\d@", code=550)
    dropped: list[int] = []
    real_enqueue = worker.actors.enqueue

    def crash_before_enqueue(broker: Any, dispatch: Dispatch) -> None:
        if dropped:  # one loss only: the sweep's own hand-on goes through
            real_enqueue(broker, dispatch)
            return
        kept = [b for b in dispatch.batches if b.step == 0]
        dropped.extend(len(b.refs) for b in dispatch.batches if b.step > 0)
        real_enqueue(broker, Dispatch(batches=kept, publish=dispatch.publish))

    monkeypatch.setattr(worker.actors, "enqueue", crash_before_enqueue)
    settings = rig.settings(routing_file=write_routing(tmp_path, SEQUENTIAL), stuck_after_s=1.0, sweep_interval_s=0.5)
    people = [{"user_id": f"gone{i}", "email": f"gone{i}@example.com", "phone": f"+1415555010{i}"} for i in range(3)]
    event = incident(people)
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]], timeout=60)
        outcomes = pipeline.outcomes(event["event_id"])
    assert sum(dropped) == 3, "the SMS hand-on should have been lost"
    assert outcomes == {"reached": 3}
    assert sorted(m.to for m in rig.sandbox.messages) == sorted(p["phone"] for p in people)


def test_reading_a_station_letter_confirms_it_and_stops_the_chain(rig: Rig, tmp_path: Path) -> None:
    rig.sandbox.set_faults(silent_numbers=["+14155550077"])
    routing = write_routing(
        tmp_path, routes_of(incident="[{channels: [insite, sms], wait: 10m}, {channels: [phone], wait: 10m}]")
    )
    settings = rig.settings(routing_file=routing, channels=("insite", "sms", "phone"))
    event = incident([{"user_id": "reader", "phone": "+14155550077", "locale": "en"}])
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        deadline = time.monotonic() + 30
        while {(r.channel, r.status) for r in pipeline.ledger_rows(event["event_id"])} < {
            ("sms", "sent"),
            ("insite", "delivered"),
        }:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert pipeline.outcomes(event["event_id"]) == {"in_progress": 1}
        with pipeline.engine.begin() as conn:
            (letter,) = inbox(conn, "reader")
            moved = read_letter(conn, "reader", letter.id)
            assert isinstance(moved, Move)
            pipeline.actors.runtime.router.after_moves(conn, [moved], datetime.now(UTC))
        routes = pipeline.routes(event["event_id"])
        rows = pipeline.ledger_rows(event["event_id"])
    (route,) = routes.values()
    assert (route.outcome, route.reached_channel) == ("reached", "insite")
    assert [r.reason for r in rows if r.status == "acknowledged"] == ["the station letter was read"]
    assert not rig.sandbox.calls


def test_a_backup_relay_takes_over_when_the_primary_is_down(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    routing = write_routing(tmp_path, routes_of(), channels="  email: {providers: [primary, relay-2], cooldown: 30s}\n")
    settings = make_settings(
        routing_file=routing,
        smtp_port=free_port(),  # nobody listens: the primary relay is down
        providers={"relay-2": {"smtp_host": smtp_sink.host, "smtp_port": smtp_sink.port}},
    )
    event = incident([{"user_id": f"u{i}", "email": f"u{i}@example.com"} for i in range(30)])
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]], timeout=60)
        rows = [r for r in pipeline.ledger_rows(event["event_id"]) if r.channel == "email"]
        outcomes = pipeline.outcomes(event["event_id"])
    assert outcomes == {"reached": 30}
    assert {(r.status, r.provider) for r in rows} == {("delivered", "relay-2")}
    assert smtp_sink.wait_for(30, timeout=5)
