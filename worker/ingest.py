"""Ingest: validate an incoming payload, deduplicate it by event_id, and record the outcome.

Bad input is never retried: it is stored as rejected with a one-line reason and the call
returns normally, so the broker acks it and the worker carries on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from worker import scheduling
from worker.clock import utcnow
from worker.errors import InvalidEvent
from worker.events import (
    Event,
    NoticeRules,
    PolicyChange,
    body_digest,
    check_notice_time,
    decode_payload,
    topic_of,
    validate_event,
)
from worker.scheduling import Scheduled
from worker.store import announcements
from worker.store.intake import IntakeOutcome, accept_event, fanout_cursor, is_known, record_intake

log = logging.getLogger("herald.ingest")


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What became of a payload; ``fanout_from`` is set when fan-out must (re)start there.

    ``republish`` names an announcement that this event updates (a later event of an
    incident that is already announced): it must be published again.
    """

    outcome: IntakeOutcome
    event_id: str | None
    reason: str | None = None
    fanout_from: str | None = None
    republish: str | None = None
    scheduled: Scheduled | None = None  # a policy change's jobs, and earlier versions it replaced


def _excerpt(payload: bytes | str | dict[str, Any]) -> tuple[str, int]:
    if isinstance(payload, dict):
        text = json.dumps(payload, ensure_ascii=False)
    elif isinstance(payload, bytes):
        text = payload.decode("utf-8", errors="replace")
    else:
        text = payload
    return text[:4_096], len(text.encode("utf-8", errors="replace"))


def ingest(
    engine: Engine,
    payload: bytes | str | dict[str, Any],
    *,
    max_bytes: int,
    planner: Callable[[Event], str] | None = None,
    rules: NoticeRules | None = None,
) -> IngestResult:
    """Validate and store one event with its routing plan (``planner``); never raises for bad input.

    A policy change is checked against the lead-time ``rules`` (default: the promised week,
    nothing for minor changes) and put on the schedule instead of being sent at once. A
    repeat of an event already accepted is a duplicate whatever the time now: the rules held
    when it first arrived.
    """
    excerpt, size = _excerpt(payload)
    obj: dict[str, Any] | None = None
    republish: str | None = None
    scheduled: Scheduled | None = None
    try:
        obj = decode_payload(payload, max_bytes=max_bytes)
        event = validate_event(obj, rules=None)
        plan = planner(event) if planner is not None else None
        now = (rules.now if rules is not None else None) or utcnow()
        with engine.begin() as conn:
            digest = body_digest(obj)
            if not is_known(conn, event.event_id, digest):
                check_notice_time(event, rules or NoticeRules(now=now))
            outcome = accept_event(conn, event, digest, obj, plan=plan)
            if outcome is IntakeOutcome.ACCEPTED:
                republish = announcements.bump(conn, topic_of(event), now)
                if isinstance(event, PolicyChange):
                    scheduled = scheduling.schedule_change(conn, event, now)
            record_intake(
                conn,
                outcome,
                size_bytes=size,
                event_id=event.event_id,
                event_type=event.type,
                source=event.source,
            )
            cursor = fanout_cursor(conn, event.event_id)
            if isinstance(event, PolicyChange) and not scheduling.notices_started(conn, event.event_id):
                cursor = None  # the scheduler starts the fan-out when the notices are due
    except InvalidEvent as exc:
        event_id = exc.event_id or (obj.get("event_id") if obj and isinstance(obj.get("event_id"), str) else None)
        event_type = obj.get("type") if obj and isinstance(obj.get("type"), str) else None
        with engine.begin() as conn:
            record_intake(
                conn,
                IntakeOutcome.REJECTED,
                size_bytes=size,
                event_id=event_id,
                event_type=event_type,
                reason=exc.reason,
                excerpt=excerpt,
            )
        log.warning("rejected event %s: %s", event_id or "(no id)", exc.reason)
        return IngestResult(IntakeOutcome.REJECTED, event_id, reason=exc.reason)
    if outcome is IntakeOutcome.DUPLICATE:
        log.info("duplicate of event %s ignored", event.event_id)
    # A duplicate of an event whose fan-out never finished restarts it where it stands:
    # the first copy may have died between storing the event and enqueueing the fan-out.
    return IngestResult(outcome, event.event_id, fanout_from=cursor, republish=republish, scheduled=scheduled)
