"""Every payload ends in exactly one intake row, whatever it holds, and the worker carries on.

The payloads here are the ones a security review found escaping ingest: each was retried
until dramatiq dead-lettered it, with no intake row, so `herald events rejected` never
showed it. Now each is refused with a one-line reason and a masked, bounded excerpt.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from support import Pipeline, incident, people, policy_change

from worker.intake.events import NoticeRules
from worker.intake.ingest import ingest
from worker.store.engine import make_engine
from worker.store.intake import IntakeOutcome, list_rejections
from worker.store.schema import intake

MAX_BYTES = 1_048_576


def _deep(depth: int) -> str:
    return '{"event_id": "deep-1", "type": "security_incident", "data": ' + "[" * depth + "]" * depth + "}"


def _lone_surrogate() -> str:
    event = incident(people(2))
    event["data"]["title"] = "Breach PLACEHOLDER"
    return json.dumps(event).replace("PLACEHOLDER", "\\ud800")


def _year_9999() -> dict[str, Any]:
    return policy_change(ahead=timedelta(days=30), effective_at="9999-12-31T23:59:59-14:00")


def _nul_in_rejected() -> dict[str, Any]:
    event = incident(people(1))
    event["event_id"] = "nul-\x00-id"
    event["source"] = "a\x00b"
    event["type"] = "security\x00incident"
    return event


def _long_version() -> dict[str, Any]:
    return policy_change(ahead=timedelta(days=30), version="v" * 300)


def _huge_number() -> str:
    return json.dumps(incident(people(1))).replace('"severity": "high"', '"severity": ' + "9" * 5_000)


def _year_1_update() -> dict[str, Any]:
    return incident(people(1), detected_at="0001-01-01T00:00:00+01:00")


HOSTILE: dict[str, tuple[Callable[[], str | dict[str, Any]], str]] = {
    "deep nesting": (lambda: _deep(100_000), "nests deeper than 32 levels"),
    "lone surrogate": (_lone_surrogate, "unpaired UTF-16 surrogate"),
    "policy change in year 9999": (_year_9999, "data.effective_at: must lie between"),
    "NUL bytes in a rejected payload": (_nul_in_rejected, "unknown event type"),
    "300-character policy version": (_long_version, "data.version: String should have at most 64 characters"),
    "number of 5,000 digits": (_huge_number, "not valid JSON"),
    "incident update detected in year 1": (_year_1_update, "data.detected_at: must lie between"),
    "NaN": (lambda: '{"event_id": "nan-1", "type": "security_incident", "data": NaN}', "NaN is not a JSON number"),
    "repeated key": (
        lambda: '{"event_id": "dup-1", "event_id": "dup-2", "type": "security_incident"}',
        'the key "event_id" appears twice',
    ),
}


def _intake_rows(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(intake)).scalar_one())


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_hostile_payload_leaves_one_rejected_intake_row_with_a_one_line_reason(name: str, database_url: str) -> None:
    build, expected = HOSTILE[name]
    payload = build()
    engine = make_engine(database_url)
    try:
        result = ingest(engine, payload, max_bytes=MAX_BYTES, rules=NoticeRules())
        assert result.outcome is IntakeOutcome.REJECTED
        assert _intake_rows(engine) == 1
        with engine.connect() as conn:
            (rejection,) = list_rejections(conn)
    finally:
        engine.dispose()
    assert expected in rejection.reason
    assert "\n" not in rejection.reason and len(rejection.reason) <= 500
    raw = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    assert rejection.payload_sha256 == hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()
    assert rejection.excerpt is not None and len(rejection.excerpt) <= 1_024
    assert "\x00" not in rejection.excerpt + (rejection.event_id or "")


def test_a_fault_nobody_foresaw_while_judging_still_leaves_one_intake_row(database_url: str) -> None:
    def planner(_event: Any) -> str:
        raise OverflowError("date value out of range")  # a fault injected where a real one once hid

    engine = make_engine(database_url)
    try:
        result = ingest(engine, incident(people(2)), max_bytes=MAX_BYTES, planner=planner)
        with engine.connect() as conn:
            (rejection,) = list_rejections(conn)
        rows = _intake_rows(engine)
    finally:
        engine.dispose()
    assert result.outcome is IntakeOutcome.REJECTED and rows == 1
    assert rejection.reason == "herald could not judge this payload: OverflowError: date value out of range"
    assert rejection.event_id == result.event_id


def test_a_database_that_is_away_is_retried_not_mistaken_for_a_bad_payload() -> None:
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    try:
        with pytest.raises(OperationalError):
            ingest(engine, incident(people(1)), max_bytes=MAX_BYTES)
    finally:
        engine.dispose()


def test_the_excerpt_of_a_refused_payload_is_bounded_and_masks_every_contact(database_url: str) -> None:
    recipients = [
        {"user_id": f"u{i}", "name": f"Wang Fang {i}", "email": f"person{i}@example.com", "phone": "+8613812345678"}
        for i in range(200)
    ]
    event = incident(recipients)
    del event["data"]["remedies"]
    event["data"]["situation"] = "Reported by carol@example.org, call +14155550123"
    engine = make_engine(database_url)
    try:
        ingest(engine, event, max_bytes=MAX_BYTES)
        with engine.connect() as conn:
            (rejection,) = list_rejections(conn)
    finally:
        engine.dispose()
    excerpt = rejection.excerpt or ""
    assert 500 < len(excerpt) <= 1_024
    assert "@example.com" not in excerpt.replace("***@example.com", "")
    assert "carol@" not in excerpt and "13812345678" not in excerpt and "4155550123" not in excerpt
    assert "Wang Fang" not in excerpt


def test_hostile_payloads_on_the_queue_each_leave_one_row_and_good_events_still_arrive(
    make_settings: Callable[..., Any],
) -> None:
    settings = make_settings()
    good = [incident(people(2, prefix=f"g{i}")) for i in range(2)]
    with Pipeline(settings) as pipeline:
        pipeline.publish(good[0])
        for build, _expected in HOSTILE.values():
            payload = build()
            pipeline.publish(payload if isinstance(payload, str) else json.dumps(payload))
        pipeline.publish(good[1])
        pipeline.wait_terminal([e["event_id"] for e in good], timeout=60)
        deadline = time.monotonic() + 30
        while _intake_rows(pipeline.engine) < len(HOSTILE) + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        with pipeline.engine.connect() as conn:
            outcomes = dict(conn.execute(select(intake.c.outcome, func.count()).group_by(intake.c.outcome)).all())
    assert outcomes == {"accepted": 2, "rejected": len(HOSTILE)}


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param(_deep(50_000), "nests deeper than 32 levels", id="deep-nesting"),
        pytest.param(json.dumps(_year_9999()), "data.effective_at: must lie between", id="year-9999"),
        pytest.param(_lone_surrogate(), "unpaired UTF-16 surrogate", id="lone-surrogate"),
    ],
)
def test_send_refuses_a_hostile_payload_in_one_line_with_exit_2(
    payload: str, expected: str, make_settings: Callable[..., Any], tmp_path: Any
) -> None:
    from support import env_for, run

    path = tmp_path / "event.json"
    path.write_bytes(payload.encode("utf-8", "surrogatepass"))
    result = run(["send", str(path)], env_for(make_settings()))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert expected in result.stderr


def test_time_range_bounds_are_inclusive_at_the_start_and_exclusive_at_the_end() -> None:
    from worker.core.limits import EARLIEST, LATEST, in_time_range

    assert in_time_range(EARLIEST) and not in_time_range(EARLIEST - timedelta(microseconds=1))
    assert not in_time_range(LATEST) and in_time_range(LATEST - timedelta(microseconds=1))
    assert not in_time_range(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))))
    assert not in_time_range(datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-14))))
