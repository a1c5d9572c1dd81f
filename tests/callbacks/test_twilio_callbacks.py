"""Twilio status callbacks at `herald serve`: signatures checked, statuses only move forward."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import Engine, func, select
from twilio.request_validator import RequestValidator

from worker.config import Settings
from worker.core.messages import DeliveryKey, Receipt
from worker.core.statuses import DeliveryStatus
from worker.service.http import create_app
from worker.service.serving import ServerThread, free_port
from worker.store import deliveries as delivery_store
from worker.store.engine import make_engine
from worker.store.schema import deliveries
from worker.store.schema import ledger as ledger_table

TOKEN = "callback-test-token"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def server(engine: Engine, database_url: str) -> Iterator[tuple[ServerThread, Settings]]:
    port = free_port()
    settings = Settings(database_url=database_url, twilio_auth_token=TOKEN, public_url=f"http://127.0.0.1:{port}")
    with ServerThread(create_app(settings, engine), port=port) as running:
        yield running, settings


def sent(engine: Engine, channel: str, sid: str, event_id: str = "evt-cb", ref: str = "r1") -> None:
    """A delivery that Twilio accepted: the state a callback finds."""
    with engine.begin() as conn:
        delivery_store.open_deliveries(conn, event_id, channel, [ref])
        claim = delivery_store.claim(conn, event_id, channel, [ref], claimant="m1", lease=timedelta(minutes=5))
        receipt = Receipt(DeliveryKey(event_id, ref, channel), DeliveryStatus.SENT, provider_message_id=sid)
        delivery_store.record(conn, [receipt], claim.attempts)


def state(engine: Engine, sid: str) -> tuple[str, int]:
    with engine.connect() as conn:
        status = conn.execute(select(deliveries.c.status).where(deliveries.c.provider_message_id == sid)).scalar_one()
        rows = conn.execute(select(func.count()).select_from(ledger_table)).scalar_one()
    return status, rows


def post(
    server: tuple[ServerThread, Settings], path: str, params: dict[str, str], signature: str | None = ""
) -> httpx.Response:
    running, settings = server
    if signature == "":
        signature = RequestValidator(TOKEN).compute_signature(settings.public_url + path, params)
    headers = {"X-Twilio-Signature": signature} if signature is not None else {}
    return httpx.post(running.url + path, data=params, headers=headers, timeout=10)


def test_a_signed_delivered_callback_moves_the_sms_to_delivered_once(
    engine: Engine, server: tuple[ServerThread, Settings]
) -> None:
    sent(engine, "sms", "SM1")
    params = {"MessageSid": "SM1", "MessageStatus": "delivered", "AccountSid": "AC1"}
    assert post(server, "/twilio/status", params).status_code == 204
    status, rows = state(engine, "SM1")
    assert status == "delivered"
    assert post(server, "/twilio/status", params).status_code == 204  # a duplicate
    assert state(engine, "SM1") == (status, rows)


@pytest.mark.parametrize(
    "signature",
    [None, "forged-signature", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="],
    ids=["missing", "garbage", "wrong"],
)
def test_unsigned_or_forged_callbacks_are_refused_and_change_nothing(
    engine: Engine, server: tuple[ServerThread, Settings], signature: str | None
) -> None:
    sent(engine, "sms", "SM2")
    before = state(engine, "SM2")
    response = post(server, "/twilio/status", {"MessageSid": "SM2", "MessageStatus": "undelivered"}, signature)
    assert response.status_code == 403
    assert state(engine, "SM2") == before


def test_a_replayed_signature_with_altered_parameters_is_refused(
    engine: Engine, server: tuple[ServerThread, Settings]
) -> None:
    sent(engine, "sms", "SM3")
    _, settings = server
    genuine = {"MessageSid": "SM3", "MessageStatus": "sent"}
    signature = RequestValidator(TOKEN).compute_signature(settings.public_url + "/twilio/status", genuine)
    assert post(server, "/twilio/status", genuine, signature).status_code == 204
    before = state(engine, "SM3")
    altered = {**genuine, "MessageStatus": "failed", "ErrorCode": "30003"}
    assert post(server, "/twilio/status", altered, signature).status_code == 403
    assert state(engine, "SM3") == before


def test_out_of_order_callbacks_never_move_a_status_back(engine: Engine, server: tuple[ServerThread, Settings]) -> None:
    sent(engine, "sms", "SM4")
    post(server, "/twilio/status", {"MessageSid": "SM4", "MessageStatus": "delivered"})
    after_delivered = state(engine, "SM4")
    for late in ("sent", "queued", "undelivered", "failed"):
        assert post(server, "/twilio/status", {"MessageSid": "SM4", "MessageStatus": late}).status_code == 204
    assert state(engine, "SM4") == after_delivered


def test_an_undelivered_sms_fails_with_the_carrier_code(engine: Engine, server: tuple[ServerThread, Settings]) -> None:
    sent(engine, "sms", "SM5")
    post(server, "/twilio/status", {"MessageSid": "SM5", "MessageStatus": "undelivered", "ErrorCode": "30003"})
    with engine.connect() as conn:
        row = conn.execute(select(deliveries).where(deliveries.c.provider_message_id == "SM5")).one()
    assert (row.status, row.error_code, row.error_class) == ("failed", "30003", "PermanentDeliveryError")
    assert "unreachable" in row.reason


def test_pressing_1_acknowledges_the_call_and_the_end_of_the_call_keeps_it(
    engine: Engine, server: tuple[ServerThread, Settings]
) -> None:
    sent(engine, "phone", "CA1")
    reply = post(server, "/twilio/gather", {"CallSid": "CA1", "Digits": "1"})
    assert reply.status_code == 200 and "<Say" in reply.text
    post(server, "/twilio/voice-status", {"CallSid": "CA1", "CallStatus": "completed"})
    assert state(engine, "CA1")[0] == "acknowledged"


@pytest.mark.parametrize(
    ("call_status", "code"),
    [("completed", "no-confirmation"), ("no-answer", "no-answer"), ("busy", "busy"), ("failed", "failed")],
)
def test_a_call_that_ends_unconfirmed_counts_as_not_reached(
    engine: Engine, server: tuple[ServerThread, Settings], call_status: str, code: str
) -> None:
    sent(engine, "phone", "CA2")
    post(server, "/twilio/voice-status", {"CallSid": "CA2", "CallStatus": "ringing"})
    assert state(engine, "CA2")[0] == "sent"
    post(server, "/twilio/voice-status", {"CallSid": "CA2", "CallStatus": call_status})
    with engine.connect() as conn:
        row = conn.execute(select(deliveries).where(deliveries.c.provider_message_id == "CA2")).one()
    assert (row.status, row.error_code) == ("failed", code)
    post(server, "/twilio/gather", {"CallSid": "CA2", "Digits": "1"})
    # A keypress recorded after the call's end overturns "completed, unconfirmed" (its request
    # lost the race); a call that was never answered stays failed whatever arrives later.
    assert state(engine, "CA2")[0] == ("acknowledged" if call_status == "completed" else "failed")


def test_a_late_delivered_never_overturns_a_failed_sms(engine: Engine, server: tuple[ServerThread, Settings]) -> None:
    sent(engine, "sms", "SM6")
    post(server, "/twilio/status", {"MessageSid": "SM6", "MessageStatus": "undelivered", "ErrorCode": "30003"})
    before = state(engine, "SM6")
    assert post(server, "/twilio/status", {"MessageSid": "SM6", "MessageStatus": "delivered"}).status_code == 204
    assert state(engine, "SM6") == before == ("failed", before[1])
