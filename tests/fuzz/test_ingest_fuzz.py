"""Every payload, whatever it holds, leaves exactly one intake row and never makes ingest raise.

Each example goes through the ingest actor's own function (``actors.ingest.fn``: the real
``worker.intake.ingest.ingest`` with the arguments the actor passes, the configured size limit, the
routing planner and the notice rules) on SQLite and PostgreSQL, with a payload text exactly
as it comes off the queue. Its follow-up messages go to an in-memory broker. A test's
examples share one database; each example counts the rows it adds.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from budget import FUZZ, Tally, examples
from dramatiq.brokers.stub import StubBroker
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select
from strategies import EVENT_BUILDERS, Payload, bounded_payloads, malformed_payloads, mutated_payloads, valid_payloads

from worker.actors import Actors, declare_actors
from worker.config import Settings
from worker.store.intake import event_summary
from worker.store.schema import intake

pytestmark = pytest.mark.fuzz

#: A rejection's reason is stored and shown to the producer's on-call engineer: one short line.
REASON_LIMIT = 500


@dataclass
class IngestRig:
    """The ingest actor of one test, on that test's database, with an in-memory broker."""

    settings: Settings
    actors: Actors
    broker: StubBroker

    def __repr__(self) -> str:
        return f"IngestRig({self.engine.dialect.name})"

    @property
    def engine(self) -> Engine:
        return self.actors.runtime.engine

    def send(self, text: str) -> None:
        """Run the ingest actor's function on one payload, as a worker does for a message."""
        self.actors.ingest.fn(text)
        self.broker.flush_all()  # the fan-out it asked for is the pipeline test's business


@pytest.fixture
def ingest_rig(make_settings: Callable[..., Settings]) -> Iterator[IngestRig]:
    settings = make_settings()
    broker = StubBroker()
    actors = declare_actors(broker, settings)
    yield IngestRig(settings, actors, broker)
    actors.runtime.close()
    broker.close()


def _intake_rows(engine: Engine, after_id: int) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(intake).where(intake.c.id > after_id).order_by(intake.c.id)))


def _last_intake_id(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(intake.c.id), 0))).scalar_one())


def _stored(engine: Engine, event_id: str) -> bool:
    """Whether an accepted event reads back as ``herald events show`` reads it."""
    with engine.connect() as conn:
        return event_summary(conn, event_id) is not None


def _one_row_for(rig: IngestRig, payload: Payload, tally: Tally, attempt: int) -> Any:
    """Ingest one payload and return the one intake row it left; fail if it left none or two."""
    before = _last_intake_id(rig.engine)
    tally["payloads"] += 1
    try:
        rig.send(payload.text)
    except Exception as exc:
        tally["raised"] += 1
        exc.add_note(f"ingest raised {type(exc).__name__} for {payload!r} (copy {attempt + 1})")
        raise
    rows = _intake_rows(rig.engine, before)
    assert len(rows) == 1, f"{len(rows)} intake rows for one payload (copy {attempt + 1}): {payload!r}"
    row = rows[0]
    tally[row.outcome] += 1
    if row.outcome == "rejected":
        reason = row.reason or ""
        assert reason.strip(), f"rejected without a reason: {payload!r}"
        assert "\n" not in reason and "\r" not in reason, f"reason is not one line: {reason[:200]!r}"
        assert len(reason) <= REASON_LIMIT, f"reason of {len(reason)} characters: {reason[:200]!r}…"
    if row.outcome == "accepted":
        try:
            stored = bool(row.event_id) and _stored(rig.engine, str(row.event_id))
        except Exception as exc:
            exc.add_note(f"an accepted event could not be read back: {payload!r}")
            raise
        assert stored, f"accepted but not stored: {payload!r}"
    return row


def _ingest_copies(rig: IngestRig, tally: Tally, payload: Payload, copies: int) -> None:
    """Ingest ``copies`` copies of one payload; each leaves exactly one intake row, and the
    second copy of an accepted event is a duplicate."""
    payload = payload.fresh(uuid.uuid4().hex[:8])
    first = _one_row_for(rig, payload, tally, 0)
    if payload.label.startswith("valid ") and first.outcome != "accepted":
        tally["valid but refused"] += 1
    for attempt in range(1, copies):
        again = _one_row_for(rig, payload, tally, attempt)
        if first.outcome == "accepted":
            assert again.outcome == "duplicate", f"second copy of an accepted event was {again.outcome}: {payload!r}"


#: Most payloads are sent once; one in four twice, as a producer that retries does.
COPIES = st.sampled_from([1, 1, 1, 2])


@settings(FUZZ, max_examples=examples(200))
@given(payload=valid_payloads(), copies=COPIES)
def test_valid_events_of_every_type(ingest_rig: IngestRig, tally: Tally, payload: Payload, copies: int) -> None:
    """Valid events of the four types, with rich text and fields at the published maxima."""
    _ingest_copies(ingest_rig, tally, payload, copies)


@settings(FUZZ, max_examples=examples(150))
@given(payload=bounded_payloads(), copies=COPIES)
def test_valid_events_at_the_published_bounds(
    ingest_rig: IngestRig, tally: Tally, payload: Payload, copies: int
) -> None:
    """Valid by the published schema and at its edges: the longest one-line fields, the most
    and longest opt-outs, times at the calendar's ends, control characters in one-line fields."""
    _ingest_copies(ingest_rig, tally, payload, copies)


@settings(FUZZ, max_examples=examples(150))
@given(payload=mutated_payloads("types", shapes=True), copies=COPIES)
def test_wrong_types_and_missing_unknown_or_repeated_keys(
    ingest_rig: IngestRig, tally: Tally, payload: Payload, copies: int
) -> None:
    """A field of the wrong type, a field removed, an unknown key, a key written twice."""
    _ingest_copies(ingest_rig, tally, payload, copies)


@settings(FUZZ, max_examples=examples(200))
@given(payload=mutated_payloads("lengths"), copies=COPIES)
def test_strings_and_lists_at_and_beyond_plausible_lengths(
    ingest_rig: IngestRig, tally: Tally, payload: Payload, copies: int
) -> None:
    """Strings of 0 to 100,000 characters and lists of 0 to 1,000 items in any field."""
    _ingest_copies(ingest_rig, tally, payload, copies)


@settings(FUZZ, max_examples=examples(150))
@given(payload=mutated_payloads("characters"), copies=COPIES)
def test_control_surrogate_rtl_and_non_bmp_characters(
    ingest_rig: IngestRig, tally: Tally, payload: Payload, copies: int
) -> None:
    """NUL, \\x01, ESC, DEL, C1 controls, CR/LF, lone surrogates raw and escaped, RTL overrides, emoji."""
    _ingest_copies(ingest_rig, tally, payload, copies)


@pytest.mark.parametrize("kind", list(EVENT_BUILDERS))
@settings(FUZZ, max_examples=examples(150))
@given(data=st.data(), copies=COPIES)
def test_dates_at_and_beyond_the_calendars_ends(
    ingest_rig: IngestRig, tally: Tally, kind: str, data: st.DataObject, copies: int
) -> None:
    """Years 1 and 9999 with ±14:00 offsets, naive and impossible times, Unix times, garbage,
    in each date of each event type."""
    payload = data.draw(mutated_payloads("dates", kind=kind), label="payload")
    _ingest_copies(ingest_rig, tally, payload, copies)


@settings(FUZZ, max_examples=examples(80))
@given(payload=mutated_payloads("numbers"), copies=COPIES)
def test_huge_and_non_finite_numbers(ingest_rig: IngestRig, tally: Tally, payload: Payload, copies: int) -> None:
    """10**400, a 5,000-digit integer, 1e400, -0, NaN and Infinity as JSON text, 2**64."""
    _ingest_copies(ingest_rig, tally, payload, copies)


@settings(FUZZ, max_examples=examples(80))
@given(payload=mutated_payloads("nesting"), copies=COPIES)
def test_deeply_nested_values(ingest_rig: IngestRig, tally: Tally, payload: Payload, copies: int) -> None:
    """Lists and objects nested 10 to 100,000 deep in place of any field."""
    _ingest_copies(ingest_rig, tally, payload, copies)


@settings(FUZZ, max_examples=examples(150))
@given(payload=malformed_payloads(max_bytes=1_048_576), copies=COPIES)
def test_text_that_is_not_one_json_object(ingest_rig: IngestRig, tally: Tally, payload: Payload, copies: int) -> None:
    """Cut short, wrapped, encoded twice, junk after, not an object, empty, invalid UTF-8, oversize."""
    assert ingest_rig.settings.max_event_bytes == 1_048_576  # the size the oversize payloads aim at
    _ingest_copies(ingest_rig, tally, payload, copies)
