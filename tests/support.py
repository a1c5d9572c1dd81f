"""Helpers shared by the pipeline tests: events to send and a pipeline to send them through."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import dramatiq
from sqlalchemy import Engine, func, select

from worker.actors import Actors, declare_actors
from worker.broker import build_broker, ingest_message, publish, worker_command
from worker.config import Settings
from worker.sandbox.twilio import TwilioSandbox
from worker.service.http import create_app
from worker.service.serving import ServerThread
from worker.store.engine import make_engine
from worker.store.intake import event_summary
from worker.store.outcomes import outcome_counts, unfinished_count
from worker.store.routes import open_count
from worker.store.routes import outcome_counts as route_outcomes
from worker.store.schema import ledger, routes


def people(count: int, *, prefix: str = "u", domain: str = "example.com") -> list[dict[str, str]]:
    """``count`` recipients; every other one reads Chinese."""
    return [
        {
            "user_id": f"{prefix}{i:05d}",
            "name": f"Person {i}",
            "email": f"{prefix}{i}@{domain}",
            "locale": "zh-CN" if i % 2 else "en",
        }
        for i in range(count)
    ]


def phones(count: int, prefix: str = "p") -> list[dict[str, str]]:
    """People with mobile numbers: US numbers read English, Chinese numbers read Chinese."""
    return [
        {
            "user_id": f"{prefix}{i:04d}",
            "name": f"Person {i}",
            "phone": f"+86139{i:08d}" if i % 2 else f"+1415555{i:04d}",
            "locale": "zh-CN" if i % 2 else "en",
        }
        for i in range(count)
    ]


def incident(recipients: list[dict[str, Any]] | None = None, **data: Any) -> dict[str, Any]:
    """A complete security-incident event; keyword arguments override fields of ``data``."""
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "incident_id": "INC-1",
        "severity": "high",
        "title": "Credential stuffing against the sign-in page",
        "detected_at": (now - timedelta(hours=1)).isoformat(),
        "situation": "Attackers tried leaked passwords against many accounts.",
        "impact": "Some accounts may have been signed into.",
        "measures": "We blocked the attacking addresses and reset affected sessions.",
        "advice": "Use a unique password and turn on two-step sign-in.",
        "remedies": "Contact support to review your account activity.",
        "audience": {"recipients": recipients if recipients is not None else people(3)},
    }
    body.update(data)
    return {
        "event_id": f"evt-{uuid.uuid4().hex[:12]}",
        "type": "security_incident",
        "occurred_at": now.isoformat(),
        "source": "tests",
        "data": body,
    }


class Pipeline:
    """herald's real actors on a real broker, run by an in-process dramatiq worker."""

    def __init__(self, settings: Settings, threads: int = 4) -> None:
        self.settings = settings
        self.broker = build_broker(settings)
        self.actors: Actors = declare_actors(self.broker, settings)
        self.engine: Engine = make_engine(settings.resolved_database_url)
        self.worker = dramatiq.Worker(self.broker, worker_threads=threads, worker_timeout=100)

    def __enter__(self) -> Pipeline:
        self.worker.start()
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.worker.stop()
        self.actors.runtime.close()
        self.broker.close()
        self.engine.dispose()

    def publish(self, payload: str | dict[str, Any]) -> str:
        """Put a payload on the ingest queue exactly as a producer would."""
        return publish(self.broker, ingest_message(payload))

    def wait_terminal(self, event_ids: Iterable[str], *, timeout: float = 60.0) -> None:
        """Wait until every event's fan-out is done, every recipient has a terminal outcome
        and every delivery is terminal."""
        wait_terminal(self.engine, event_ids, timeout=timeout)

    def outcomes(self, event_id: str) -> dict[str, int]:
        """Recipients of one event by routing outcome."""
        with self.engine.connect() as conn:
            return route_outcomes(conn, event_id)

    def routes(self, event_id: str) -> dict[str, Any]:
        """Every recipient's route row of one event, by ref."""
        with self.engine.connect() as conn:
            return {r.recipient_ref: r for r in conn.execute(select(routes).where(routes.c.event_id == event_id))}

    def counts(self, event_id: str) -> dict[tuple[str, str], int]:
        """Deliveries of one event by (channel, status)."""
        with self.engine.connect() as conn:
            return outcome_counts(conn, event_id)

    def ledger_rows(self, event_id: str) -> list[Any]:
        """Every ledger row of one event, oldest first."""
        with self.engine.connect() as conn:
            return list(conn.execute(select(ledger).where(ledger.c.event_id == event_id).order_by(ledger.c.id)))

    def ledger_count(self, event_id: str) -> int:
        """How many ledger rows an event has."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).where(ledger.c.event_id == event_id)).scalar_one())


def wait_terminal(engine: Engine, event_ids: Iterable[str], *, timeout: float = 60.0) -> None:
    """Wait until the events' fan-outs are done and every recipient and delivery is terminal."""
    ids = list(event_ids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            summaries = [event_summary(conn, event_id) for event_id in ids]
            if (
                all(s is not None and s.fanout_done for s in summaries)
                and unfinished_count(conn, ids) == 0
                and open_count(conn, ids) == 0
            ):
                return
        time.sleep(0.1)
    with engine.connect() as conn:
        state = {event_id: (outcome_counts(conn, event_id), route_outcomes(conn, event_id)) for event_id in ids}
    raise AssertionError(f"not terminal after {timeout} s: {state}")


def write_routing(folder: Path, routes: str, *, channels: str = "", announce_all_above: int = 10_000) -> Path:
    """A routing policy for one test: ``routes`` is the YAML of the routes list, indented by 2."""
    path = folder / "routing.yaml"
    path.write_text(
        "version: 1\n"
        "locales: [en, zh-CN]\n"
        f"announce_all_above: {announce_all_above}\n"
        + (f"channels:\n{channels}" if channels else "")
        + f"routes:\n{routes}",
        encoding="utf-8",
    )
    return path


def every_type_at_once(channels: str) -> str:
    """Routes that send every notice on ``channels`` (e.g. "[sms, phone]") in one stage.

    Policy changes have no SMS or phone templates: they go by station letter, so a test
    that uses this enables ``insite`` too.
    """
    return "".join(
        f"  - name: {name}\n    match: {{type: {kind}}}\n    stages: [{{channels: {chans}, wait: 10m}}]\n"
        f"    announce: {'false' if kind == 'account_notice' else 'true'}\n"
        for name, kind, chans in (
            ("incident", "security_incident", channels),
            ("account", "account_notice", channels),
            ("service", "service_notice", channels),
            ("policy", "policy_change", "[insite]"),
        )
    )


def start_workers(settings: Settings, log: Path, *, processes: int = 1, threads: int = 4) -> subprocess.Popen[bytes]:
    """`dramatiq worker.app` in its own process group, configured by ``settings``."""
    return subprocess.Popen(
        worker_command(processes, threads),
        env={**os.environ, **settings.as_env()},
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        start_new_session=True,
    )


def stop_workers(proc: subprocess.Popen[bytes]) -> None:
    """Stop a worker process group started by ``start_workers``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


#: A chain one channel at a time, so that every failure shows as a hand-on.
SEQUENTIAL = """\
  - name: incident
    match: {type: security_incident}
    stages:
      - {channels: [email, insite], wait: 10m}
      - {channels: [sms], wait: 10m}
      - {channels: [phone], wait: 10m}
    announce: true
  - name: account
    match: {type: account_notice}
    stages:
      - {channels: [email, insite], wait: 10m}
      - {channels: [sms], wait: 10m}
  - name: service
    match: {type: service_notice}
    stages:
      - {channels: [email, insite], wait: 10m}
      - {channels: [sms], wait: 10m}
    announce: true
  - name: policy
    match: {type: policy_change}
    stages: [{channels: [email, insite], wait: 10m}]
    announce: true
"""


@dataclass
class Rig:
    """The parts of one test's herald; ``settings()`` also starts `herald serve` with them."""

    sandbox: TwilioSandbox
    public_url: str
    build: Callable[..., Settings]
    defaults: dict[str, Any] = field(default_factory=dict)  # a fixture's own settings, under the test's
    server: ServerThread | None = None

    def settings(self, **overrides: Any) -> Settings:
        """This test's settings; the callback app runs with the same ones (same queues)."""
        assert self.server is None, "one set of settings per test"
        settings = self.build(**{**self.defaults, **overrides})
        self.server = ServerThread(create_app(settings), port=int(self.public_url.rsplit(":", 1)[1])).start()
        return settings


def policy_change(
    *, ahead: timedelta, substantial: bool = True, version: str = "2027-01", **data: Any
) -> dict[str, Any]:
    """A policy change taking effect ``ahead`` of now, to a few people inline."""
    now = datetime.now(UTC)
    body: dict[str, Any] = {
        "document": "privacy_policy",
        "version": version,
        "title": "Clearer rules on how long we keep your data",
        "summary_of_changes": "Support tickets are kept for 2 years instead of 5.",
        "url": "https://www.example.com/legal/privacy",
        "substantial": substantial,
        "effective_at": (now + ahead).isoformat(),
        "audience": {"recipients": people(4)},
    }
    body.update(data)
    return {
        "event_id": f"pc-{uuid.uuid4().hex[:10]}",
        "type": "policy_change",
        "occurred_at": now.isoformat(),
        "source": "legal",
        "data": body,
    }


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


#: The `herald` command of this virtual environment.
HERALD = str(Path(sys.executable).with_name("herald"))


def run(
    args: list[str], env: dict[str, str], stdin: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HERALD, *args],
        env={**os.environ, **env},
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def env_for(settings: Settings) -> dict[str, str]:
    return {
        "HERALD_BROKER_URL": settings.broker_url,
        "HERALD_BROKER_NAMESPACE": settings.broker_namespace,
        "HERALD_DATABASE_URL": settings.database_url,
        "HERALD_DATA_DIR": str(settings.data_dir),
    }
