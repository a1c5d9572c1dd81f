"""SMTP trouble: refused and deferred recipients, and a server that is down at first."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from support import Pipeline, incident, people

from worker.config import Settings
from worker.sandbox.smtp_sink import SmtpSink


def test_refused_recipients_fail_permanently_and_deferred_ones_are_retried_until_delivered(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink
) -> None:
    audience = people(20, prefix="ok") + people(5, prefix="refuse") + people(5, prefix="defer")
    smtp_sink.refuse(r"^refuse\d+@", code=550, text="5.1.1 mailbox unavailable")
    # Deferred more often than one attempt's short retries allow: dramatiq's Retries must finish the job.
    smtp_sink.defer(r"^defer\d+@", times=4, code=451)
    settings = make_settings(smtp_tries=2)
    event = incident(audience, severity="critical")
    ref_of: dict[str, str] = {}
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]], timeout=120)
        counts = pipeline.counts(event["event_id"])
        rows = pipeline.ledger_rows(event["event_id"])
        with pipeline.engine.connect() as conn:
            from sqlalchemy import select

            from worker.store.schema import recipients

            ref_of = {uid: ref for uid, ref in conn.execute(select(recipients.c.user_id, recipients.c.ref))}

    assert counts[("email", "delivered")] == 25
    assert counts[("email", "failed")] == 5
    assert counts[("insite", "delivered")] == 30

    email_rows = [r for r in rows if r.channel == "email"]
    for person in people(5, prefix="refuse"):
        (row,) = [r for r in email_rows if r.recipient_ref == ref_of[person["user_id"]]]
        assert (row.status, row.error_class, row.error_code) == ("failed", "PermanentDeliveryError", "550")
        assert "mailbox unavailable" in row.reason
    for person in people(5, prefix="defer"):
        history = [r for r in email_rows if r.recipient_ref == ref_of[person["user_id"]]]
        assert [r.status for r in history][-1] == "delivered"
        assert any(r.status == "retrying" and r.error_code == "451" for r in history)
        assert [r.attempt for r in history] == sorted(r.attempt for r in history)
    assert sorted(addr for m in smtp_sink.messages for addr in m.rcpt_tos) == sorted(
        p["email"] for p in audience if not p["user_id"].startswith("refuse")
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_smtp_server_down_at_first_then_up_loses_nothing(make_settings: Callable[..., Settings]) -> None:
    port = _free_port()
    late = SmtpSink(host="127.0.0.1", port=port)
    settings = make_settings(smtp_port=port, retry_min_backoff_ms=300, retry_max_backoff_ms=1_500)
    event = incident(people(120))
    timer = threading.Timer(4.0, late.start)
    try:
        with Pipeline(settings) as pipeline:
            pipeline.publish(event)
            timer.start()
            pipeline.wait_terminal([event["event_id"]], timeout=120)
            counts = pipeline.counts(event["event_id"])
            retried = [r for r in pipeline.ledger_rows(event["event_id"]) if r.status == "retrying"]
        assert counts == {("email", "delivered"): 120, ("insite", "delivered"): 120}
        assert retried, "the first attempts should have failed while the server was down"
        assert {r.error_class for r in retried} == {"TransientDeliveryError"}
        assert late.wait_for(120, timeout=10)
        assert sorted(a for m in late.messages for a in m.rcpt_tos) == sorted(p["email"] for p in people(120))
    finally:
        timer.cancel()
        timer.join()
        late.stop()
