"""What callbacks leave in the database: nothing once applied, one row per (SID, status) while
their delivery is not recorded yet, and few writes while `herald serve` waits for it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, event, func, select, update
from twilio.request_validator import RequestValidator

from worker.config import Settings
from worker.core.clock import utcnow
from worker.core.messages import DeliveryKey, Receipt
from worker.core.statuses import DeliveryStatus
from worker.deadman import sweep
from worker.runtime import Runtime
from worker.service.http import create_app
from worker.service.serving import ServerThread, free_port
from worker.service.settling import Settler, pauses
from worker.store import callbacks
from worker.store import deliveries as delivery_store
from worker.store.engine import make_engine
from worker.store.schema import deliveries, provider_callbacks

TOKEN = "rows-test-token"


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


class Writes:
    """Counts the write transactions (commits) and the statements on a real engine."""

    def __init__(self, engine: Engine) -> None:
        self.commits = 0
        self.statements = 0
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "before_cursor_execute", self._statement)

    def _commit(self, _conn: Any) -> None:
        self.commits += 1

    def _statement(self, *_args: Any) -> None:
        self.statements += 1


def start(engine: Engine, database_url: str, settle_s: float = 0.0) -> tuple[ServerThread, Settings]:
    port = free_port()
    settings = Settings(
        database_url=database_url,
        twilio_auth_token=TOKEN,
        public_url=f"http://127.0.0.1:{port}",
        callback_settle_s=settle_s,
    )
    return ServerThread(create_app(settings, engine), port=port).start(), settings


def post(running: ServerThread, settings: Settings, params: dict[str, str]) -> int:
    signature = RequestValidator(TOKEN).compute_signature(settings.public_url + "/twilio/status", params)
    response = httpx.post(
        running.url + "/twilio/status", data=params, headers={"X-Twilio-Signature": signature}, timeout=10
    )
    return response.status_code


def sent(engine: Engine, sid: str, ref: str = "r1") -> None:
    """Record an SMS that Twilio accepted, the worker's way (which applies waiting callbacks)."""
    with engine.begin() as conn:
        delivery_store.open_deliveries(conn, "evt-rows", "sms", [ref])
        claim = delivery_store.claim(conn, "evt-rows", "sms", [ref], claimant="m1", lease=timedelta(minutes=5))
        receipt = Receipt(DeliveryKey("evt-rows", ref, "sms"), DeliveryStatus.SENT, provider_message_id=sid)
        delivery_store.record(conn, [receipt], claim.attempts)


def callback_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(provider_callbacks)).scalar_one())


def status_of(engine: Engine, sid: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(select(deliveries.c.status).where(deliveries.c.provider_message_id == sid)).scalar()


def test_a_callback_applied_at_once_and_replayed_20_times_leaves_no_row(engine: Engine, database_url: str) -> None:
    running, settings = start(engine, database_url)
    try:
        sent(engine, "SMknown")
        params = {"MessageSid": "SMknown", "MessageStatus": "delivered"}
        for _ in range(20):
            assert post(running, settings, params) == 204
    finally:
        running.stop()
    assert status_of(engine, "SMknown") == "delivered"
    assert callback_rows(engine) == 0


def test_a_callback_for_an_unknown_sid_replayed_20_times_is_kept_once_and_applied_on_record(
    engine: Engine, database_url: str
) -> None:
    running, settings = start(engine, database_url)
    try:
        for status in ("sent", "undelivered", "delivered"):  # "sent" is the worker's own, never stored
            for _ in range(10):
                params = {"MessageSid": "SMlater", "MessageStatus": status, "ErrorCode": "30003"}
                assert post(running, settings, params) == 204
    finally:
        running.stop()
    assert callback_rows(engine) == 2  # one per (SID, status)
    sent(engine, "SMlater")  # the worker records the SID: the waiting callbacks apply, in arrival order
    assert status_of(engine, "SMlater") == "failed"
    assert callback_rows(engine) == 0


def test_an_unknown_sid_costs_a_few_reads_and_no_write_while_herald_serve_waits_for_it(
    engine: Engine, database_url: str
) -> None:
    writes = Writes(engine)
    running, settings = start(engine, database_url, settle_s=4.0)
    try:
        assert post(running, settings, {"MessageSid": "SMnever", "MessageStatus": "delivered"}) == 204
        time.sleep(5.0)
    finally:
        running.stop()
    # The callback's own write, and nothing else: today's code wrote every 0.5 s (8 more).
    assert writes.commits == 1
    assert writes.statements <= 20
    assert callback_rows(engine) == 1


def test_a_waiting_callback_is_applied_by_herald_serve_when_its_sid_shows_up(engine: Engine, database_url: str) -> None:
    """The race the settle task exists for: the worker recorded the SID without seeing the callback."""
    running, settings = start(engine, database_url, settle_s=10.0)
    try:
        with engine.begin() as conn:
            delivery_store.open_deliveries(conn, "evt-rows", "sms", ["r9"])
        assert post(running, settings, {"MessageSid": "SMrace", "MessageStatus": "delivered"}) == 204
        time.sleep(0.3)
        with engine.begin() as conn:
            conn.execute(
                update(deliveries)
                .where(deliveries.c.recipient_ref == "r9")
                .values(status=DeliveryStatus.SENT.value, provider_message_id="SMrace")
            )
        deadline = time.monotonic() + 8
        while status_of(engine, "SMrace") != "delivered" and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        running.stop()
    assert status_of(engine, "SMrace") == "delivered"
    assert callback_rows(engine) == 0


def test_the_dead_man_check_drops_callbacks_that_never_matched_a_delivery_after_the_retention(
    engine: Engine, database_url: str
) -> None:
    with engine.begin() as conn:
        callbacks.receive_provider_status(conn, "SMold", DeliveryStatus.DELIVERED)
        callbacks.receive_provider_status(conn, "SMyoung", DeliveryStatus.DELIVERED)
        conn.execute(
            update(provider_callbacks)
            .where(provider_callbacks.c.provider_message_id == "SMold")
            .values(received_at=utcnow() - timedelta(hours=2))
        )
    rt = Runtime(Settings(database_url=database_url, callback_retention_s=3_600))
    try:
        assert sweep(rt).dropped_callbacks == 1
        assert sweep(rt).dropped_callbacks == 0
    finally:
        rt.close()
    with engine.connect() as conn:
        left = conn.execute(select(provider_callbacks.c.provider_message_id)).scalars().all()
    assert left == ["SMyoung"]


def test_one_settle_task_per_sid_and_no_more_than_the_bound_in_flight() -> None:
    looked_up: list[str] = []

    def state(sid: str) -> bool:
        looked_up.append(sid)
        return False  # never recorded

    async def scenario() -> None:
        settler = Settler(within_s=30.0, state=state, apply=lambda _sid: None, max_tasks=3)
        for _ in range(10):
            settler.schedule("CAsame")
        assert settler.in_flight == 1
        for n in range(10):
            settler.schedule(f"CA{n}")
        assert settler.in_flight == 3
        await asyncio.sleep(0.8)  # the first pause is 0.5 s: one read per task
        assert sorted(looked_up) == ["CA0", "CA1", "CAsame"]
        settler.cancel_all()
        for _ in range(3):
            await asyncio.sleep(0)
        assert settler.in_flight == 0

    asyncio.run(scenario())


def test_the_pauses_double_and_add_up_to_the_settle_time() -> None:
    assert pauses(60.0) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 28.5]
    assert pauses(0.0) == []
