"""``herald demo``: the whole pipeline once, on embedded parts, with a progress display.

It starts a local SMTP sink, real dramatiq worker processes on the embedded Redis (unless
HERALD_BROKER_URL / HERALD_DATABASE_URL name real ones), publishes a sample security
incident to generated recipients exactly as a producer would, waits until every delivery
is terminal, and reports what the ledger and the sink saw.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select

from worker.broker import build_broker, ingest_message, publish, worker_command
from worker.clock import utcnow
from worker.config import Settings
from worker.errors import HeraldError
from worker.store.engine import make_engine, migrate
from worker.store.inbox import letter_count
from worker.store.intake import event_summary, list_rejections
from worker.store.ledger import failure_reasons, outcome_counts, unfinished_count
from worker.store.schema import ledger

#: Every channel herald has, so the demo shows all four.
DEMO_CHANNELS = ("email", "insite", "sms", "phone")
#: A few people the sandbox cannot reach, so the demo shows failures too.
DEMO_FAULTS: dict[str, Any] = {
    "fail_numbers": {"+14155550043": 21610},  # replied STOP to SMS
    "call_behaviour": {"+14155550064": "no-answer", "+14155550128": "busy", "+14155550200": "no-input"},
}

_NAMES = ("Alex Chen", "Maria Garcia", "李娜", "王伟", "Sam O'Neil", "Priya Patel", "张敏", "Jonas Berg")


@dataclass(frozen=True)
class DemoSummary:
    """What the demo measured."""

    event_id: str
    recipients: int
    counts: dict[tuple[str, str], int]
    emails_received: int
    sms_received: int
    calls_received: int
    letters: int
    ledger_rows: int
    seconds: float
    failures: list[tuple[str, str, int, str]]

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-able data."""
        outcomes: dict[str, dict[str, int]] = {}
        for (channel, status), count in sorted(self.counts.items()):
            outcomes.setdefault(channel, {})[status] = count
        return {
            "event_id": self.event_id,
            "recipients": self.recipients,
            "outcomes": outcomes,
            "emails_received": self.emails_received,
            "sms_received": self.sms_received,
            "calls_received": self.calls_received,
            "station_letters": self.letters,
            "ledger_rows": self.ledger_rows,
            "seconds": round(self.seconds, 2),
            "failures": [
                {"channel": channel, "code": code, "count": count, "example": reason}
                for channel, code, count, reason in self.failures
            ],
        }


def demo_recipients(count: int) -> list[dict[str, str]]:
    """Generated people: a third read Chinese; a few have a broken or missing address or phone."""
    people = []
    for i in range(1, count + 1):
        chinese = i % 3 == 0
        person = {
            "user_id": f"demo-{i:06d}",
            "name": _NAMES[i % len(_NAMES)],
            "email": f"user{i}@example.com",
            "phone": f"+86139{i:08d}" if chinese else f"+1415555{i % 10_000:04d}",
            "locale": "zh-CN" if chinese else "en",
        }
        if i % 100 == 37:
            person["email"] = f"user{i}-at-example.com"
        elif i % 100 == 73:
            del person["email"]
        if i % 100 == 51:
            person["phone"] = "+442079460958"  # a landline: no SMS, but it can take a call
        elif i % 100 == 89:
            del person["phone"]
        people.append(person)
    return people


def demo_event(count: int) -> dict[str, Any]:
    """A complete security-incident event addressed to ``count`` generated recipients."""
    now = utcnow()
    return {
        "event_id": f"demo-{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
        "type": "security_incident",
        "occurred_at": now.isoformat(),
        "source": "herald-demo",
        "data": {
            "incident_id": "INC-2026-0042",
            "severity": "high",
            "title": "Unauthorised access to a customer support tool",
            "detected_at": (now - timedelta(hours=3)).isoformat(),
            "situation": "An attacker used a stolen support-staff password to view account records.",
            "impact": "Your name, email address and order history may have been seen. Passwords were not exposed.",
            "measures": "We locked the account, reset all support credentials and added hardware-key sign-in.",
            "advice": "Be wary of emails asking for your password; we will never ask for it.",
            "remedies": "Contact privacy@example.com for a copy of the data involved or to request deletion.",
            "audience": {"recipients": demo_recipients(count)},
        },
    }


def run_demo(
    settings: Settings,
    *,
    recipients: int,
    processes: int,
    threads: int,
    timeout: float,
    quiet: bool,
    console: Console,
) -> DemoSummary:
    """Run the pipeline once end to end and summarise it.

    Raises:
        HeraldError: the workers died, the event was rejected, or the deadline passed.
    """
    from worker.http import create_app
    from worker.sandbox.smtp_sink import SmtpSink
    from worker.sandbox.twilio import TwilioSandbox
    from worker.serving import ServerThread, free_port

    data_dir = (settings.data_dir / "demo").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # A fresh database each run. The embedded Redis files are left to their owner module (a
    # server from an interrupted run may still be up), and a fresh queue namespace means
    # nothing an interrupted run left on the queues is picked up.
    for leftover in data_dir.glob("herald.db*"):
        leftover.unlink()
    namespace = f"herald-demo-{uuid.uuid4().hex[:8]}"

    sink = SmtpSink(host="127.0.0.1", port=0, store=False)
    sink.start()
    twilio = TwilioSandbox(
        account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token.get_secret_value(),
        smtp_sink=sink,
        faults=DEMO_FAULTS,
    )
    twilio.start()
    public_port = free_port()
    demo_settings = settings.model_copy(
        update={
            "data_dir": data_dir,
            "smtp_host": "127.0.0.1",
            "smtp_port": sink.port,
            "smtp_username": "",
            "smtp_starttls": False,
            "smtp_use_tls": False,
            "channels": DEMO_CHANNELS,
            "broker_namespace": namespace,
            "twilio_base_url": twilio.url,
            "public_url": f"http://127.0.0.1:{public_port}",
        }
    )
    env = {
        **os.environ,
        "HERALD_DATA_DIR": str(data_dir),
        "HERALD_SMTP_HOST": "127.0.0.1",
        "HERALD_SMTP_PORT": str(sink.port),
        "HERALD_SMTP_USERNAME": "",
        "HERALD_SMTP_PASSWORD": "",
        "HERALD_SMTP_STARTTLS": "false",
        "HERALD_SMTP_USE_TLS": "false",
        "HERALD_RETRY_MIN_BACKOFF_MS": "500",
        "HERALD_CHANNELS": ",".join(DEMO_CHANNELS),
        "HERALD_BROKER_NAMESPACE": namespace,
        "HERALD_TWILIO_BASE_URL": twilio.url,
        "HERALD_PUBLIC_URL": demo_settings.public_url,
        # The sandbox is local: let the demo go faster than a real sender's limits would.
        "HERALD_SMS_RATE_PER_SECOND": "200",
        "HERALD_PHONE_RATE_PER_SECOND": "100",
    }
    engine = make_engine(demo_settings.resolved_database_url)
    migrate(engine)
    callbacks = ServerThread(create_app(demo_settings, engine), port=public_port).start()
    broker = build_broker(demo_settings)
    workers = subprocess.Popen(
        worker_command(processes, threads),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(data_dir / "worker.log", "wb"),  # noqa: SIM115 - closed with the process
    )
    started = time.monotonic()
    try:
        event = demo_event(recipients)
        event_id = event["event_id"]
        publish(broker, ingest_message(event))
        expected = recipients * len(demo_settings.channels)
        with Progress(
            TextColumn("[bold]delivering[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
            transient=True,
        ) as progress:
            task = progress.add_task("deliveries", total=expected)
            while True:
                if workers.poll() is not None:
                    raise HeraldError(
                        f"the workers exited with code {workers.returncode}; see {data_dir / 'worker.log'}"
                    )
                if time.monotonic() - started > timeout:
                    raise HeraldError(f"not every delivery was terminal after {timeout:.0f} s; see herald events show")
                with engine.connect() as conn:
                    summary = event_summary(conn, event_id)
                    if summary is None:
                        rejected = [r for r in list_rejections(conn, 5) if r.event_id == event_id]
                        if rejected:
                            raise HeraldError(f"the demo event was rejected: {rejected[0].reason}")
                        open_count = expected
                    else:
                        open_count = unfinished_count(conn, [event_id])
                        total = sum(outcome_counts(conn, event_id).values())
                        open_count += expected - total
                progress.update(task, completed=expected - open_count)
                if summary is not None and summary.fanout_done and open_count == 0:
                    break
                time.sleep(0.2)
        seconds = time.monotonic() - started
        with engine.connect() as conn:
            counts = outcome_counts(conn, event_id)
            letters = letter_count(conn, event_id)
            rows = int(conn.execute(select(func.count()).where(ledger.c.event_id == event_id)).scalar_one())
            failures = failure_reasons(conn, event_id)
        return DemoSummary(
            event_id=event_id,
            recipients=recipients,
            counts=counts,
            emails_received=sink.count,
            sms_received=len(twilio.messages),
            calls_received=len(twilio.calls),
            letters=letters,
            ledger_rows=rows,
            seconds=seconds,
            failures=failures,
        )
    finally:
        if workers.poll() is None:
            workers.send_signal(signal.SIGTERM)
            try:
                workers.wait(timeout=30)
            except subprocess.TimeoutExpired:
                workers.kill()
                workers.wait()
        with contextlib.suppress(redis.RedisError):
            for key in broker.client.scan_iter(f"{namespace}*"):
                broker.client.delete(key)  # this run's queues: nothing in them is wanted any more
        broker.close()
        callbacks.stop()
        twilio.stop()
        engine.dispose()
        sink.stop()
