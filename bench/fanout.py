#!/usr/bin/env python
"""Fan-out benchmark: one event to N recipients (email + station letter) through the whole
herald pipeline, against a local aiosmtpd sink, next to a bare aiosmtplib loop that sends
the same messages to the same sink over the same number of SMTP connections.

    python bench/fanout.py [--recipients 10000] [--processes 2] [--threads 4] [--repeat 1]

See bench/README.md. Exits 0 whether or not the targets are met (it says which); non-zero
only when something went wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import formataddr, formatdate, parseaddr
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))  # _sink; spawned children inherit sys.path

# Every setting the bench depends on is passed explicitly; stray HERALD_* variables from the
# calling shell (a real SMTP server, say) must not leak into the workers or the baseline.
_STRAY_ENV = sorted(k for k in os.environ if k.startswith("HERALD_"))
for _key in _STRAY_ENV:
    del os.environ[_key]

import psutil  # noqa: E402
from _sink import SinkProcess  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

#: Targets from the issue.
TARGET_RATIO = 0.5
TARGET_RSS_MB = 300.0

_NAMES = ("Alex Chen", "Maria Garcia", "李娜", "王伟", "Sam O'Neil", "Priya Patel", "张敏", "Jonas Berg")
_MB = 1024 * 1024

console = Console(width=None if sys.stdout.isatty() else 150)


class BenchError(Exception):
    """Something went wrong that makes the figures meaningless."""


# --- the event -----------------------------------------------------------------------------


def make_recipients(count: int, tag: str) -> list[dict[str, str]]:
    """``count`` people with valid addresses; every other one reads Chinese (zh-CN)."""
    return [
        {
            "user_id": f"{tag}-{i:06d}",
            "name": _NAMES[i % len(_NAMES)],
            "email": f"{tag}.{i}@example.com",
            "locale": "zh-CN" if i % 2 else "en",
        }
        for i in range(count)
    ]


def make_event(count: int, tag: str) -> dict[str, Any]:
    """A security incident addressed inline to ``count`` recipients."""
    now = datetime.now(UTC)
    return {
        "event_id": f"bench-{tag}-{uuid.uuid4().hex[:8]}",
        "type": "security_incident",
        "occurred_at": now.isoformat(),
        "source": "herald-bench",
        "data": {
            "incident_id": "INC-BENCH-1",
            "severity": "high",
            "title": "Unauthorised access to a customer support tool",
            "detected_at": (now - timedelta(hours=3)).isoformat(),
            "situation": "An attacker used a stolen support-staff password to view account records.",
            "impact": "Your name, email address and order history may have been seen. Passwords were not exposed.",
            "measures": "We locked the account, reset all support credentials and added hardware-key sign-in.",
            "advice": "Be wary of emails asking for your password; we will never ask for it.",
            "remedies": "Contact privacy@example.com for a copy of the data involved or to request deletion.",
            "audience": {"recipients": make_recipients(count, tag)},
        },
    }


def payload_bytes(event: dict[str, Any]) -> int:
    """The size the ingest limit sees."""
    return len(json.dumps(event, ensure_ascii=False).encode())


# --- peak memory ---------------------------------------------------------------------------


@dataclass
class RssPeaks:
    """Peak resident memory of a process tree, sampled."""

    samples: int = 0
    per_process: dict[int, tuple[str, int]] = field(default_factory=dict)  # pid -> (role, peak bytes)
    total_peak: int = 0

    @property
    def worker_peak(self) -> int:
        """The largest peak of any one worker process."""
        return max((rss for role, rss in self.per_process.values() if role == "worker"), default=0)


class RssSampler(threading.Thread):
    """Every ``interval`` s: RSS of each dramatiq worker process (children of the dramatiq
    main process that run Python; the embedded redis-server is left out) and their sum."""

    def __init__(self, main_pid: int, interval: float = 0.1) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.main_pid = main_pid
        self.interval = interval
        self.peaks = RssPeaks()
        self._halt = threading.Event()

    def run(self) -> None:
        try:
            main = psutil.Process(self.main_pid)
        except psutil.Error:
            return
        known: dict[int, psutil.Process] = {}
        while not self._halt.is_set():
            try:
                children = main.children(recursive=True)
                main_rss = main.memory_info().rss
            except psutil.Error:
                break
            total = 0
            for child in children:
                proc = known.setdefault(child.pid, child)
                try:
                    if "redis" in proc.name():
                        continue
                    rss = proc.memory_info().rss
                except psutil.Error:
                    continue
                total += rss
                _, peak = self.peaks.per_process.get(child.pid, ("worker", 0))
                self.peaks.per_process[child.pid] = ("worker", max(peak, rss))
            _, peak = self.peaks.per_process.get(self.main_pid, ("main", 0))
            self.peaks.per_process[self.main_pid] = ("main", max(peak, main_rss))
            self.peaks.total_peak = max(self.peaks.total_peak, total)
            self.peaks.samples += 1
            self._halt.wait(self.interval)

    def stop(self) -> RssPeaks:
        self._halt.set()
        self.join(5)
        return self.peaks


def tree_cpu(pid: int | None, *, children: bool = True) -> float:
    """CPU seconds (user + system) used so far by a process and, optionally, its descendants
    (the embedded redis-server left out: it is counted on its own)."""
    if pid is None:
        return 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *(root.children(recursive=True) if children else [])]
    except psutil.Error:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            if proc is not root and "redis" in proc.name():
                continue
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def redis_cpu(data_dir: Path) -> float:
    """CPU seconds of the embedded redis-server of ``data_dir`` (it daemonises: found via its registry)."""
    try:
        pid = int(json.loads((data_dir / "redis.rdb.json").read_text())["server_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
    return tree_cpu(pid, children=False)


# --- the baseline --------------------------------------------------------------------------


@dataclass
class BaselineResult:
    messages: int
    received: int
    errors: int
    connections: int
    seconds: float
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.received / self.seconds if self.seconds else 0.0


def baseline_jobs(event_obj: dict[str, Any], from_header: str) -> list[tuple[str, Any, str, str, str]]:
    """(address, template, name, event_id, ref) per recipient, with the MIME built exactly as
    herald builds it: Renderer → Content → channels.email.build_template, once per locale."""
    from channels.email import build_template, one_line
    from worker.config import Settings
    from worker.events import parse_event
    from worker.rendering import Renderer

    event = parse_event(event_obj, max_bytes=1 << 30)
    renderer = Renderer(Settings().templates_dir)
    templates: dict[str, Any] = {}
    jobs = []
    for person in event_obj["data"]["audience"]["recipients"]:
        locale = person["locale"]
        if locale not in templates:
            content = renderer.render(event, "email", locale)
            templates[locale] = build_template(content, event.event_id, one_line(from_header))
        jobs.append((person["email"], templates[locale], person["name"], event.event_id, person["user_id"]))
    return jobs


async def _baseline(
    host: str, port: int, connections: int, envelope_from: str, jobs: list[tuple[str, Any, str, str, str]]
) -> tuple[int, float]:
    from aiosmtplib import SMTP, SMTPException

    from channels.base import DeliveryKey
    from channels.email import MAX_NAME_CHARS, message_id_for, one_line

    clients = [SMTP(hostname=host, port=port, timeout=30) for _ in range(connections)]
    await asyncio.gather(*(client.connect() for client in clients))
    items = iter(jobs)
    date = formatdate(usegmt=True).encode("ascii")
    errors = 0

    async def work(client: SMTP) -> None:
        nonlocal errors
        for address, template, name, event_id, ref in items:
            # herald's per-recipient work: To header, Message-ID, three splices.
            to_header = formataddr((one_line(name)[:MAX_NAME_CHARS], address), charset="utf-8").encode("ascii")
            message_id = message_id_for(DeliveryKey(event_id, ref, "email")).encode("ascii")
            payload = template.render((date, to_header, message_id))
            try:
                await client.sendmail(envelope_from, [address], payload)
            except SMTPException:
                errors += 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(work(client) for client in clients))
        seconds = time.perf_counter() - started
    finally:
        await asyncio.gather(*(client.quit() for client in clients), return_exceptions=True)
        for client in clients:
            with contextlib.suppress(Exception):
                client.close()
    return errors, seconds


def run_baseline(sink: SinkProcess, connections: int, event_obj: dict[str, Any], from_header: str) -> BaselineResult:
    """Send every recipient's email with a bare aiosmtplib loop; time the sending only."""
    jobs = baseline_jobs(event_obj, from_header)
    envelope_from = parseaddr(from_header)[1]
    before = sink.count()
    cpu_before = (tree_cpu(os.getpid(), children=False), tree_cpu(sink.pid))
    errors, seconds = asyncio.run(_baseline(sink.host, sink.port, connections, envelope_from, jobs))
    cpu = {"client": tree_cpu(os.getpid(), children=False) - cpu_before[0], "sink": tree_cpu(sink.pid) - cpu_before[1]}
    received = sink.count() - before
    if received + errors != len(jobs):
        # sendmail returns after the 250 reply, so the sink has counted everything by now
        time.sleep(0.5)
        received = sink.count() - before
    return BaselineResult(len(jobs), received, errors, connections, seconds, cpu)


# --- the herald run ------------------------------------------------------------------------


@dataclass
class HeraldResult:
    recipients: int
    emails_received: int
    seconds: float
    email_seconds: float
    outcomes: dict[str, dict[str, int]]
    letters: int
    smtp_sessions: int
    rss: RssPeaks
    settings: dict[str, Any]
    cpu: dict[str, float] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def email_rate(self) -> float:
        return self.emails_received / self.seconds if self.seconds else 0.0

    @property
    def terminal(self) -> int:
        return sum(n for statuses in self.outcomes.values() for s, n in statuses.items() if s in _TERMINAL)

    @property
    def total_rate(self) -> float:
        return self.terminal / self.seconds if self.seconds else 0.0


_TERMINAL = ("delivered", "acknowledged", "failed")


def _read_engine(url: str) -> Any:
    """An engine for polling. On SQLite a plain one: herald's engine begins every transaction
    with BEGIN IMMEDIATE, so polling through it would take the write lock several times a second."""
    from sqlalchemy import create_engine

    from worker.store.engine import make_engine

    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": 60})
    return make_engine(url)


def _worker_env(settings: Any, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    env.update(
        {
            "HERALD_DATA_DIR": str(settings.data_dir),
            "HERALD_BROKER_URL": settings.broker_url,
            "HERALD_BROKER_NAMESPACE": settings.broker_namespace,
            "HERALD_DATABASE_URL": settings.database_url,
            "HERALD_SMTP_HOST": settings.smtp_host,
            "HERALD_SMTP_PORT": str(settings.smtp_port),
            "HERALD_SMTP_CONNECTIONS": str(settings.smtp_connections),
            "HERALD_BATCH_SIZE": str(settings.batch_size),
            "HERALD_PAGE_SIZE": str(settings.page_size),
            "HERALD_MAX_EVENT_BYTES": str(settings.max_event_bytes),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def _stop_workers(workers: subprocess.Popen[bytes]) -> None:
    if workers.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            workers.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            workers.wait(timeout=30)
    # Anything left in the workers' session (a stuck worker process) goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(workers.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        workers.wait(timeout=10)


def _wait_ready(workers: subprocess.Popen[bytes], log: Path, processes: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if workers.poll() is not None:
            raise BenchError(f"the workers exited with code {workers.returncode}:\n{_tail(log)}")
        text = log.read_text(errors="replace") if log.exists() else ""
        if text.count("ready for action") >= processes:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"the workers were not ready after {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.1)


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_terminal(
    engine: Any,
    event_id: str,
    *,
    sink: SinkProcess,
    sink_before: int,
    expected_emails: int,
    started: float,
    workers: subprocess.Popen[bytes],
    log: Path,
    timeout: float,
) -> dict[str, float]:
    """Poll until the event's fan-out is done and every delivery is terminal.

    Returns when things happened, in seconds after ``started``: ``accepted`` (ingest stored the
    event), ``first_email`` (the sink got one), ``fanout_done``, ``last_email`` (the sink had them
    all) and ``done`` (every delivery terminal). Sink marks are polled every 50 ms, the
    database every 200 ms.
    """
    from worker.store.intake import event_summary, list_rejections
    from worker.store.ledger import unfinished_count

    marks: dict[str, float] = {}
    next_db = 0.0
    while True:
        now = time.perf_counter()
        received = sink.count() - sink_before
        if received and "first_email" not in marks:
            marks["first_email"] = now - started
        if received >= expected_emails and "last_email" not in marks:
            marks["last_email"] = now - started
        if now >= next_db:
            next_db = now + 0.2
            with engine.connect() as conn:
                summary = event_summary(conn, event_id)
                if summary is None:
                    rejected = [r for r in list_rejections(conn, 5) if r.event_id == event_id]
                    if rejected:
                        raise BenchError(f"the event was rejected: {rejected[0].reason}")
                else:
                    marks.setdefault("accepted", now - started)
                    if summary.fanout_done:
                        marks.setdefault("fanout_done", now - started)
                        if unfinished_count(conn, [event_id]) == 0:
                            marks["done"] = time.perf_counter() - started
                            marks.setdefault("last_email", marks["done"])
                            return marks
        if workers.poll() is not None:
            raise BenchError(f"the workers exited with code {workers.returncode}:\n{_tail(log)}")
        if now - started > timeout:
            raise BenchError(f"not every delivery was terminal after {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.05)


def _start_profiler(folder: Path, main_pid: int, run: int) -> subprocess.Popen[bytes]:
    """py-spy on the dramatiq worker processes, collapsed stacks of the thread holding the GIL
    (where each process's Python CPU goes)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise BenchError("--profile needs py-spy: pip install py-spy")
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"herald-run{run}-{datetime.now():%H%M%S}.txt"
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(main_pid),
            "--subprocesses",
            "--gil",
            "--rate",
            "100",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "py-spy.log").open("ab"),
        start_new_session=True,
    )
    time.sleep(1.0)  # let it attach before the clock starts
    console.print(f"profiling into {out}")
    return proc


def _stop_profiler(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _drop_namespace(url: str, namespace: str) -> None:
    """Remove this run's keys from an external Redis."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def run_herald(args: argparse.Namespace, sink: SinkProcess, event_obj: dict[str, Any], run: int) -> HeraldResult:
    """One herald run on a fresh data dir and fresh worker processes."""
    from sqlalchemy import func, select

    from worker.broker import build_broker, ingest_message, publish
    from worker.config import Settings
    from worker.embedded_redis import shutdown_if_last
    from worker.store.engine import make_engine, migrate
    from worker.store.inbox import letter_count
    from worker.store.ledger import outcome_counts
    from worker.store.schema import deliveries

    data_dir = Path(tempfile.mkdtemp(prefix="herald-bench-"))
    log = data_dir / "workers.log"
    namespace = f"herald-bench-{uuid.uuid4().hex[:8]}"
    warm = make_event(args.warmup, f"w{run}")
    settings = Settings(
        data_dir=data_dir,
        broker_url=args.broker_url,
        database_url=args.database_url,
        broker_namespace=namespace,
        smtp_host=sink.host,
        smtp_port=sink.port,
        smtp_connections=args.smtp_connections,
        batch_size=args.batch_size,
        page_size=args.page_size,
        max_event_bytes=max(1_048_576, payload_bytes(event_obj) * 2),
    )
    env = _worker_env(settings, {})
    broker = engine = reader = None
    workers: subprocess.Popen[bytes] | None = None
    sampler: RssSampler | None = None
    profiler: subprocess.Popen[bytes] | None = None
    ok = False
    try:
        engine = make_engine(settings.resolved_database_url)
        migrate(engine)
        reader = _read_engine(settings.resolved_database_url)
        broker = build_broker(settings)  # starts (and joins) the embedded Redis when no URL is given
        workers = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dramatiq",
                "worker.app",
                "--processes",
                str(args.processes),
                "--threads",
                str(args.threads),
            ],
            env=env,
            cwd=str(REPO_DIR),
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
            start_new_session=True,  # Ctrl-C reaches the bench only; it stops the workers itself
        )
        sampler = RssSampler(workers.pid)
        sampler.start()
        _wait_ready(workers, log, args.processes, timeout=120)

        # Warm-up: a small event through every stage, so imports, template caches, the first
        # SMTP connections and SQLite's WAL exist before the clock starts.
        before = sink.count()
        started = time.perf_counter()
        publish(broker, ingest_message(warm))
        _wait_terminal(
            reader,
            warm["event_id"],
            sink=sink,
            sink_before=before,
            expected_emails=args.warmup,
            started=started,
            workers=workers,
            log=log,
            timeout=120,
        )
        time.sleep(1.0)

        event = event_obj
        recipients = len(event["data"]["audience"]["recipients"])
        if args.profile is not None:
            profiler = _start_profiler(args.profile, workers.pid, run)
        before, sessions_before = sink.counts()
        cpu_before = {
            "workers": tree_cpu(workers.pid),
            "sink": tree_cpu(sink.pid),
            "redis": redis_cpu(data_dir),
            "bench": tree_cpu(os.getpid(), children=False),
        }
        started = time.perf_counter()
        publish(broker, ingest_message(event))
        marks = _wait_terminal(
            reader,
            event["event_id"],
            sink=sink,
            sink_before=before,
            expected_emails=recipients,
            started=started,
            workers=workers,
            log=log,
            timeout=args.timeout,
        )
        cpu_after = {
            "workers": tree_cpu(workers.pid),
            "sink": tree_cpu(sink.pid),
            "redis": redis_cpu(data_dir),
            "bench": tree_cpu(os.getpid(), children=False),
        }
        cpu = {k: cpu_after[k] - cpu_before[k] for k in cpu_before}
        if profiler is not None:
            _stop_profiler(profiler)
            profiler = None
        time.sleep(0.2)
        received, sessions = sink.counts()
        received -= before
        sessions -= sessions_before
        rss = sampler.stop()
        with reader.connect() as conn:
            counts = outcome_counts(conn, event["event_id"])
            letters = letter_count(conn, event["event_id"])
            count_rows = select(func.count()).where(deliveries.c.event_id == event["event_id"])
            rows = int(conn.execute(count_rows).scalar_one())
        if rows != recipients * len(settings.channels):
            raise BenchError(f"expected {recipients * len(settings.channels)} deliveries, the ledger has {rows}")
        outcomes: dict[str, dict[str, int]] = {}
        for (channel, status), n in sorted(counts.items()):
            outcomes.setdefault(channel, {})[status] = n
        ok = True
        return HeraldResult(
            recipients=recipients,
            emails_received=received,
            seconds=marks["done"],
            email_seconds=marks["last_email"],
            marks=marks,
            outcomes=outcomes,
            letters=letters,
            smtp_sessions=sessions,
            rss=rss,
            cpu=cpu,
            settings={
                "processes": args.processes,
                "threads": args.threads,
                "smtp_connections_per_thread": settings.smtp_connections,
                "batch_size": settings.batch_size,
                "page_size": settings.page_size,
                "database": "sqlite (embedded)" if not args.database_url else _safe_url(args.database_url),
                "broker": "redis (embedded)" if not args.broker_url else _safe_url(args.broker_url),
            },
        )
    finally:
        # Each step on its own, so one failure cannot leave processes behind.
        cleanup: list[Any] = []
        if profiler is not None:
            cleanup.append(lambda: _stop_profiler(profiler))
        if sampler is not None:
            cleanup.append(sampler.stop)
        if workers is not None:
            cleanup.append(lambda: _stop_workers(workers))
        if broker is not None:
            cleanup.append(broker.close)
        cleanup += [eng.dispose for eng in (reader, engine) if eng is not None]
        cleanup.append(shutdown_if_last)  # the bench was the last user of the embedded Redis: stop it
        if args.broker_url:
            cleanup.append(lambda: _drop_namespace(args.broker_url, namespace))
        for step in cleanup:
            try:
                step()
            except Exception as exc:
                console.print(f"[yellow]clean-up step failed: {type(exc).__name__}: {exc}[/]")
        if ok or not args.keep_failed:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            console.print(f"[yellow]kept {data_dir} (worker log: {log})[/]")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


# --- reporting -----------------------------------------------------------------------------


def _mb(n: int) -> float:
    return n / _MB


def summarise(pairs: list[tuple[BaselineResult, HeraldResult]], args: argparse.Namespace) -> dict[str, Any]:
    ratios = [h.email_rate / b.rate if b.rate else 0.0 for b, h in pairs]
    worker_peaks = [h.rss.worker_peak for _, h in pairs]
    total_peaks = [h.rss.total_peak for _, h in pairs]
    ratio = statistics.median(ratios)
    peak = max(worker_peaks)
    return {
        "baseline_rate": statistics.median(b.rate for b, _ in pairs),
        "herald_email_rate": statistics.median(h.email_rate for _, h in pairs),
        "herald_total_rate": statistics.median(h.total_rate for _, h in pairs),
        "ratio_median": ratio,
        "ratios": ratios,
        "peak_worker_rss_mb": _mb(peak),
        "peak_total_rss_mb": _mb(max(total_peaks)),
        "target_ratio": TARGET_RATIO,
        "target_rss_mb": TARGET_RSS_MB,
        "ratio_met": ratio >= TARGET_RATIO,
        "rss_met": _mb(peak) < TARGET_RSS_MB,
    }


def report(pairs: list[tuple[BaselineResult, HeraldResult]], args: argparse.Namespace, summary: dict[str, Any]) -> None:
    first = pairs[0][1]
    settings = first.settings
    total_connections = args.processes * args.threads * args.smtp_connections
    console.print(
        f"[bold]herald fan-out benchmark[/]: {first.recipients:,} recipients (en / zh-CN), email + insite; "
        f"{settings['processes']} processes × {settings['threads']} threads × "
        f"{settings['smtp_connections_per_thread']} SMTP connections = {total_connections} connections; "
        f"batch {settings['batch_size']}, page {settings['page_size']}; "
        f"database {settings['database']}, broker {settings['broker']}; "
        f"sink: aiosmtpd SmtpSink(store=False) in its own process; "
        f"baseline: bare aiosmtplib sendmail over {total_connections} connections, MIME built once per "
        f"locale by herald's Renderer + channels.email.build_template, To/Message-ID spliced per recipient."
    )
    table = Table(title="runs", show_lines=False)
    for column in (
        "run",
        "baseline msg/s",
        "herald email/s",
        "ratio",
        "herald total deliv./s",
        "pipeline s",
        "last email s",
        "emails recv.",
        "SMTP sessions",
        "worker RSS peak MB",
        "workers total peak MB",
    ):
        table.add_column(column, justify="right")
    for i, (b, h) in enumerate(pairs, 1):
        table.add_row(
            str(i),
            f"{b.rate:,.0f}",
            f"{h.email_rate:,.0f}",
            f"{h.email_rate / b.rate if b.rate else 0:.2f}",
            f"{h.total_rate:,.0f}",
            f"{h.seconds:.2f}",
            f"{h.email_seconds:.2f}",
            f"{h.emails_received:,}",
            str(h.smtp_sessions),
            f"{_mb(h.rss.worker_peak):.0f}",
            f"{_mb(h.rss.total_peak):.0f}",
        )
    console.print(table)

    rss_table = Table(title="peak RSS per process (last run)")
    rss_table.add_column("pid", justify="right")
    rss_table.add_column("role")
    rss_table.add_column("peak MB", justify="right")
    for pid, (role, rss) in sorted(pairs[-1][1].rss.per_process.items()):
        rss_table.add_row(str(pid), "dramatiq main" if role == "main" else "worker", f"{_mb(rss):.0f}")
    console.print(rss_table)

    outcome = ", ".join(
        f"{ch}: " + " ".join(f"{s}={n:,}" for s, n in st.items()) for ch, st in pairs[-1][1].outcomes.items()
    )
    console.print(f"outcomes (last run): {outcome}; station letters: {pairs[-1][1].letters:,}")
    b, h = pairs[-1]
    console.print("timeline (last run, s after publish): " + ", ".join(f"{k} {v:.2f}" for k, v in h.marks.items()))
    console.print(
        "CPU seconds (last run; 2 cores = 2 s per s): baseline "
        + ", ".join(f"{k} {v:.1f}" for k, v in b.cpu.items())
        + f" in {b.seconds:.1f} s; herald "
        + ", ".join(f"{k} {v:.1f}" for k, v in h.cpu.items())
        + f" in {h.seconds:.1f} s"
    )

    def verdict(ok: bool) -> str:
        return "[green]met[/]" if ok else "[red]NOT met[/]"

    label = "median ratio" if len(pairs) > 1 else "ratio"
    console.print(
        f"{label} herald email rate / bare loop = {summary['ratio_median']:.2f} "
        f"(target ≥ {TARGET_RATIO}): {verdict(summary['ratio_met'])}"
    )
    console.print(
        f"peak worker process RSS = {summary['peak_worker_rss_mb']:.0f} MB, all workers together "
        f"{summary['peak_total_rss_mb']:.0f} MB (target < {TARGET_RSS_MB:.0f} MB per worker): "
        f"{verdict(summary['rss_met'])}"
    )


def write_json(
    path: Path, pairs: list[tuple[BaselineResult, HeraldResult]], args: argparse.Namespace, summary: dict[str, Any]
) -> None:
    runs = []
    for b, h in pairs:
        runs.append(
            {
                "baseline": {**asdict(b), "rate": b.rate},
                "herald": {
                    "recipients": h.recipients,
                    "emails_received": h.emails_received,
                    "seconds": h.seconds,
                    "last_email_seconds": h.email_seconds,
                    "email_rate": h.email_rate,
                    "total_rate": h.total_rate,
                    "outcomes": h.outcomes,
                    "letters": h.letters,
                    "smtp_sessions": h.smtp_sessions,
                    "cpu_seconds": {k: round(v, 2) for k, v in h.cpu.items()},
                    "timeline_seconds": {k: round(v, 2) for k, v in h.marks.items()},
                    "rss_samples": h.rss.samples,
                    "rss_peak_per_process_mb": {
                        str(pid): {"role": role, "mb": round(_mb(rss), 1)}
                        for pid, (role, rss) in h.rss.per_process.items()
                    },
                    "rss_peak_worker_mb": round(_mb(h.rss.worker_peak), 1),
                    "rss_peak_total_mb": round(_mb(h.rss.total_peak), 1),
                    "settings": h.settings,
                },
            }
        )
    data = {
        "when": datetime.now(UTC).isoformat(),
        "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"},
        "total_smtp_connections": args.processes * args.threads * args.smtp_connections,
        "summary": summary,
        "runs": runs,
    }
    data["args"]["database_url"] = _safe_url(args.database_url) if args.database_url else ""
    data["args"]["broker_url"] = _safe_url(args.broker_url) if args.broker_url else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    console.print(f"results written to {path}")


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from worker.config import Settings

    defaults = {name: Settings.model_fields[name].default for name in ("smtp_connections", "batch_size", "page_size")}
    parser = argparse.ArgumentParser(prog="python bench/fanout.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2, help="dramatiq worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process")
    parser.add_argument(
        "--smtp-connections",
        type=int,
        default=defaults["smtp_connections"],
        help="HERALD_SMTP_CONNECTIONS, per worker thread (default: herald's, %(default)s); "
        "the baseline uses processes × threads × this many connections",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults["batch_size"],
        help="HERALD_BATCH_SIZE (default: herald's, %(default)s)",
    )
    parser.add_argument(
        "--page-size", type=int, default=defaults["page_size"], help="HERALD_PAGE_SIZE (default: herald's, %(default)s)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="pairs of runs; baseline and herald alternate order, the median ratio is reported",
    )
    parser.add_argument("--warmup", type=int, default=20, help="recipients of the warm-up event")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one herald run may take")
    parser.add_argument(
        "--json", type=Path, default=None, help="write results here (default bench/out/fanout-<time>.json)"
    )
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp data dir")
    parser.add_argument("--broker-url", default="", help="default: embedded Redis in a temp data dir")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record the worker processes with py-spy (pip install py-spy) during the "
        "measured run; collapsed stacks go to DIR (slows herald down a little)",
    )
    parser.add_argument("--keep-failed", action="store_true", help="keep the data dir of a failed run")
    args = parser.parse_args(argv)
    for name in ("recipients", "processes", "threads", "smtp_connections", "repeat", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM to the bench unwinds like Ctrl-C, so every finally below runs.
    signal.signal(signal.SIGTERM, _interrupt)
    if _STRAY_ENV:
        console.print(f"[yellow]ignoring {', '.join(_STRAY_ENV)} from the environment[/]")
    from worker.config import Settings

    from_header = Settings().smtp_from
    connections = args.processes * args.threads * args.smtp_connections
    console.print(
        f"event: {args.recipients:,} recipients, payload "
        f"{payload_bytes(make_event(args.recipients, 'r1')) / 1024:,.0f} KiB; "
        f"{connections} SMTP connections in total"
    )
    pairs: list[tuple[BaselineResult, HeraldResult]] = []
    sink = SinkProcess("127.0.0.1", 0)
    try:
        sink.start()
        console.print(f"sink: pid {sink.pid}, port {sink.port}")
        for run in range(1, args.repeat + 1):
            baseline_first = run % 2 == 1
            event_obj = make_event(args.recipients, f"r{run}")  # one event per run, shared by both sides
            base: BaselineResult | None = None
            herald: HeraldResult | None = None
            for step in ("baseline", "herald") if baseline_first else ("herald", "baseline"):
                if step == "baseline":
                    console.print(f"run {run}: baseline …")
                    base = run_baseline(sink, connections, event_obj, from_header)
                    console.print(
                        f"run {run}: baseline {base.rate:,.0f} msg/s ({base.received:,} in {base.seconds:.2f} s)"
                    )
                    if base.errors or base.received != base.messages:
                        raise BenchError(f"baseline: {base.errors} errors, {base.received} of {base.messages} received")
                else:
                    console.print(f"run {run}: herald …")
                    herald = run_herald(args, sink, event_obj, run)
                    console.print(
                        f"run {run}: herald {herald.email_rate:,.0f} emails/s, {herald.total_rate:,.0f} deliveries/s "
                        f"({herald.seconds:.2f} s)"
                    )
            assert base is not None and herald is not None
            pairs.append((base, herald))
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        return 130
    except BenchError as exc:
        console.print(f"[red]benchmark failed:[/] {exc}")
        return 1
    finally:
        sink.stop()

    summary = summarise(pairs, args)
    report(pairs, args, summary)
    out = args.json or (BENCH_DIR / "out" / f"fanout-{datetime.now():%Y%m%d-%H%M%S}.json")
    write_json(out, pairs, args, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
