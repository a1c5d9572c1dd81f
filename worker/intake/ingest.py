"""Ingest: judge an incoming payload, deduplicate it by event_id, and record the outcome.

Every payload ends in exactly one intake row: accepted, duplicate, conflict (a known id with
another body) or rejected with a one-line reason, whatever judging it raised. Bad input is
never retried: the call returns normally, so the broker acks it and the worker carries on.
Only a fault of herald's own infrastructure (the database away) raises, and then nothing was
recorded: dramatiq retries the message, which still holds the whole payload.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError

from worker.core.clock import utcnow
from worker.core.contacts import check_email, check_phone
from worker.core.errors import EventConflict, InvalidEvent
from worker.core.limits import EVENT_TYPE_CHARS, IDENTIFIER_CHARS
from worker.core.redact import mask_email, mask_phone, redact
from worker.intake.events import (
    Event,
    NoticeRules,
    PolicyChange,
    body_digest,
    check_notice_time,
    decode_payload,
    inline_people,
    topic_of,
    unjudgeable,
    validate_event,
    without_contacts,
)
from worker.schedule import jobs as scheduling
from worker.schedule.jobs import Scheduled
from worker.store import announcements, event_contacts, recipients
from worker.store.event_contacts import GivenContact
from worker.store.intake import IntakeOutcome, accept_event, fanout_cursor, is_known, record_intake, storable

log = logging.getLogger("herald.ingest")

#: Characters of a refused payload kept in the intake log, contacts masked.
EXCERPT_CHARS = 1_024
#: Keys whose values are contacts or names wherever they appear in a refused payload.
_PERSONAL_KEYS: dict[str, Callable[[str | None], str]] = {
    "email": mask_email,
    "phone": mask_phone,
    "name": lambda _value: "***",
}


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


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused payload's intake row: what is known of it, a masked excerpt and a hash."""

    outcome: IntakeOutcome
    reason: str
    event_id: str | None
    event_type: str | None
    size_bytes: int
    excerpt: str | None
    payload_sha256: str


@dataclass(slots=True)
class _Judging:
    """What is known of a payload so far, for the intake row if it is refused."""

    obj: dict[str, Any] | None = None
    event: Event | None = None


def ingest(
    engine: Engine,
    payload: bytes | str | dict[str, Any],
    *,
    max_bytes: int,
    planner: Callable[[Event], str] | None = None,
    rules: NoticeRules | None = None,
    unreadable: str | None = None,
    allowed_special_domains: Collection[str] = (),
) -> IngestResult:
    """Judge and store one event with its routing plan (``planner``); never raises for bad input.

    ``allowed_special_domains`` are special-use mail domains accepted in inline contacts
    (``worker.core.contacts.check_email``). ``unreadable`` says why the queue message that carried
    ``payload`` could not be run (``worker.queue_encoding``): the payload is then the raw
    message, refused with that reason.

    A policy change is checked against the lead-time ``rules`` (default: the promised week,
    nothing for minor changes) and put on the schedule instead of being sent at once. A
    repeat of an event already accepted is a duplicate whatever the time now: the rules held
    when it first arrived.

    Raises:
        sqlalchemy.exc.OperationalError (and other database faults that are not about the
            payload): nothing was recorded; the caller retries with the same payload.
    """
    judging = _Judging()
    try:
        if unreadable is not None:
            raise InvalidEvent(f"the queue message could not be run: {unreadable}")
        return _admit(
            engine,
            payload,
            judging,
            max_bytes=max_bytes,
            planner=planner,
            rules=rules,
            allowed_special_domains=allowed_special_domains,
        )
    except InvalidEvent as exc:
        outcome = IntakeOutcome.CONFLICT if isinstance(exc, EventConflict) else IntakeOutcome.REJECTED
        reason, event_id = exc.reason, exc.event_id
    except (DataError, IntegrityError) as exc:  # the payload made a statement fail: refuse it, not the next
        outcome, reason, event_id = IntakeOutcome.REJECTED, unjudgeable(exc.orig or exc), None
        log.error("payload refused after a database error: %s", reason)
    except Exception as exc:
        if _infrastructure(exc):
            raise
        outcome, reason, event_id = IntakeOutcome.REJECTED, unjudgeable(exc), None
        log.error("payload refused after an unforeseen error: %s", reason)
    refusal = _refusal(payload, judging, outcome, reason, event_id)
    record_refusal(engine, refusal)
    log.warning("%s event %s: %s", outcome.value, refusal.event_id or "(no id)", reason)
    return IngestResult(outcome, refusal.event_id, reason=reason)


def _admit(
    engine: Engine,
    payload: bytes | str | dict[str, Any],
    judging: _Judging,
    *,
    max_bytes: int,
    planner: Callable[[Event], str] | None,
    rules: NoticeRules | None,
    allowed_special_domains: Collection[str],
) -> IngestResult:
    """Judge and store an event that may be refused (``InvalidEvent``) at any step."""
    size = _size(payload)
    judging.obj = obj = decode_payload(payload, max_bytes=max_bytes)
    judging.event = event = validate_event(obj, rules=None)
    plan = planner(event) if planner is not None else None
    digest = body_digest(obj)
    body = without_contacts(event, obj)
    given = _given_contacts(event, allowed_special_domains)  # checked before the write transaction: it is the slow part
    now = (rules.now if rules is not None else None) or utcnow()
    republish: str | None = None
    scheduled: Scheduled | None = None
    with engine.begin() as conn:
        if not is_known(conn, event.event_id, digest):
            check_notice_time(event, rules or NoticeRules(now=now))
        outcome = accept_event(conn, event, digest, body, plan=plan)
        if outcome is IntakeOutcome.ACCEPTED:
            if given:
                refs = recipients.ensure_users(conn, list(given))
                event_contacts.record_given(conn, event.event_id, {refs[uid]: said for uid, said in given.items()})
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
    if outcome is IntakeOutcome.DUPLICATE:
        log.info("duplicate of event %s ignored", event.event_id)
    # A duplicate of an event whose fan-out never finished restarts it where it stands:
    # the first copy may have died between storing the event and enqueueing the fan-out.
    return IngestResult(outcome, event.event_id, fanout_from=cursor, republish=republish, scheduled=scheduled)


def _given_contacts(event: Event, allowed_special_domains: Collection[str]) -> dict[str, GivenContact]:
    """What the event says about each person it lists inline (by user_id), contacts checked.

    A person listed twice keeps the last listing, as a stored record would.
    """
    given: dict[str, GivenContact] = {}
    for person in inline_people(event):
        said = person.model_fields_set
        email = check_email(person.email, allowed_special_domains=allowed_special_domains) if person.email else None
        phone = check_phone(person.phone) if person.phone else None
        given[person.user_id] = GivenContact(
            name=person.name if "name" in said else None,
            email=email.value if email is not None else None,
            phone=phone.value if phone is not None else None,
            locale=person.locale if "locale" in said else None,
            time_zone=person.time_zone,
            opt_out=frozenset(person.opt_out),
            email_problem=email.problem if email is not None else None,
            phone_problem=phone.problem if phone is not None else None,
        )
    return given


# --- refusals ---------------------------------------------------------------------------


def _infrastructure(exc: BaseException) -> bool:
    """Whether ``exc`` is herald's own infrastructure failing (retry), not the payload (refuse)."""
    if isinstance(exc, DBAPIError):
        return not isinstance(exc, DataError | IntegrityError)
    return isinstance(exc, SQLAlchemyError | ConnectionError | TimeoutError)


def _size(payload: bytes | str | dict[str, Any]) -> int:
    return len(_raw_bytes(payload))


def _raw_bytes(payload: bytes | str | dict[str, Any]) -> bytes:
    """The payload as bytes, whatever it holds (half a surrogate pair, nesting too deep for JSON)."""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogatepass")
    try:
        return json.dumps(payload, ensure_ascii=False).encode("utf-8", "surrogatepass")
    except (RecursionError, ValueError):
        return repr(type(payload)).encode()


def _refusal(
    payload: bytes | str | dict[str, Any],
    judging: _Judging,
    outcome: IntakeOutcome,
    reason: str,
    event_id: str | None,
) -> Refusal:
    """The intake row of a refused payload: identity where known, a masked excerpt, a hash."""
    raw = _raw_bytes(payload)
    obj = judging.obj
    if event_id is None and judging.event is not None:
        event_id = judging.event.event_id
    if event_id is None and obj is not None and isinstance(obj.get("event_id"), str):
        event_id = obj["event_id"]
    event_type = obj.get("type") if obj is not None and isinstance(obj.get("type"), str) else None
    return Refusal(
        outcome=outcome,
        reason=reason,
        event_id=storable(event_id, IDENTIFIER_CHARS),  # a producer's text: shown and logged, so bounded
        event_type=storable(event_type, EVENT_TYPE_CHARS),
        size_bytes=len(raw),
        excerpt=excerpt_of(raw, obj),
        payload_sha256=hashlib.sha256(raw).hexdigest(),
    )


def excerpt_of(raw: bytes, obj: Mapping[str, Any] | None = None) -> str:
    """The first ``EXCERPT_CHARS`` of a refused payload, with every contact and name masked.

    A payload that parsed is masked by its structure (the values of ``email``, ``phone`` and
    ``name`` keys anywhere), then as text, so an address inside free text is masked too.
    """
    if obj is not None:
        text = json.dumps(_masked(obj), ensure_ascii=False)
    else:
        text = raw[: EXCERPT_CHARS * 4].decode("utf-8", "replace")
    return redact(text[: EXCERPT_CHARS * 2])[:EXCERPT_CHARS]


def _masked(value: Any, key: str | None = None) -> Any:
    if isinstance(value, dict):
        return {k: _masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(item, key) for item in value]
    if key in _PERSONAL_KEYS and isinstance(value, str):
        return _PERSONAL_KEYS[key](value)
    return value


def record_refusal(engine: Engine, refusal: Refusal) -> None:
    """Store a refused payload's intake row; it cannot fail for anything the payload holds.

    Every text is made storable by ``record_intake`` (escaped, cut to its column). Should the
    row still be refused by the database, the reason, the size and the hash are kept alone.

    Raises:
        sqlalchemy.exc.OperationalError: the database is away; the caller retries.
    """
    try:
        with engine.begin() as conn:
            _insert_refusal(conn, refusal)
    except (DataError, IntegrityError) as exc:
        log.error("intake row of a refused payload needed its bare form: %s", type(exc.orig or exc).__name__)
        bare = Refusal(
            outcome=refusal.outcome,
            reason=refusal.reason.encode("ascii", "backslashreplace").decode()[:500],
            event_id=None,
            event_type=None,
            size_bytes=refusal.size_bytes,
            excerpt=None,
            payload_sha256=refusal.payload_sha256,
        )
        with engine.begin() as conn:
            _insert_refusal(conn, bare)


def _insert_refusal(conn: Connection, refusal: Refusal) -> None:
    record_intake(
        conn,
        refusal.outcome,
        size_bytes=refusal.size_bytes,
        event_id=refusal.event_id,
        event_type=refusal.event_type,
        reason=refusal.reason,
        excerpt=refusal.excerpt,
        payload_sha256=refusal.payload_sha256,
    )
