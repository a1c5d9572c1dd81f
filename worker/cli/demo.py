"""``herald demo``: the whole pipeline once, on embedded parts, with a progress display.

It starts a local SMTP sink, the Twilio sandbox, herald's callback app and real dramatiq
worker processes on the embedded Redis (unless HERALD_BROKER_URL / HERALD_DATABASE_URL name
real ones), publishes a critical security incident to generated recipients exactly as a
producer would, and waits until every recipient has a terminal outcome. The shipped routing
policy sends email, station letter and SMS at once and calls whoever none of them reached;
a few generated people can be reached by nothing, so the public announcement goes up and
covers them. It reports what the ledger, the sandboxes and the announcement site saw.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select

from worker.announce.site import page_path
from worker.broker import build_broker, ingest_message, publish, worker_command
from worker.config import Settings
from worker.core.clock import utcnow
from worker.core.errors import HeraldError
from worker.core.statuses import RouteMark, RouteOutcome
from worker.store import announcements
from worker.store.engine import make_engine, migrate
from worker.store.inbox import letter_count
from worker.store.intake import event_summary, list_rejections
from worker.store.outcomes import failure_reasons, outcome_counts, unfinished_count
from worker.store.routes import outcome_counts as route_outcomes
from worker.store.routes import reached_by
from worker.store.schema import ledger

#: Every channel herald has, so the demo shows all four.
DEMO_CHANNELS = ("email", "insite", "sms", "phone")

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
    people: dict[str, int] = field(default_factory=dict)  # recipients by routing outcome
    reached_by: dict[str, int] = field(default_factory=dict)
    fallbacks: dict[str, int] = field(default_factory=dict)  # hand-ons by the stage they led to
    announcement_id: str | None = None
    announcement_url: str | None = None
    announcement_file: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-able data."""
        outcomes: dict[str, dict[str, int]] = {}
        for (channel, status), count in sorted(self.counts.items()):
            outcomes.setdefault(channel, {})[status] = count
        return {
            "event_id": self.event_id,
            "recipients": self.recipients,
            "people": dict(sorted(self.people.items())),
            "reached_by": dict(sorted(self.reached_by.items())),
            "fallbacks": dict(sorted(self.fallbacks.items())),
            "announcement": {
                "id": self.announcement_id,
                "url": self.announcement_url,
                "file": self.announcement_file,
            },
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


# Out of every hundred generated people, by ``i % 100``: who cannot be reached how.
_BROKEN_EMAIL, _NO_EMAIL, _LANDLINE, _NO_PHONE = 37, 73, 51, 89
_STOP_AND_NO_EMAIL = 61  # no email; replied STOP to SMS (21610, calls refused too): covered
_UNDELIVERED_THEN_ANSWERS = 64  # no email; the carrier cannot deliver the SMS; answers the call
_UNDELIVERED_NO_ANSWER = 28  # no email; SMS undelivered; nobody picks up: covered
_NOTHING = 95  # no contact at all: only the station letter and the announcement


def _phone(i: int) -> str:
    return f"+86139{i:08d}" if i % 3 == 0 else f"+1415555{i % 10_000:04d}"


def demo_recipients(count: int) -> list[dict[str, str]]:
    """Generated people: a third read Chinese; a few have a broken or missing address or phone,
    and a few can be reached by nothing at all (see ``demo_faults``)."""
    people = []
    for i in range(1, count + 1):
        chinese = i % 3 == 0
        person = {
            "user_id": f"demo-{i:06d}",
            "name": _NAMES[i % len(_NAMES)],
            "email": f"user{i}@example.com",
            "phone": _phone(i),
            "locale": "zh-CN" if chinese else "en",
        }
        kind = i % 100
        if kind == _BROKEN_EMAIL:
            person["email"] = f"user{i}-at-example.com"
        elif kind in (_NO_EMAIL, _STOP_AND_NO_EMAIL, _UNDELIVERED_THEN_ANSWERS, _UNDELIVERED_NO_ANSWER):
            del person["email"]
        elif kind == _NOTHING:
            del person["email"], person["phone"]
        if kind == _LANDLINE:
            person["phone"] = "+442079460958"  # a landline: no SMS, but it can take a call
        elif kind == _NO_PHONE:
            del person["phone"]
        people.append(person)
    return people


def demo_faults(count: int) -> dict[str, Any]:
    """What the Twilio sandbox does wrong for the generated people who cannot be reached."""
    numbers = {kind: [_phone(i) for i in range(1, count + 1) if i % 100 == kind] for kind in range(100)}
    return {
        "fail_numbers": {n: 21610 for n in numbers[_STOP_AND_NO_EMAIL]},
        "undelivered_numbers": {n: 30003 for n in numbers[_UNDELIVERED_THEN_ANSWERS] + numbers[_UNDELIVERED_NO_ANSWER]},
        "call_behaviour": {n: "no-answer" for n in numbers[_UNDELIVERED_NO_ANSWER]},
    }


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
            "severity": "critical",
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
    from worker.sandbox.smtp_sink import SmtpSink
    from worker.sandbox.twilio import TwilioSandbox
    from worker.service.http import create_app
    from worker.service.serving import ServerThread, free_port

    data_dir = (settings.data_dir / "demo").resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # A fresh database each run. The embedded Redis files are left to their owner module (a
    # server from an interrupted run may still be up), and a fresh queue namespace means
    # nothing an interrupted run left on the queues is picked up.
    for leftover in data_dir.glob("herald.db*"):
        leftover.unlink()
    shutil.rmtree(data_dir / "announcements", ignore_errors=True)
    namespace = f"herald-demo-{uuid.uuid4().hex[:8]}"

    sink = SmtpSink(host="127.0.0.1", port=0, store=False)
    sink.start()
    twilio = TwilioSandbox(
        account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token.get_secret_value(),
        smtp_sink=sink,
        faults=demo_faults(recipients),
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
            "announcements_dir": data_dir / "announcements",
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
        "HERALD_ANNOUNCEMENTS_DIR": str(demo_settings.resolved_announcements_dir),
        "HERALD_SWEEP_INTERVAL_S": "2",
        # The sandbox is local: let the demo go faster than a real sender's limits would.
        "HERALD_SMS_RATE_PER_SECOND": "200",
        "HERALD_PHONE_RATE_PER_SECOND": "100",
    }
    engine = make_engine(demo_settings.resolved_database_url)
    migrate(engine)
    broker = build_broker(demo_settings)
    callbacks = ServerThread(create_app(demo_settings, engine, broker), port=public_port).start()
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
        with Progress(
            TextColumn("[bold]reaching people[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
            transient=True,
        ) as progress:
            task = progress.add_task("recipients", total=recipients)
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
                        done, open_deliveries = 0, 1
                    else:
                        people = route_outcomes(conn, event_id)
                        done = sum(n for outcome, n in people.items() if RouteOutcome(outcome).terminal)
                        open_deliveries = unfinished_count(conn, [event_id])
                progress.update(task, completed=done)
                if summary is not None and summary.fanout_done and done == recipients and not open_deliveries:
                    break
                time.sleep(0.2)
        seconds = time.monotonic() - started
        with engine.connect() as conn:
            counts = outcome_counts(conn, event_id)
            letters = letter_count(conn, event_id)
            rows = int(conn.execute(select(func.count()).where(ledger.c.event_id == event_id)).scalar_one())
            failures = failure_reasons(conn, event_id)
            people = route_outcomes(conn, event_id)
            reached = reached_by(conn, event_id)
            # A hand-on to the announcement names it; one to the next stage does not.
            to_announcement = ledger.c.provider_message_id.is_not(None)
            fallbacks = {
                "to the announcement" if announced else f"to stage {step + 1}": int(n)
                for step, announced, n in conn.execute(
                    select(ledger.c.step, to_announcement, func.count())
                    .where(ledger.c.event_id == event_id, ledger.c.status == RouteMark.FALLBACK.value)
                    .group_by(ledger.c.step, to_announcement)
                )
            }
            announcement = announcements.by_topic(conn, "incident:INC-2026-0042")
        page = page_path(announcement.id, "en") if announcement is not None else None
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
            people=people,
            reached_by=reached,
            fallbacks=fallbacks,
            announcement_id=announcement.id if announcement is not None else None,
            announcement_url=f"{demo_settings.resolved_announcements_url}/{page}" if page else None,
            announcement_file=str(demo_settings.resolved_announcements_dir / page) if page else None,
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
