"""A real `dramatiq worker.app` process: each record is written once, redacted, and no payload.

Two failures a worker meets in practice are made to happen: an ingest whose database write
fails (the intake table is gone, as in an outage) and an actor whose exception carries an
email address and a phone number. dramatiq logs both with the message it was processing
and the traceback; neither may bring a contact or the payload into the log.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dramatiq
from sqlalchemy import text
from support import incident, start_workers, stop_workers

from worker.broker import CONTROL_QUEUE, build_broker, ingest_message, publish
from worker.config import Settings
from worker.store.engine import make_engine

#: One record's first line in herald's format: time, level, logger, pid, message.
RECORD = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} [A-Z]+ \S+ \d+ ")
DRAMATIQ_RECORD = re.compile(r"^\[\d{4}-\d{2}-\d{2} [\d:,]+\] \[PID \d+\]")
CONTACTS = (
    "ann.smith@example.com",
    "用户@例子.中国",
    "13812345678",
    "+14155550123",
    "(415) 555-0199",
    "Ann Smith",
    "alice.jones@example.org",
    "4155550142",
)
#: Text that exists only in the payload.
PAYLOAD_TEXT = ("Attackers-tried-leaked-passwords", "payload-source-7f3a", "Use-a-unique-password")


def wait_for_text(log: Path, needle: str, count: int = 1, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        content = log.read_text(encoding="utf-8", errors="replace")
        if content.count(needle) >= count:
            return content
        assert time.monotonic() < deadline, f"{needle!r} never appeared in the worker log:\n{content}"
        time.sleep(0.1)


def payload_with_contacts() -> dict[str, Any]:
    event = incident(
        [
            {"user_id": "u1", "name": "Ann Smith", "email": "ann.smith@example.com", "phone": "+14155550123"},
            {"user_id": "u2", "name": "用户", "email": "用户@例子.中国", "phone": "13812345678"},
        ],
        situation="Attackers-tried-leaked-passwords against (415) 555-0199.",
        advice="Use-a-unique-password.",
    )
    event["source"] = "payload-source-7f3a"
    return event


def test_a_worker_writes_each_record_once_with_no_contact_and_no_payload(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(retry_max=0)
    engine = make_engine(settings.resolved_database_url)
    with engine.begin() as conn:  # every ingest now fails while storing its intake row
        conn.execute(text("ALTER TABLE intake RENAME TO intake_away"))
    engine.dispose()
    log = tmp_path / "worker.log"
    workers = start_workers(settings, log, processes=1, threads=2)
    broker = build_broker(settings)
    try:
        wait_for_text(log, "Worker process is ready for action.")
        publish(broker, ingest_message(payload_with_contacts()))
        failing = dramatiq.Message(
            queue_name=CONTROL_QUEUE,
            actor_name="reconcile",
            args=("alice.jones@example.org 4155550142", ["SM" + "0" * 32], 1),
            kwargs={},
            options={},
        )
        publish(broker, failing)
        wait_for_text(log, "Retries exceeded for message", count=2)
        time.sleep(1.0)  # anything else those failures log
    finally:
        broker.close()
        stop_workers(workers)
    content = log.read_text(encoding="utf-8")

    assert content.count("Worker process is ready for action.") == 1, content
    assert content.count("Failed to process message ingest") == 1, content
    assert content.count("Failed to process message reconcile") == 1, content
    assert "Traceback (most recent call last)" in content  # the exceptions are there, masked
    assert "a***@example.org" in content
    # dramatiq's own format is left only to its supervisor (MainProcess), which runs no herald code.
    assert any(RECORD.match(line) for line in content.splitlines())
    assert not [line for line in content.splitlines() if DRAMATIQ_RECORD.match(line) and "MainProcess" not in line]
    for secret in CONTACTS + PAYLOAD_TEXT:
        assert secret not in content, f"{secret!r} is in the worker log:\n{content}"
