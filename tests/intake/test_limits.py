"""Limits are declared once (``worker.core.limits``) and used by validation and the schema alike,
so an event herald accepts can always be stored, fanned out and delivered."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from support import Pipeline, incident, people, policy_change

from worker.config import Settings
from worker.core import limits
from worker.intake.events import topic_of, validate_event
from worker.store.engine import make_engine
from worker.store.schema import metadata


def test_the_migrated_database_is_exactly_the_declared_schema(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            differences = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_one_recipient_with_the_longest_opt_outs_does_not_stop_a_fan_out(
    make_settings: Callable[..., Settings],
) -> None:
    longest = [f"{chr(ord('a') + i)}{'x' * (limits.CHANNEL_NAME_CHARS - 1)}" for i in range(limits.OPT_OUT_CHANNELS)]
    crowd = people(150)  # more than one audience page (100 in tests)
    crowd[3]["opt_out"] = longest
    event = incident(crowd)
    with Pipeline(make_settings()) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]], timeout=90)
        outcomes = pipeline.outcomes(event["event_id"])
    assert outcomes == {"reached": 150}


def test_an_event_with_every_field_at_its_limit_is_stored_and_reaches_everyone(
    make_settings: Callable[..., Settings],
) -> None:
    person: dict[str, Any] = {
        "user_id": "u" * limits.IDENTIFIER_CHARS,
        "name": "名" * limits.NAME_CHARS,
        "email": "a@example.com",
        "locale": "zh-Hant-TW-x-private-extension-tags",
        "time_zone": "America/Argentina/ComodRivadavia",
        "opt_out": [f"{chr(ord('a') + i)}{'y' * (limits.CHANNEL_NAME_CHARS - 1)}" for i in range(8)],
    }
    edge = datetime(2099, 12, 31, 23, 0, tzinfo=UTC)
    event = incident(
        [person],
        incident_id="i" * limits.IDENTIFIER_CHARS,
        title="标" * limits.LINE_CHARS,
        detected_at=limits.EARLIEST.isoformat(),
        situation="情" * limits.TEXT_CHARS,
    )
    event["event_id"] = "e" * limits.IDENTIFIER_CHARS
    event["source"] = "s" * limits.LINE_CHARS
    change = policy_change(
        ahead=timedelta(days=30),
        document="D" * limits.DOCUMENT_CHARS,
        version="V" * limits.VERSION_CHARS,
        effective_at=edge.isoformat(),
    )
    with Pipeline(make_settings()) as pipeline:
        pipeline.publish(event)
        pipeline.publish(change)
        pipeline.wait_terminal([event["event_id"]], timeout=60)
        outcomes = pipeline.outcomes(event["event_id"])
        with pipeline.engine.connect() as conn:
            from worker.store.intake import intake_counts

            change_intake = intake_counts(conn, change["event_id"])
    assert outcomes == {"reached": 1}
    assert change_intake == {"accepted": 1}
    assert len(topic_of(validate_event(change))) <= limits.TOPIC_CHARS
