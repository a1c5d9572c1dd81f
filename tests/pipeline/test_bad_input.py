"""Bad input among good: each bad payload is rejected or neutralised with a clear reason,
the worker keeps running, and every valid event sent between them is delivered."""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from collections.abc import Callable

from sqlalchemy import func, select
from support import Pipeline, incident, people

from worker.config import Settings
from worker.sandbox.smtp_sink import SmtpSink
from worker.store.intake import intake_counts, list_rejections
from worker.store.schema import intake


def _wait_for_intake(pipeline: Pipeline, count: int, event_id: str, timeout: float = 30.0) -> None:
    """Every payload leaves one intake row; wait until all of them have one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with pipeline.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(intake)).scalar_one()
            if total >= count and sum(intake_counts(conn, event_id).values()) >= 3:
                return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} payloads reached ingest")


def test_bad_payloads_are_rejected_with_reasons_and_valid_ones_still_delivered(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink
) -> None:
    settings = make_settings()
    first = incident(people(4, prefix="a"))
    missing_part = incident(people(2, prefix="b"))
    del missing_part["data"]["remedies"]
    unknown_type = {**incident(people(1, prefix="c")), "type": "alien_invasion"}
    huge = incident(people(1, prefix="d"), situation="x" * (2 * 1024 * 1024))
    injected = incident(
        people(3, prefix="e"),
        title="Urgent\r\nBcc: attacker@evil.test\n{{ 7*7 }} {% if true %}yes{% endif %}",
    )
    bad_address = incident([*people(3, prefix="f"), {"user_id": "f-bad", "email": "not an address", "locale": "en"}])
    conflict = copy.deepcopy(first)
    conflict["data"]["title"] = "A different title under the same id"
    valid = [first, injected, bad_address]

    with Pipeline(settings) as pipeline:
        pipeline.publish(first)
        pipeline.publish("{this is not json")
        pipeline.publish(missing_part)
        pipeline.publish(unknown_type)
        pipeline.publish(json.dumps(huge))
        pipeline.publish(injected)
        pipeline.publish(bad_address)
        pipeline.publish(first)  # the same event again: a recorded no-op
        pipeline.publish(conflict)
        pipeline.wait_terminal([e["event_id"] for e in valid], timeout=120)
        _wait_for_intake(pipeline, 9, first["event_id"])

        with pipeline.engine.connect() as conn:
            rejections = list_rejections(conn)
            first_intake = intake_counts(conn, first["event_id"])
        bad_counts = pipeline.counts(bad_address["event_id"])
        bad_rows = pipeline.ledger_rows(bad_address["event_id"])

    reasons = [r.reason for r in rejections]
    assert len(rejections) == 5, reasons
    assert any("not valid JSON" in r for r in reasons)
    assert any("missing or empty: remedies" in r for r in reasons)
    assert any("unknown event type" in r and "alien_invasion" in r for r in reasons)
    assert any("limit is 1,048,576 bytes" in r for r in reasons)
    assert any("different body" in r for r in reasons)
    assert all("\n" not in r for r in reasons)
    assert first_intake == {"accepted": 1, "duplicate": 1, "conflict": 1}

    # The duplicate did not send anything twice.
    delivered_to = Counter(a for m in smtp_sink.messages for a in m.rcpt_tos)
    assert all(delivered_to[p["email"]] == 1 for p in first["data"]["audience"]["recipients"])

    # Header injection and template code in the title are neutralised.
    subjects = {m.subject for m in smtp_sink.messages if m.rcpt_tos[0].startswith("e")}
    assert len(subjects) == 2  # one per language
    for subject in subjects:
        assert "\r" not in subject and "\n" not in subject
        assert "{{ 7*7 }}" in subject and "{% if true %}" in subject and "49" not in subject
    assert not any("attacker@evil.test" in a for a in delivered_to)
    assert all(m.header("Bcc") == [] for m in smtp_sink.messages)

    # One bad address fails that one email with the reason; everyone else is reached.
    assert bad_counts == {("email", "delivered"): 3, ("email", "failed"): 1, ("insite", "delivered"): 4}
    (failed,) = [r for r in bad_rows if r.status == "failed"]
    assert failed.reason.startswith("invalid email address")
    assert "not an address" not in failed.reason.replace("***", "")
