"""When dramatiq's retries of a batch run out, only what never reached the provider fails: a
message Twilio accepted stays ``sent`` for its callback (or reconciliation) to settle."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from sqlalchemy import select
from support import Pipeline, Rig, every_type_at_once, incident, write_routing
from twilio.request_validator import RequestValidator

from worker.store.schema import deliveries, recipients

QUIET = "+14155550101"  # accepted and sent, then the carrier is silent
REFUSED = "+14155550102"  # Twilio answers 20429 every time: retried until the retries run out


def delivery_status(pipeline: Pipeline, event_id: str, user_id: str) -> tuple[str | None, str | None, str | None]:
    """(status, provider id, error code) of one person's SMS; all None before fan-out opened it."""
    with pipeline.engine.connect() as conn:
        row = conn.execute(
            select(deliveries.c.status, deliveries.c.provider_message_id, deliveries.c.error_code)
            .join(recipients, recipients.c.ref == deliveries.c.recipient_ref)
            .where(deliveries.c.event_id == event_id, recipients.c.user_id == user_id)
        ).one_or_none()
    if row is None:
        return None, None, None
    return row.status, row.provider_message_id, row.error_code


def test_exhausted_retries_leave_a_sent_sms_to_its_later_delivered_callback(rig: Rig, tmp_path: Path) -> None:
    rig.sandbox.set_faults(silent_numbers=[QUIET], fail_numbers={REFUSED: 20429})
    settings = rig.settings(
        channels=("insite", "sms"),
        routing_file=write_routing(tmp_path, every_type_at_once("[sms]")),
        retry_max=1,
        retry_min_backoff_ms=100,
        retry_max_backoff_ms=200,
        twilio_tries=1,
        sweep_interval_s=30.0,
    )
    event = incident(
        [{"user_id": "quiet", "phone": QUIET, "locale": "en"}, {"user_id": "refused", "phone": REFUSED, "locale": "en"}]
    )
    event_id = event["event_id"]
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        deadline = time.monotonic() + 60
        while delivery_status(pipeline, event_id, "refused")[2] != "retries-exhausted":
            assert time.monotonic() < deadline, "the refused SMS should have run out of retries"
            time.sleep(0.1)
        time.sleep(0.5)  # anything the exhaustion did has been committed with it
        status, sid, _ = delivery_status(pipeline, event_id, "quiet")
        assert status == "sent", "a message Twilio accepted is not failed when the batch's retries run out"
        assert sid is not None and rig.sandbox.message(sid) is not None

        url = f"{settings.public_url}/twilio/status"
        params = {"MessageSid": sid, "MessageStatus": "delivered", "To": QUIET, "AccountSid": rig.sandbox.account_sid}
        signature = RequestValidator(rig.sandbox.auth_token).compute_signature(url, params)
        answer = httpx.post(url, data=params, headers={"X-Twilio-Signature": signature})
        assert answer.status_code == 204
        pipeline.wait_terminal([event_id], timeout=30)
        assert delivery_status(pipeline, event_id, "quiet")[0] == "delivered"
        assert delivery_status(pipeline, event_id, "refused")[0] == "failed"
        assert pipeline.outcomes(event_id)["reached"] == 1
