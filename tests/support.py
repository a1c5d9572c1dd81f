"""Helpers shared by the pipeline tests: events to send and a pipeline to send them through."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import dramatiq
from sqlalchemy import Engine, func, select

from worker.actors import Actors, declare_actors
from worker.broker import build_broker, ingest_message, publish, worker_command
from worker.config import Settings
from worker.store.engine import make_engine
from worker.store.intake import event_summary
from worker.store.ledger import outcome_counts, unfinished_count
from worker.store.schema import ledger


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
        """Wait until every event's fan-out is done and all its deliveries are terminal."""
        ids = list(event_ids)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.engine.connect() as conn:
                summaries = [event_summary(conn, event_id) for event_id in ids]
                if all(s is not None and s.fanout_done for s in summaries) and unfinished_count(conn, ids) == 0:
                    return
            time.sleep(0.1)
        with self.engine.connect() as conn:
            state = {event_id: outcome_counts(conn, event_id) for event_id in ids}
        raise AssertionError(f"deliveries not terminal after {timeout} s: {state}")

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
