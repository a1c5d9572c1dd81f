"""Deliveries, claims and the ledger, recipients and the inbox, on every real database backend.

Each test gets a fresh migrated database (SQLite always, PostgreSQL when
``HERALD_TEST_DATABASE_URL`` is set) through the ``database_url`` fixture.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, select, update
from support import people

from worker.core.errors import PermanentDeliveryError, TransientDeliveryError, UnknownOutcomeError
from worker.core.messages import DeliveryKey, Receipt
from worker.core.statuses import TERMINAL, UNCONFIRMED_CALL, DeliveryStatus, can_move, overturnable, statuses_before
from worker.intake.events import RecipientIn
from worker.store.deliveries import claim, exhaust, open_deliveries, record, still_held
from worker.store.engine import make_engine
from worker.store.inbox import deliver_letters, inbox, letter_count, mark_read, unread_count
from worker.store.moves import Move, apply_status
from worker.store.outcomes import outcome_counts, unfinished_count
from worker.store.recipients import ensure_users, import_csv, load, page_all, refs_for, upsert_people
from worker.store.schema import deliveries, ledger, recipients

S = DeliveryStatus
EVENT = "evt-ledger-1"
EMAIL = "email"
LEASE = timedelta(minutes=5)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = make_engine(database_url)
    yield eng
    eng.dispose()


# --------------------------------------------------------------------------- helpers


def refs(count: int, prefix: str = "r") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(count)]


def key(ref: str, channel: str = EMAIL, event_id: str = EVENT, step: int = 0) -> DeliveryKey:
    return DeliveryKey(event_id, ref, channel, step)


def statuses(conn: Connection, event_id: str = EVENT, channel: str = EMAIL) -> dict[str, str]:
    rows = conn.execute(
        select(deliveries.c.recipient_ref, deliveries.c.status).where(
            deliveries.c.event_id == event_id, deliveries.c.channel == channel
        )
    )
    return {ref: status for ref, status in rows}


def delivery(conn: Connection, ref: str, channel: str = EMAIL, event_id: str = EVENT) -> Any:
    return conn.execute(
        select(deliveries).where(
            deliveries.c.event_id == event_id, deliveries.c.channel == channel, deliveries.c.recipient_ref == ref
        )
    ).one()


def ledger_rows(conn: Connection, ref: str | None = None, event_id: str = EVENT) -> list[Any]:
    stmt = select(ledger).where(ledger.c.event_id == event_id).order_by(ledger.c.id)
    if ref is not None:
        stmt = stmt.where(ledger.c.recipient_ref == ref)
    return list(conn.execute(stmt))


def force_status(conn: Connection, ref: str, status: DeliveryStatus) -> None:
    conn.execute(
        update(deliveries)
        .where(deliveries.c.event_id == EVENT, deliveries.c.recipient_ref == ref)
        .values(status=status.value)
    )


def delivered(ref: str, message_id: str | None = None) -> Receipt:
    return Receipt(key=key(ref), status=S.DELIVERED, provider_message_id=message_id or f"msg-{ref}")


# --------------------------------------------------------------------------- can_move


# Written out by hand, independently of statuses._RANK: every move a delivery may make.
ALLOWED = {
    S.PENDING: {S.SENDING, S.RETRYING, S.SENT, S.DELIVERED, S.FAILED, S.ACKNOWLEDGED, S.SKIPPED},
    S.SENDING: {S.SENDING, S.RETRYING, S.SENT, S.DELIVERED, S.FAILED, S.ACKNOWLEDGED},
    S.RETRYING: {S.SENDING, S.RETRYING, S.SENT, S.DELIVERED, S.FAILED, S.ACKNOWLEDGED},
    S.SENT: {S.DELIVERED, S.FAILED, S.ACKNOWLEDGED},
    S.DELIVERED: {S.ACKNOWLEDGED},
    S.ACKNOWLEDGED: set(),
    S.FAILED: set(),
    S.SKIPPED: set(),
}
ALL_PAIRS = list(itertools.product(DeliveryStatus, DeliveryStatus))


@pytest.mark.parametrize(("old", "new"), ALL_PAIRS, ids=[f"{o.value}->{n.value}" for o, n in ALL_PAIRS])
def test_can_move_only_forward(old: DeliveryStatus, new: DeliveryStatus) -> None:
    assert can_move(old, new) is (new in ALLOWED[old])


@pytest.mark.parametrize("new", list(DeliveryStatus))
def test_failed_is_final(new: DeliveryStatus) -> None:
    assert not can_move(S.FAILED, new)


@pytest.mark.parametrize(("old", "new"), [(S.SENDING, S.RETRYING), (S.RETRYING, S.SENDING)])
def test_in_flight_statuses_move_both_ways(old: DeliveryStatus, new: DeliveryStatus) -> None:
    assert can_move(old, new)


@pytest.mark.parametrize("new", [S.SENT, S.SENDING, S.RETRYING, S.PENDING, S.FAILED])
def test_delivered_never_goes_back(new: DeliveryStatus) -> None:
    assert not can_move(S.DELIVERED, new)
    assert can_move(S.DELIVERED, S.ACKNOWLEDGED)


@pytest.mark.parametrize("new", list(DeliveryStatus))
def test_statuses_before_agrees_with_can_move(new: DeliveryStatus) -> None:
    assert set(statuses_before(new)) == {old for old in DeliveryStatus if new in ALLOWED[old]}


def test_terminal_statuses() -> None:
    assert {s for s in DeliveryStatus if s.terminal} == {S.DELIVERED, S.ACKNOWLEDGED, S.FAILED, S.SKIPPED} == TERMINAL


def test_the_database_applies_exactly_the_moves_can_move_allows(engine: Engine) -> None:
    """record()'s guarded UPDATE, for every (old, new) pair, on this backend.

    No receipt ever reports "pending" (channels return sent/delivered/retrying/failed), so
    pairs ending in pending are left to the pure can_move table above.
    """
    pairs = [(old, new) for old, new in ALL_PAIRS if new is not S.PENDING]
    pair_refs = {pair: f"p{i:02d}" for i, pair in enumerate(pairs)}
    with engine.begin() as conn:
        open_deliveries(conn, EVENT, EMAIL, list(pair_refs.values()))
        for (old, _new), ref in pair_refs.items():
            force_status(conn, ref, old)
    with engine.begin() as conn:
        record(conn, [Receipt(key=key(ref), status=new) for (_old, new), ref in pair_refs.items()], attempts={})
    with engine.connect() as conn:
        now = statuses(conn)
        assert len(ledger_rows(conn)) == len(pairs)
    wrong = {
        f"{old.value}->{new.value}": now[ref]
        for (old, new), ref in pair_refs.items()
        if now[ref] != (new.value if new in ALLOWED[old] else old.value)
    }
    assert wrong == {}


@pytest.mark.parametrize("new", list(DeliveryStatus))
def test_only_a_keypress_overturns_anything_and_only_an_unconfirmed_call(new: DeliveryStatus) -> None:
    assert overturnable(new) == ((S.FAILED, UNCONFIRMED_CALL) if new is S.ACKNOWLEDGED else None)


@pytest.mark.parametrize(
    ("old", "code", "new", "expected"),
    [
        (S.FAILED, UNCONFIRMED_CALL, S.ACKNOWLEDGED, "acknowledged"),  # the keypress lost the race
        (S.FAILED, "no-answer", S.ACKNOWLEDGED, "failed"),
        (S.FAILED, "30003", S.ACKNOWLEDGED, "failed"),
        (S.FAILED, UNCONFIRMED_CALL, S.DELIVERED, "failed"),
        (S.FAILED, "30003", S.DELIVERED, "failed"),  # a late delivered never replaces failed
        (S.SKIPPED, UNCONFIRMED_CALL, S.ACKNOWLEDGED, "skipped"),
    ],
)
def test_a_callback_overturns_exactly_an_unconfirmed_call(
    engine: Engine, old: DeliveryStatus, code: str, new: DeliveryStatus, expected: str
) -> None:
    with engine.begin() as conn:
        open_deliveries(conn, EVENT, "phone", ["a"])
        conn.execute(update(deliveries).values(status=old.value, error_code=code, provider_message_id="CAx"))
    with engine.begin() as conn:
        moved = apply_status(conn, "CAx", new, None)
    with engine.connect() as conn:
        row = delivery(conn, "a", "phone")
        rows = ledger_rows(conn, "a")
    assert row.status == expected
    if expected == new.value:
        assert isinstance(moved, Move) and moved.overturned
        assert row.error_code is None and [r.status for r in rows] == [new.value]
    else:
        assert moved is False and rows == []


# --------------------------------------------------------------------------- open_deliveries


def test_opening_the_same_keys_twice_creates_one_row_per_key(engine: Engine) -> None:
    with engine.begin() as conn:
        assert open_deliveries(conn, EVENT, EMAIL, ["a", "b", "c"]) == ["a", "b", "c"]
    with engine.begin() as conn:
        assert open_deliveries(conn, EVENT, EMAIL, ["b", "c", "d"]) == ["b", "c", "d"]
        open_deliveries(conn, EVENT, "insite", ["a"])
        open_deliveries(conn, EVENT, EMAIL, ["a"], step=1)
    with engine.connect() as conn:
        rows = list(conn.execute(select(deliveries)))
        keys = [(r.event_id, r.recipient_ref, r.channel, r.step) for r in rows]
        assert len(keys) == len(set(keys)) == 6
        assert statuses(conn) == {"a": "pending", "b": "pending", "c": "pending", "d": "pending"}
        assert all(r.attempts == 0 and r.claimed_by is None for r in rows)
        assert ledger_rows(conn) == []


def test_failures_passed_in_are_recorded_failed_with_a_ledger_row_each(engine: Engine) -> None:
    failures = {
        "b": PermanentDeliveryError("no email on record", code="no-contact"),
        "d": PermanentDeliveryError("invalid email address a***@example: bad domain", code="invalid-contact"),
    }
    with engine.begin() as conn:
        to_send = open_deliveries(conn, EVENT, EMAIL, ["a", "b", "c", "d"], failures=failures)
    assert to_send == ["a", "c"]
    with engine.connect() as conn:
        assert statuses(conn) == {"a": "pending", "b": "failed", "c": "pending", "d": "failed"}
        rows = ledger_rows(conn)
        assert sorted(r.recipient_ref for r in rows) == ["b", "d"]
        for row in rows:
            error = failures[row.recipient_ref]
            assert (row.status, row.attempt, row.channel, row.step) == ("failed", 0, EMAIL, 0)
            assert (row.error_class, row.error_code, row.reason) == (
                "PermanentDeliveryError",
                error.code,
                error.message,
            )
        b = delivery(conn, "b")
        assert (b.error_code, b.reason) == ("no-contact", "no email on record")
        assert unfinished_count(conn, [EVENT]) == 2
        assert outcome_counts(conn, EVENT) == {(EMAIL, "pending"): 2, (EMAIL, "failed"): 2}


# --------------------------------------------------------------------------- claim


def test_a_fresh_batch_claims_every_key_with_attempt_one(engine: Engine) -> None:
    keys = refs(5)
    with engine.begin() as conn:
        open_deliveries(conn, EVENT, EMAIL, keys)
    with engine.begin() as conn:
        got = claim(conn, EVENT, EMAIL, keys, claimant="msg-1", lease=LEASE)
    assert got.attempts == {ref: 1 for ref in keys}
    assert got.busy == []
    with engine.connect() as conn:
        assert set(statuses(conn).values()) == {"sending"}
        row = delivery(conn, keys[0])
        assert row.claimed_by == "msg-1"
        assert row.lease_until is not None


def test_a_live_lease_keeps_other_claimants_out_but_lets_the_same_message_back_in(engine: Engine) -> None:
    keys = refs(4)
    with engine.begin() as conn:
        open_deliveries(conn, EVENT, EMAIL, keys)
        assert claim(conn, EVENT, EMAIL, keys, claimant="msg-1", lease=LEASE).attempts == dict.fromkeys(keys, 1)

    with engine.begin() as conn:
        other = claim(conn, EVENT, EMAIL, keys, claimant="msg-2", lease=LEASE)
    assert other.attempts == {}
    assert sorted(other.busy) == keys

    # The same message redelivered after its worker died: it takes its keys back.
    with engine.begin() as conn:
        again = claim(conn, EVENT, EMAIL, keys, claimant="msg-1", lease=LEASE)
    assert again.attempts == dict.fromkeys(keys, 2)
    assert again.busy == []
    with engine.connect() as conn:
        assert {delivery(conn, ref).attempts for ref in keys} == {2}


def test_a_paused_copy_of_a_batch_keeps_only_the_keys_its_attempt_still_holds(engine: Engine) -> None:
    """The attempt number fences a claim: a redelivered copy of the same message (same
    claimant) that claimed some keys again leaves the paused original only the rest."""
    keys = refs(6)
    with engine.begin() as conn:
        open_deliveries(conn, EVENT, EMAIL, keys)
        paused = claim(conn, EVENT, EMAIL, keys, claimant="msg-1", lease=LEASE)
    with engine.begin() as conn:
        assert still_held(conn, paused, keys, LEASE) == set(keys)
        copy = claim(conn, EVENT, EMAIL, keys[:4], claimant="msg-1", lease=LEASE)
    assert copy.attempts == dict.fromkeys(keys[:4], 2)
    with engine.begin() as conn:
        assert still_held(conn, paused, keys, LEASE) == set(keys[4:])
        assert still_held(conn, copy, keys, LEASE) == set(keys[:4])
        record(conn, [Receipt(key(keys[0]), S.DELIVERED)], copy.attempts)
        assert still_held(conn, copy, keys, LEASE) == set(keys[1:4])  # recorded: no longer held


def test_after_the_lease_expires_another_claimant_can_claim(engine: Engine) -> None:
    keys = refs(3)
    with engine.begin() as conn:
        open_deliveries(conn, EVENT, EMAIL, keys)
        claim(conn, EVENT, EMAIL, keys, claimant="msg-1", lease=timedelta(milliseconds=1))
    time.sleep(0.05)
    with engine.begin() as conn:
        taken = claim(conn, EVENT, EMAIL, keys, claimant="msg-2", lease=LEASE)
    assert taken.attempts == dict.fromkeys(keys, 2)
    assert taken.busy == []
    with engine.connect() as conn:
        assert {delivery(conn, ref).claimed_by for ref in keys} == {"msg-2"}
    # ... and now msg-1 is the one kept out.
    with engine.begin() as conn:
        late = claim(conn, EVENT, EMAIL, keys, claimant="msg-1", lease=LEASE)
    assert late.attempts == {}
    assert sorted(late.busy) == keys


def test_delivered_and_failed_keys_are_never_claimed_again(engine: Engine) -> None:
    keys = ["done", "failed", "retry", "fresh"]
    with engine.begin() as conn:
        open_deliveries(conn, EVENT, EMAIL, keys)
        first = claim(conn, EVENT, EMAIL, ["done", "failed", "retry"], claimant="msg-1", lease=LEASE)
        record(
            conn,
            [
                delivered("done"),
                Receipt.failed(key("failed"), PermanentDeliveryError("550 no such user", code="550")),
                Receipt.failed(key("retry"), TransientDeliveryError("421 busy", code="421")),
            ],
            first.attempts,
        )
    for claimant, lease in [("msg-1", LEASE), ("msg-2", LEASE), ("msg-3", timedelta(milliseconds=1))]:
        time.sleep(0.01)
        with engine.begin() as conn:
            got = claim(conn, EVENT, EMAIL, keys, claimant=claimant, lease=lease)
            record(conn, [Receipt.failed(key(r), TransientDeliveryError("again")) for r in got.attempts], got.attempts)
        assert "done" not in got.attempts and "failed" not in got.attempts
        assert "done" not in got.busy and "failed" not in got.busy
        assert set(got.attempts) == {"retry", "fresh"}
    with engine.connect() as conn:
        assert delivery(conn, "done").attempts == 1
        assert delivery(conn, "retry").attempts == 4
        assert delivery(conn, "fresh").attempts == 3
        assert statuses(conn)["done"] == "delivered"


def test_each_claim_counts_a_request_and_a_receipt_that_sent_nothing_gives_it_back(engine: Engine) -> None:
    keys = ["ok", "refused", "unknown", "lost"]
    with engine.begin() as conn:
        open_deliveries(conn, EVENT, EMAIL, keys)
        first = claim(conn, EVENT, EMAIL, keys, claimant="msg-1", lease=LEASE)
        assert first.requests == dict.fromkeys(keys, 1)
        assert {delivery(conn, ref).requests for ref in keys} == {1}  # durable before any request
        record(
            conn,
            [
                delivered("ok"),
                Receipt.failed(key("refused"), TransientDeliveryError("451 later", code="451")),
                Receipt.failed(key("unknown"), UnknownOutcomeError("no reply after the data", code="x")),
            ],
            first.attempts,
            first.requests,
        )  # "lost": its worker died before recording anything
    with engine.connect() as conn:
        assert {ref: delivery(conn, ref).requests for ref in keys} == {"ok": 1, "refused": 0, "unknown": 1, "lost": 1}
        assert {r.recipient_ref: r.requests for r in ledger_rows(conn)} == {"ok": 1, "refused": 0, "unknown": 1}

    with engine.begin() as conn:
        again = claim(conn, EVENT, EMAIL, keys, claimant="msg-1", lease=LEASE)
    assert again.requests == {"refused": 1, "unknown": 2, "lost": 2}


def test_a_claim_of_unknown_keys_claims_nothing(engine: Engine) -> None:
    with engine.begin() as conn:
        open_deliveries(conn, EVENT, EMAIL, ["a"])
        got = claim(conn, EVENT, EMAIL, ["ghost"], claimant="msg-1", lease=LEASE)
        other_channel = claim(conn, EVENT, "insite", ["a"], claimant="msg-1", lease=LEASE)
    assert got.attempts == {} and got.busy == []
    assert other_channel.attempts == {} and other_channel.busy == []


# --------------------------------------------------------------------------- record


def test_ledger_rows_carry_attempts_and_errors_and_the_status_moves_forward(engine: Engine) -> None:
    with engine.begin() as conn:
        open_deliveries(conn, EVENT, EMAIL, ["a"])
        first = claim(conn, EVENT, EMAIL, ["a"], claimant="msg-1", lease=LEASE)
        record(
            conn,
            [Receipt.failed(key("a"), TransientDeliveryError("421 4.7.0 try again later", code="421"), tries=3)],
            first.attempts,
        )
    with engine.connect() as conn:
        row = delivery(conn, "a")
        assert (row.status, row.error_class, row.error_code) == ("retrying", "TransientDeliveryError", "421")
        assert row.claimed_by is None and row.lease_until is None
    with engine.begin() as conn:
        second = claim(conn, EVENT, EMAIL, ["a"], claimant="msg-1", lease=LEASE)
        assert second.attempts == {"a": 2}
        record(conn, [delivered("a", "provider-42")], second.attempts)

    with engine.connect() as conn:
        rows = ledger_rows(conn, "a")
        row = delivery(conn, "a")
    assert [(r.attempt, r.status, r.tries) for r in rows] == [(1, "retrying", 3), (2, "delivered", 1)]
    assert (rows[0].error_class, rows[0].error_code, rows[0].reason) == (
        "TransientDeliveryError",
        "421",
        "421 4.7.0 try again later",
    )
    assert (rows[1].error_class, rows[1].error_code, rows[1].reason) == (None, None, None)
    assert rows[1].provider_message_id == "provider-42"
    assert rows[0].recorded_at is not None
    assert (row.status, row.attempts, row.provider_message_id) == ("delivered", 2, "provider-42")
    assert (row.error_class, row.error_code, row.reason) == (None, None, None)


@pytest.mark.parametrize(
    "late",
    [
        pytest.param(Receipt.failed(key("a"), TransientDeliveryError("timeout", code="timeout")), id="retrying"),
        pytest.param(Receipt(key=key("a"), status=S.SENT, provider_message_id="late-1"), id="sent"),
        pytest.param(Receipt(key=key("a"), status=S.SENDING), id="sending"),
        pytest.param(Receipt.failed(key("a"), PermanentDeliveryError("bounced", code="550")), id="failed"),
    ],
)
def test_a_late_receipt_after_delivered_keeps_delivered_but_is_still_in_the_ledger(
    engine: Engine, late: Receipt
) -> None:
    with engine.begin() as conn:
        open_deliveries(conn, EVENT, EMAIL, ["a"])
        got = claim(conn, EVENT, EMAIL, ["a"], claimant="msg-1", lease=LEASE)
        record(conn, [delivered("a", "first-id")], got.attempts)
    with engine.begin() as conn:
        record(conn, [late], {"a": 1})
    with engine.connect() as conn:
        row = delivery(conn, "a")
        rows = ledger_rows(conn, "a")
    assert row.status == "delivered"
    assert (row.provider_message_id, row.error_class, row.error_code, row.reason) == ("first-id", None, None, None)
    assert [(r.attempt, r.status) for r in rows] == [(1, "delivered"), (1, late.status.value)]
    assert rows[1].error_code == (late.error.code if late.error else None)


def test_delivered_can_still_be_acknowledged(engine: Engine) -> None:
    with engine.begin() as conn:
        open_deliveries(conn, EVENT, EMAIL, ["a"])
        record(conn, [delivered("a")], {"a": 1})
        record(conn, [Receipt(key=key("a"), status=S.ACKNOWLEDGED)], {"a": 1})
        record(conn, [delivered("a")], {"a": 1})
    with engine.connect() as conn:
        assert statuses(conn) == {"a": "acknowledged"}
        assert [r.status for r in ledger_rows(conn)] == ["delivered", "acknowledged", "delivered"]


def test_one_record_call_moves_each_key_independently(engine: Engine) -> None:
    with engine.begin() as conn:
        open_deliveries(conn, EVENT, EMAIL, ["a", "b", "c", "d"])
        force_status(conn, "d", S.DELIVERED)
        got = claim(conn, EVENT, EMAIL, ["a", "b", "c", "d"], claimant="m", lease=LEASE)
        record(
            conn,
            [
                delivered("a"),
                Receipt.failed(key("b"), TransientDeliveryError("later")),
                Receipt.failed(key("c"), PermanentDeliveryError("never")),
                Receipt.failed(key("d"), PermanentDeliveryError("too late")),
            ],
            got.attempts,
        )
    with engine.connect() as conn:
        assert statuses(conn) == {"a": "delivered", "b": "retrying", "c": "failed", "d": "delivered"}
        assert {r.recipient_ref: r.attempt for r in ledger_rows(conn)} == {"a": 1, "b": 1, "c": 1, "d": 0}


def test_record_of_nothing_does_nothing(engine: Engine) -> None:
    with engine.begin() as conn:
        record(conn, [], {})
        assert ledger_rows(conn) == []


# --------------------------------------------------------------------------- exhaust


def test_exhaust_fails_only_the_keys_not_handed_to_the_provider(engine: Engine) -> None:
    keys = ["delivered", "failed", "acked", "retrying", "sending", "pending", "sent", "held"]
    with engine.begin() as conn:
        open_deliveries(conn, EVENT, EMAIL, keys)
        got = claim(conn, EVENT, EMAIL, keys[:-1], claimant="m", lease=LEASE)
        claim(conn, EVENT, EMAIL, ["held"], claimant="another", lease=LEASE)
        record(
            conn,
            [
                delivered("delivered"),
                Receipt.failed(key("failed"), PermanentDeliveryError("550 gone", code="550")),
                Receipt(key=key("acked"), status=S.ACKNOWLEDGED),
                Receipt.failed(key("retrying"), TransientDeliveryError("421", code="421")),
                Receipt(key=key("sent"), status=S.SENT, provider_message_id="SM1"),
            ],
            got.attempts,
        )
        force_status(conn, "pending", S.PENDING)
        before = len(ledger_rows(conn))

    with engine.begin() as conn:
        failed = exhaust(conn, EVENT, EMAIL, keys, "retries exhausted", claimant="m")
    assert sorted(r.key.recipient_ref for r in failed) == ["pending", "retrying", "sending"]

    with engine.connect() as conn:
        now = statuses(conn)
        assert now == {
            "delivered": "delivered",
            "failed": "failed",
            "acked": "acknowledged",
            "retrying": "failed",
            "sending": "failed",
            "pending": "failed",
            "sent": "sent",  # the provider has it: its callback or reconciliation decides
            "held": "sending",  # another message's claim, still live
        }
        new_rows = ledger_rows(conn)[before:]
        assert sorted(r.recipient_ref for r in new_rows) == ["pending", "retrying", "sending"]
        for row in new_rows:
            assert (row.status, row.error_class, row.error_code, row.reason, row.tries) == (
                "failed",
                "PermanentDeliveryError",
                "retries-exhausted",
                "retries exhausted",
                0,
            )
            assert row.attempt == 1
        assert delivery(conn, "failed").error_code == "550"
        assert delivery(conn, "sending").error_code == "retries-exhausted"
        assert unfinished_count(conn, [EVENT]) == 2

    with engine.begin() as conn:
        assert exhaust(conn, EVENT, EMAIL, keys, "retries exhausted", claimant="m") == []
        assert len(ledger_rows(conn)) == before + 3
        # A late verdict still applies to the message the provider had.
        assert apply_status(conn, "SM1", S.DELIVERED, None)
        assert statuses(conn)["sent"] == "delivered"


# --------------------------------------------------------------------------- recipients


def _people(rows: list[dict[str, Any]]) -> list[RecipientIn]:
    return [RecipientIn(**row) for row in rows]


def test_upsert_people_twice_updates_contacts_and_keeps_the_ref(engine: Engine) -> None:
    first = [
        {"user_id": "u1", "name": "Ann", "email": "ann@example.com", "phone": "+44 20 7946 0958", "locale": "en"},
        {"user_id": "u2", "name": "Bo", "email": "bo@example.com"},
    ]
    with engine.begin() as conn:
        mapping, problems = upsert_people(conn, _people(first))
    assert set(mapping) == {"u1", "u2"}
    assert problems.email == {} and problems.phone == {}
    with engine.connect() as conn:
        ann = load(conn, [mapping["u1"]])[mapping["u1"]]
    assert (ann.email, ann.phone, ann.name, ann.locale) == ("ann@example.com", "+442079460958", "Ann", "en")

    second = [
        {
            "user_id": "u1",
            "name": "Ann B.",
            "email": "Ann@NEW.EXAMPLE.COM",
            "phone": "+1 202-555-0100",
            "locale": "fr_FR",
        },
    ]
    with engine.begin() as conn:
        again, problems = upsert_people(conn, _people(second))
    assert again == {"u1": mapping["u1"]}
    with engine.connect() as conn:
        loaded = load(conn, mapping.values())
        count = len(list(conn.execute(select(recipients.c.ref))))
    ann = loaded[mapping["u1"]]
    assert (ann.email, ann.phone, ann.name, ann.locale) == ("Ann@new.example.com", "+12025550100", "Ann B.", "fr-FR")
    assert loaded[mapping["u2"]].email == "bo@example.com"
    assert count == 2


def test_upsert_people_keeps_a_person_whose_contact_is_unusable_and_says_why(engine: Engine) -> None:
    rows = [
        {"user_id": "u1", "email": "not an address", "phone": "12345"},
        {"user_id": "u2", "email": "good@example.com", "phone": "+44 20 7946 0958"},
    ]
    with engine.begin() as conn:
        mapping, problems = upsert_people(conn, _people(rows))
        loaded = load(conn, mapping.values())
    assert set(problems.email) == {"u1"} and set(problems.phone) == {"u1"}
    assert "not an address" not in problems.email["u1"]
    assert "12345" not in problems.phone["u1"]
    assert (loaded[mapping["u1"]].email, loaded[mapping["u1"]].phone) == (None, None)
    assert loaded[mapping["u2"]].email == "good@example.com"


def test_a_long_but_well_formed_locale_can_be_stored(engine: Engine) -> None:
    """The model accepts any locale matching its pattern; the column must hold what it accepts."""
    locale = "en-" + "-".join(["abcdefgh"] * 5)  # 47 characters, matches the locale pattern
    person = RecipientIn(user_id="u1", email="u1@example.com", locale=locale)
    with engine.begin() as conn:
        mapping, _ = upsert_people(conn, [person, RecipientIn(user_id="u2", email="u2@example.com")])
    with engine.connect() as conn:
        loaded = load(conn, mapping.values())
    assert loaded[mapping["u2"]].email == "u2@example.com"
    assert len(loaded[mapping["u1"]].locale) <= 35


def test_ensure_users_creates_unknown_users_without_contacts_and_keeps_known_ones(engine: Engine) -> None:
    with engine.begin() as conn:
        known, _ = upsert_people(conn, _people([{"user_id": "known", "email": "k@example.com"}]))
    with engine.begin() as conn:
        mapping = ensure_users(conn, ["known", "new-1", "new-2", "new-1"])
    assert set(mapping) == {"known", "new-1", "new-2"}
    assert mapping["known"] == known["known"]
    with engine.connect() as conn:
        loaded = load(conn, mapping.values())
        assert len(list(conn.execute(select(recipients)))) == 3
    assert loaded[mapping["known"]].email == "k@example.com"
    for uid in ("new-1", "new-2"):
        person = loaded[mapping[uid]]
        assert (person.user_id, person.email, person.phone, person.name, person.locale) == (uid, None, None, "", "en")
    with engine.begin() as conn:
        assert ensure_users(conn, ["new-1"]) == {"new-1": mapping["new-1"]}
        assert ensure_users(conn, []) == {}
        assert refs_for(conn, []) == {}


def test_page_all_walks_every_recipient_once_in_ref_order(engine: Engine) -> None:
    with engine.begin() as conn:
        mapping, _ = upsert_people(conn, _people(people(25)))
    pages: list[list[str]] = []
    cursor = ""
    with engine.connect() as conn:
        while True:
            page = page_all(conn, cursor, 7)
            if not page:
                break
            pages.append(page)
            cursor = page[-1]
    walked = [ref for page in pages for ref in page]
    assert [len(p) for p in pages] == [7, 7, 7, 4]
    assert walked == sorted(walked)
    assert len(walked) == len(set(walked)) == 25
    assert set(walked) == set(mapping.values())
    assert all(re.fullmatch(r"[0-9a-f]{32}", ref) for ref in walked)


# --------------------------------------------------------------------------- no contact details outside recipients

_EMAIL_LIKE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+\.[A-Za-z0-9.-]+")
_PHONE_LIKE = re.compile(r"\+\d{6,}")


def test_ledger_and_deliveries_never_hold_an_email_address_or_phone_number(engine: Engine) -> None:
    rows = [
        {"user_id": "ok", "email": "Alice.Smith@Example.com", "phone": "+44 20 7946 0958"},
        {"user_id": "bad-email", "email": "bob smith@example.com", "phone": "+1 202-555-0100"},
        {"user_id": "bad-phone", "email": "carol@example.org", "phone": "+44 20 7946 095"},
        {"user_id": "none"},
    ]
    contacts = {"Alice.Smith", "Alice.Smith@example.com", "bob smith", "carol@example.org", "+442079460958"}
    contacts |= {"+12025550100", "+44 20 7946 095", "442079460958", "12025550100", "4420794609"}
    with engine.begin() as conn:
        mapping, problems = upsert_people(conn, _people(rows))
        loaded = load(conn, mapping.values())
        by_user = {p.user_id: p for p in loaded.values()}
        for channel, contact in (("email", "email"), ("sms", "phone")):
            known = getattr(problems, contact)
            failures = {
                mapping[uid]: PermanentDeliveryError(known[uid], code="invalid-contact")
                if uid in known
                else PermanentDeliveryError(f"no {contact} on record", code="no-contact")
                for uid, person in by_user.items()
                if not getattr(person, contact)
            }
            to_send = open_deliveries(conn, EVENT, channel, list(mapping.values()), failures=failures)
            got = claim(conn, EVENT, channel, to_send, claimant="m", lease=LEASE)
            receipts = [
                Receipt(key=key(ref, channel), status=S.DELIVERED, provider_message_id="pm-1") for ref in got.attempts
            ]
            record(conn, receipts, got.attempts)
        exhaust(conn, EVENT, "email", list(mapping.values()), "retries exhausted", claimant="m")
    assert problems.email and problems.phone  # the scenario did exercise the problem paths

    with engine.connect() as conn:
        scanned = 0
        for table in (ledger, deliveries):
            for row in conn.execute(select(table)):
                for column, value in row._mapping.items():
                    if not isinstance(value, str):
                        continue
                    scanned += 1
                    assert not _EMAIL_LIKE.search(value), (table.name, column, value)
                    assert not _PHONE_LIKE.search(value), (table.name, column, value)
                    for contact in contacts:
                        assert contact.lower() not in value.lower(), (table.name, column, value)
        assert scanned > 0
        failed_reasons = [r.reason for r in conn.execute(select(ledger).where(ledger.c.status == "failed"))]
    assert any("invalid email address" in (reason or "") for reason in failed_reasons)
    assert any("invalid phone number" in (reason or "") for reason in failed_reasons)


# --------------------------------------------------------------------------- inbox


def _letter(event_id: str, ref: str, subject: str) -> dict[str, Any]:
    return {"event_id": event_id, "recipient_ref": ref, "locale": "en", "subject": subject, "body": f"{subject} body"}


def test_letters_are_per_user_and_only_the_owner_can_mark_one_read(engine: Engine) -> None:
    with engine.begin() as conn:
        mapping = ensure_users(conn, ["ann", "bob", "cat"])
        ann, bob = mapping["ann"], mapping["bob"]
        deliver_letters(conn, [_letter("e1", ann, "First"), _letter("e1", bob, "First")])
        deliver_letters(conn, [_letter("e2", ann, "Second")])

    with engine.connect() as conn:
        ann_box = inbox(conn, "ann")
        bob_box = inbox(conn, "bob")
        assert [letter.subject for letter in ann_box] == ["Second", "First"]  # newest first
        assert [letter.subject for letter in bob_box] == ["First"]
        assert inbox(conn, "cat") == [] and inbox(conn, "nobody") == []
        assert not any(letter.read for letter in ann_box + bob_box)
        assert ann_box[0].created_at.tzinfo is not None
        assert (unread_count(conn, "ann"), unread_count(conn, "bob"), unread_count(conn, "cat")) == (2, 1, 0)
        assert letter_count(conn, "e1") == 2

    bobs_letter = bob_box[0].id
    with engine.begin() as conn:
        assert mark_read(conn, "ann", bobs_letter) is False  # not hers
        assert mark_read(conn, "nobody", bobs_letter) is False
        assert mark_read(conn, "ann", 999_999) is False
    with engine.connect() as conn:
        assert unread_count(conn, "bob") == 1

    with engine.begin() as conn:
        assert mark_read(conn, "ann", ann_box[0].id) is True
        assert mark_read(conn, "ann", ann_box[0].id) is False  # already read
    with engine.connect() as conn:
        assert unread_count(conn, "ann") == 1
        assert [letter.subject for letter in inbox(conn, "ann", unread_only=True)] == ["First"]
        assert {letter.subject: letter.read for letter in inbox(conn, "ann")} == {"Second": True, "First": False}
        assert unread_count(conn, "bob") == 1
        assert inbox(conn, "ann", limit=1)[0].subject == "Second"

    # The same letter delivered again (a redelivered batch) neither duplicates nor un-reads it.
    with engine.begin() as conn:
        deliver_letters(conn, [_letter("e2", ann, "Second, again")])
    with engine.connect() as conn:
        assert [(letter.subject, letter.read) for letter in inbox(conn, "ann")] == [("Second", True), ("First", False)]
        assert letter_count(conn, "e2") == 1


# --------------------------------------------------------------------------- CSV import


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_import_csv_keeps_a_row_with_a_bad_email_without_the_email(engine: Engine, tmp_path: Path) -> None:
    csv_path = _write(
        tmp_path / "people.csv",
        "user_id,name,email,phone,locale\n"
        "u1,Ann,ann@example.com,+44 20 7946 0958,en_GB\n"
        "u2,Bob,bob at example dot com,,\n"
        "u3,Cat,cat@example.com,12345,zh-CN\n"
        ",Nobody,nobody@example.com,,\n"
        'u4,"Dee, Jr.",,,\n',
    )
    with engine.begin() as conn:
        result = import_csv(conn, csv_path)
    assert result.imported == 4
    assert any(p.startswith("user u2: invalid email address") for p in result.problems), result.problems
    assert any(p.startswith("user u3: invalid phone number") for p in result.problems), result.problems
    assert any(p.startswith("line 5: skipped") for p in result.problems), result.problems
    assert len(result.problems) == 3
    assert not any("bob at example dot com" in p or "12345" in p for p in result.problems)

    with engine.connect() as conn:
        mapping = refs_for(conn, ["u1", "u2", "u3", "u4"])
        loaded = {p.user_id: p for p in load(conn, mapping.values()).values()}
        total = len(list(conn.execute(select(recipients.c.ref))))
    assert total == 4
    assert (loaded["u1"].email, loaded["u1"].phone, loaded["u1"].locale) == (
        "ann@example.com",
        "+442079460958",
        "en-GB",
    )
    assert (loaded["u2"].name, loaded["u2"].email, loaded["u2"].locale) == ("Bob", None, "en")
    assert (loaded["u3"].email, loaded["u3"].phone) == ("cat@example.com", None)
    assert loaded["u4"].name == "Dee, Jr."


def test_import_csv_in_small_chunks_imports_everybody_once(engine: Engine, tmp_path: Path) -> None:
    lines = ["user_id,email"] + [f"u{i},u{i}@example.com" for i in range(23)] + ["u0,again@example.com"]
    csv_path = _write(tmp_path / "many.csv", "\n".join(lines) + "\n")
    with engine.begin() as conn:
        result = import_csv(conn, csv_path, chunk=5)
    assert result.problems == []
    with engine.connect() as conn:
        mapping = refs_for(conn, [f"u{i}" for i in range(23)])
        assert len(mapping) == 23
        assert load(conn, [mapping["u0"]])[mapping["u0"]].email == "again@example.com"


def test_import_csv_accepts_a_byte_order_mark(engine: Engine, tmp_path: Path) -> None:
    csv_path = tmp_path / "bom.csv"
    csv_path.write_bytes("user_id,email\nu1,u1@example.com\n".encode("utf-8-sig"))
    with engine.begin() as conn:
        assert import_csv(conn, csv_path).imported == 1


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("name,email\nAnn,ann@example.com\n", id="no-user_id-column"),
        pytest.param("userid,email\nu1,ann@example.com\n", id="misspelt"),
        pytest.param("", id="empty-file"),
    ],
)
def test_import_csv_without_a_user_id_header_raises(engine: Engine, tmp_path: Path, text: str) -> None:
    csv_path = _write(tmp_path / "bad.csv", text)
    with engine.begin() as conn, pytest.raises(ValueError, match="user_id"):
        import_csv(conn, csv_path)
    with engine.connect() as conn:
        assert list(conn.execute(select(recipients))) == []
