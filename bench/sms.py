#!/usr/bin/env python
"""SMS benchmark: one event to N recipients with mobile numbers, channel ``sms`` only, through
the whole herald pipeline (workers → Twilio sandbox → signed status callbacks → ``herald serve``
→ ledger), next to a bare twilio-client loop that creates the same messages against the same
sandbox with the same total concurrency.

    python bench/sms.py [--recipients 2000] [--processes 2] [--threads 4] [--repeat 1]

See bench/README.md. Exits 0 whatever the ratio (it says how far herald is from the bare loop);
non-zero only when something went wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import multiprocessing
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))  # fanout (shared helpers); spawned children inherit sys.path

# Importing fanout drops stray HERALD_* variables from the environment; the Twilio client reads
# TWILIO_EDGE / TWILIO_REGION from it, which would rewrite every URL away from the sandbox.
for _key in [k for k in os.environ if k.startswith("TWILIO_")]:
    del os.environ[_key]

from fanout import (  # noqa: E402
    _NAMES,
    _STRAY_ENV,
    BenchError,
    RssPeaks,
    RssSampler,
    _drop_namespace,
    _read_engine,
    _safe_url,
    _stop_workers,
    _tail,
    _wait_ready,
    make_event,
    payload_bytes,
    redis_cpu,
    tree_cpu,
)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

#: The ratio below which the brief asks for a profile.
REFERENCE_RATIO = 0.5
ACCOUNT_SID = "AC" + "be" * 16
AUTH_TOKEN = "bench-sms-auth-token"
_MB = 1024 * 1024

console = Console(width=None if sys.stdout.isatty() else 150)


# --- the event -----------------------------------------------------------------------------


def mobile_number(i: int) -> str:
    """A distinct valid mobile number per index: odd ones Chinese (China Mobile), even ones US."""
    if i % 2:
        return f"+86139{i:08d}"
    return f"+1415{200 + (i // 10000) % 800:03d}{i % 10000:04d}"


def make_recipients(count: int, tag: str) -> list[dict[str, str]]:
    """``count`` people with mobile numbers; Chinese numbers read zh-CN, US numbers English."""
    return [
        {
            "user_id": f"{tag}-{i:06d}",
            "name": _NAMES[i % len(_NAMES)],
            "phone": mobile_number(i),
            "locale": "zh-CN" if i % 2 else "en",
        }
        for i in range(count)
    ]


def make_sms_event(count: int, tag: str) -> dict[str, Any]:
    """fanout's security incident, addressed to ``count`` people with mobile numbers only."""
    event = make_event(0, tag)
    event["data"]["audience"]["recipients"] = make_recipients(count, tag)
    return event


def check_numbers(event_obj: dict[str, Any]) -> None:
    """Every number must pass herald's own mobile check, or the bench would measure refusals."""
    from channels.sms import check_mobile

    bad = [p["phone"] for p in event_obj["data"]["audience"]["recipients"] if check_mobile(p["phone"])]
    if bad:
        raise BenchError(f"{len(bad)} generated numbers are not valid mobiles, e.g. {bad[0]}")


def sms_concurrency() -> int:
    """SmsChannel's default number of concurrent creates per worker thread."""
    from channels.sms import SmsChannel

    return int(inspect.signature(SmsChannel.__init__).parameters["concurrency"].default)


# --- the sandbox, in a process of its own --------------------------------------------------


@dataclass
class SandboxStats:
    """What the sandbox saw since the last mark; times are ``time.monotonic()`` (system-wide on Linux)."""

    accepted: int = 0  # message creates answered 201
    refused: int = 0  # message creates answered anything else
    first_create: float | None = None  # arrival of the first accepted create
    last_create: float | None = None  # arrival of the last accepted create
    callbacks_ok: int = 0  # status callbacks herald answered 2xx
    callbacks_failed: int = 0  # status callbacks that failed after the sandbox's retries
    delivered: int = 0  # "delivered" callbacks herald took
    last_delivered: float | None = None  # when the last of those finished

    @property
    def steady_rate(self) -> float:
        """Accepted creates per second between the first and the last one (sandbox clock)."""
        if self.accepted < 2 or self.first_create is None or self.last_create is None:
            return 0.0
        span = self.last_create - self.first_create
        return (self.accepted - 1) / span if span > 0 else 0.0


class _Tally:
    """Running counts over the sandbox's records, read incrementally (a poll must stay cheap)."""

    def __init__(self, sandbox: Any) -> None:
        self.stats = SandboxStats()
        self._requests = len(sandbox.requests)
        self._callbacks = len(sandbox.callbacks)

    def update(self, sandbox: Any) -> dict[str, Any]:
        s = self.stats
        requests = sandbox.requests
        for r in requests[self._requests :]:
            if r.endpoint != "messages":
                continue
            if r.status_code != 201:
                s.refused += 1
                continue
            s.accepted += 1
            s.first_create = r.at if s.first_create is None else min(s.first_create, r.at)
            s.last_create = r.at if s.last_create is None else max(s.last_create, r.at)
        self._requests = len(requests)
        callbacks = sandbox.callbacks
        offset = time.time() - time.monotonic()  # Callback.at is wall-clock time
        for cb in callbacks[self._callbacks :]:
            if cb.kind != "message-status":
                continue
            if not cb.ok:
                s.callbacks_failed += 1
                continue
            s.callbacks_ok += 1
            if cb.params.get("MessageStatus") == "delivered":
                s.delivered += 1
                at = cb.at - offset
                s.last_delivered = at if s.last_delivered is None else max(s.last_delivered, at)
        self._callbacks = len(callbacks)
        return asdict(s)  # plain data: the class lives in __mp_main__ here


def _serve_sandbox(conn: Connection, host: str, callback_delay_s: float) -> None:
    # Ctrl-C reaches the whole foreground process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: conn.close())
    import logging

    from worker.sandbox.twilio import TwilioSandbox

    # Failed callbacks are counted; thousands of warning lines would only slow the sandbox.
    logging.getLogger("worker.sandbox.twilio").setLevel(logging.ERROR)
    sandbox = TwilioSandbox(host, 0, account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, callback_delay_s=callback_delay_s)
    try:
        sandbox.start()
    except Exception as exc:  # report, do not hang the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    tally = _Tally(sandbox)
    try:
        conn.send(("ready", sandbox.port))
        while True:
            try:
                if not conn.poll(1.0):
                    continue
                command = conn.recv()
            except (EOFError, OSError):
                break  # the parent is gone
            if command == "stats":
                conn.send(tally.update(sandbox))
            elif command == "mark":
                tally = _Tally(sandbox)
                conn.send("marked")
            elif command == "reset":
                sandbox.reset()
                tally = _Tally(sandbox)
                conn.send("reset")
            elif command == "stop":
                conn.send("stopped")
                break
    finally:
        sandbox.stop()


class SandboxProcess:
    """``worker.sandbox.twilio.TwilioSandbox`` in a spawned process; ``stats()`` reads its counters."""

    def __init__(self, host: str = "127.0.0.1", callback_delay_s: float = 0.01) -> None:
        self.host = host
        self.port = 0
        self.callback_delay_s = callback_delay_s
        self._ctx = multiprocessing.get_context("spawn")
        self._conn: Connection | None = None
        self._proc: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float = 60.0) -> SandboxProcess:
        """Start the sandbox process and wait until it answers.

        Raises:
            BenchError: it did not start.
        """
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=_serve_sandbox, args=(child, self.host, self.callback_delay_s), name="bench-twilio-sandbox"
        )
        self._proc.daemon = True
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(timeout):
            self.stop()
            raise BenchError("the Twilio sandbox process did not start in time")
        kind, value = parent.recv()
        if kind != "ready":
            self.stop()
            raise BenchError(f"the Twilio sandbox could not start: {value}")
        self.port = int(value)
        return self

    def _ask(self, command: str) -> Any:
        if self._conn is None or self._proc is None or not self._proc.is_alive():
            raise BenchError("the Twilio sandbox process is gone")
        self._conn.send(command)
        if not self._conn.poll(30.0):
            raise BenchError(f"the Twilio sandbox did not answer {command!r}")
        return self._conn.recv()

    def stats(self) -> SandboxStats:
        """Counts since the last ``mark()`` or ``reset()``."""
        return SandboxStats(**self._ask("stats"))

    def mark(self) -> None:
        """Start counting afresh (the records stay)."""
        self._ask("mark")

    def reset(self) -> None:
        """Forget every record and pending callback, and start counting afresh."""
        self._ask("reset")

    def stop(self) -> None:
        """Stop the sandbox process (politely, then by force)."""
        conn, self._conn = self._conn, None
        proc, self._proc = self._proc, None
        if conn is not None:
            with contextlib.suppress(EOFError, OSError):
                conn.send("stop")
                if conn.poll(10.0):
                    conn.recv()
            conn.close()
        if proc is not None:
            proc.join(10.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def __enter__(self) -> SandboxProcess:
        return self.start()

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.stop()


# --- the baseline --------------------------------------------------------------------------


@dataclass
class BaselineResult:
    messages: int
    errors: int
    concurrency: int
    seconds: float
    sandbox: SandboxStats
    cpu: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Accepted creates per second, first request to last response (client clock)."""
        return self.sandbox.accepted / self.seconds if self.seconds else 0.0


def baseline_jobs(event_obj: dict[str, Any], settings: Any) -> list[tuple[str, str]]:
    """(number, body) per recipient, the body rendered exactly as herald's workers render it."""
    from worker.events import parse_event
    from worker.rendering import Renderer

    event = parse_event(event_obj, max_bytes=1 << 30)
    renderer = Renderer(
        settings.templates_dir, sms_max_segments=settings.sms_max_segments, details_url=settings.details_url or None
    )
    bodies: dict[str, str] = {}
    jobs = []
    for person in event_obj["data"]["audience"]["recipients"]:
        locale = person["locale"]
        if locale not in bodies:
            bodies[locale] = renderer.render(event, "sms", locale).text
        jobs.append((person["phone"], bodies[locale]))
    return jobs


async def _baseline(
    url: str,
    sender: str,
    timeout: float,
    concurrency: int,
    jobs: list[tuple[str, str]],
    warmup: list[tuple[str, str]],
    mark: Any,
) -> tuple[int, float]:
    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.rest import Client

    http = AsyncTwilioHttpClient(timeout=timeout)  # its aiohttp session belongs to this loop
    client = Client(ACCOUNT_SID, AUTH_TOKEN, http_client=http, environment={})
    client.api.base_url = url
    errors = 0
    last = 0.0

    async def work(items: Any) -> None:
        nonlocal errors, last
        for to, body in items:
            try:
                await client.messages.create_async(to=to, from_=sender, body=body)
            except Exception:
                errors += 1
            last = time.monotonic()

    try:
        # Warm-up: the lazy twilio imports and the first connections happen before the clock.
        await asyncio.gather(*(work(iter(warmup)) for _ in range(min(concurrency, len(warmup)))))
        errors = 0
        await asyncio.sleep(0.5)
        mark()
        items = iter(jobs)
        started = time.monotonic()
        await asyncio.gather(*(work(items) for _ in range(concurrency)))
        seconds = last - started
    finally:
        await http.close()
    return errors, seconds


def run_baseline(
    sandbox: SandboxProcess, concurrency: int, event_obj: dict[str, Any], settings: Any, warmup: int
) -> BaselineResult:
    """Create every recipient's SMS with a bare twilio-client loop; time the creates only."""
    jobs = baseline_jobs(event_obj, settings)
    warm = jobs[:warmup]
    sandbox.reset()
    cpu_before: dict[str, float] = {}

    def mark() -> None:
        sandbox.mark()
        cpu_before.update(client=tree_cpu(os.getpid(), children=False), sandbox=tree_cpu(sandbox.pid))

    with warnings.catch_warnings():  # twilio's async client still uses aiohttp's BasicAuth
        warnings.simplefilter("ignore", DeprecationWarning)
        errors, seconds = asyncio.run(
            _baseline(sandbox.url, settings.twilio_from, settings.twilio_timeout_s, concurrency, jobs, warm, mark)
        )
    cpu = {
        "client": tree_cpu(os.getpid(), children=False) - cpu_before["client"],
        "sandbox": tree_cpu(sandbox.pid) - cpu_before["sandbox"],
    }
    stats = sandbox.stats()
    return BaselineResult(len(jobs), errors, concurrency, seconds, stats, cpu)


# --- the herald run ------------------------------------------------------------------------


@dataclass
class HeraldResult:
    recipients: int
    seconds: float  # publish → every delivery terminal (includes the status callbacks)
    create_seconds: float  # publish → the last create the sandbox accepted
    sandbox: SandboxStats
    outcomes: dict[str, int]
    rss: RssPeaks
    serve_rss: int
    settings: dict[str, Any]
    cpu: dict[str, float] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)

    @property
    def create_rate(self) -> float:
        """Accepted creates per second, publish to the last accepted create."""
        return self.sandbox.accepted / self.create_seconds if self.create_seconds else 0.0

    @property
    def delivered(self) -> int:
        return self.outcomes.get("delivered", 0)

    @property
    def delivery_rate(self) -> float:
        """Delivered SMS per second, publish to every delivery terminal."""
        return self.delivered / self.seconds if self.seconds else 0.0


def settings_env(settings: Any) -> dict[str, str]:
    """The environment that makes a herald process build exactly these settings."""
    from worker.config import Settings

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERALD_", "TWILIO_"))}
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        elif isinstance(value, tuple):
            value = ",".join(value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        key = info.validation_alias if isinstance(info.validation_alias, str) else f"HERALD_{name.upper()}"
        env[key] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _stop_group(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM a process started in its own session, then SIGKILL whatever is left of the group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def start_serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """``herald serve`` (the callback app) in its own session."""
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from worker.cli import main; main()",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        cwd=str(REPO_DIR),
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        start_new_session=True,
    )


def _wait_healthy(serve: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if serve.poll() is not None:
            raise BenchError(f"herald serve exited with code {serve.returncode}:\n{_tail(log)}")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"{url}/health", timeout=2) as response,
        ):
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise BenchError(f"herald serve was not healthy after {timeout:.0f} s:\n{_tail(log)}")
        time.sleep(0.1)


def _start_profiler(pid: int, out: Path, *, subprocesses: bool) -> subprocess.Popen[bytes]:
    """py-spy on ``pid`` (and its children): collapsed stacks of the thread holding the GIL."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise BenchError("--profile needs py-spy: pip install py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [spy, "record", "--pid", str(pid), "--gil", "--rate", "100", "--format", "raw", "--output", str(out)]
    if subprocesses:
        command.insert(4, "--subprocesses")
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=(out.parent / "py-spy.log").open("ab"),
        start_new_session=True,
    )
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


def _wait_terminal(
    engine: Any,
    event_id: str,
    *,
    sandbox: SandboxProcess,
    expected: int,
    started: float,
    processes: list[tuple[str, subprocess.Popen[bytes], Path]],
    timeout: float,
) -> dict[str, float]:
    """Poll until the event's fan-out is done and every delivery is terminal.

    Returns when things happened, in seconds after ``started``: ``accepted`` (ingest stored the
    event), ``first_create`` / ``last_create`` (the sandbox's own arrival times), ``fanout_done``,
    ``last_delivered_callback`` (the sandbox's "delivered" callback for the last message
    finished) and ``done`` (every delivery terminal in the database). The sandbox is polled every
    100 ms; the database every 250 ms, every 50 ms once the sandbox has had every callback answered.
    """
    from worker.store.intake import event_summary, list_rejections
    from worker.store.ledger import unfinished_count

    marks: dict[str, float] = {}
    next_db = 0.0
    while True:
        now = time.monotonic()
        stats = sandbox.stats()
        callbacks_done = stats.delivered + stats.refused >= expected
        if now >= next_db or callbacks_done:
            next_db = now + 0.25
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
                            marks["done"] = time.monotonic() - started
                            break
        for role, proc, log in processes:
            if proc.poll() is not None:
                raise BenchError(f"{role} exited with code {proc.returncode}:\n{_tail(log)}")
        if now - started > timeout:
            raise BenchError(
                f"not every delivery was terminal after {timeout:.0f} s (sandbox: {stats});\n"
                + "\n".join(f"{role}: {_tail(log, 8)}" for role, _, log in processes)
            )
        time.sleep(0.05 if callbacks_done else 0.1)
    stats = sandbox.stats()
    if stats.first_create is not None and stats.last_create is not None:
        marks["first_create"] = stats.first_create - started
        marks["last_create"] = stats.last_create - started
    if stats.last_delivered is not None:
        marks["last_delivered_callback"] = stats.last_delivered - started
    return dict(sorted(marks.items(), key=lambda item: item[1]))


def run_herald(args: argparse.Namespace, sandbox: SandboxProcess, event_obj: dict[str, Any], run: int) -> HeraldResult:
    """One herald run on a fresh data dir, a fresh ``herald serve`` and fresh worker processes."""
    from worker.broker import build_broker, ingest_message, publish
    from worker.embedded_redis import shutdown_if_last
    from worker.serving import free_port
    from worker.store.engine import make_engine, migrate
    from worker.store.ledger import outcome_counts

    data_dir = Path(tempfile.mkdtemp(prefix="herald-bench-sms-"))
    log = data_dir / "workers.log"
    serve_log = data_dir / "serve.log"
    namespace = f"herald-bench-{uuid.uuid4().hex[:8]}"
    port = free_port()
    settings = bench_settings(args, sandbox, data_dir, namespace, port, event_obj)
    env = settings_env(settings)
    recipients = len(event_obj["data"]["audience"]["recipients"])
    warm = make_sms_event(args.warmup, f"w{run}")
    broker = engine = reader = None
    workers: subprocess.Popen[bytes] | None = None
    serve: subprocess.Popen[bytes] | None = None
    samplers: list[RssSampler] = []
    profilers: list[subprocess.Popen[bytes]] = []
    ok = False
    try:
        engine = make_engine(settings.resolved_database_url)
        migrate(engine)
        reader = _read_engine(settings.resolved_database_url)
        broker = build_broker(settings)  # starts (and joins) the embedded Redis when no URL is given
        serve = start_serve(env, port, serve_log)
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
        samplers = [RssSampler(workers.pid), RssSampler(serve.pid)]
        for sampler in samplers:
            sampler.start()
        _wait_healthy(serve, settings.public_url, serve_log)
        _wait_ready(workers, log, args.processes, timeout=120)
        watched = [("the workers", workers, log), ("herald serve", serve, serve_log)]

        # Warm-up: a small event through every stage (twilio imports, connections, templates,
        # the callback app's first requests) before the clock starts.
        sandbox.reset()
        started = time.monotonic()
        publish(broker, ingest_message(warm))
        _wait_terminal(
            reader,
            warm["event_id"],
            sandbox=sandbox,
            expected=args.warmup,
            started=started,
            processes=watched,
            timeout=120,
        )
        time.sleep(1.0)
        sandbox.reset()

        if args.profile is not None:
            stamp = f"run{run}-{datetime.now():%H%M%S}"
            profilers.append(_start_profiler(workers.pid, args.profile / f"workers-{stamp}.txt", subprocesses=True))
            profilers.append(_start_profiler(serve.pid, args.profile / f"serve-{stamp}.txt", subprocesses=False))
            time.sleep(1.0)  # let py-spy attach before the clock starts
        cpu_pids = {"workers": workers.pid, "serve": serve.pid, "sandbox": sandbox.pid}
        cpu_before = {k: tree_cpu(pid) for k, pid in cpu_pids.items()}
        cpu_before["redis"] = redis_cpu(data_dir)
        cpu_before["bench"] = tree_cpu(os.getpid(), children=False)
        started = time.monotonic()
        publish(broker, ingest_message(event_obj))
        marks = _wait_terminal(
            reader,
            event_obj["event_id"],
            sandbox=sandbox,
            expected=recipients,
            started=started,
            processes=watched,
            timeout=args.timeout,
        )
        cpu = {k: tree_cpu(pid) - cpu_before[k] for k, pid in cpu_pids.items()}
        cpu["redis"] = redis_cpu(data_dir) - cpu_before["redis"]
        cpu["bench"] = tree_cpu(os.getpid(), children=False) - cpu_before["bench"]
        for profiler in profilers:
            _stop_profiler(profiler)
        profilers = []
        stats = sandbox.stats()
        rss, serve_peaks = (sampler.stop() for sampler in samplers)
        samplers = []
        with reader.connect() as conn:
            outcomes = {status: n for (_, status), n in sorted(outcome_counts(conn, event_obj["event_id"]).items())}
        if sum(outcomes.values()) != recipients:
            raise BenchError(f"expected {recipients} deliveries, the ledger has {sum(outcomes.values())}")
        ok = True
        return HeraldResult(
            recipients=recipients,
            seconds=marks["done"],
            create_seconds=marks.get("last_create", marks["done"]),
            sandbox=stats,
            outcomes=outcomes,
            rss=rss,
            serve_rss=max((peak for _, peak in serve_peaks.per_process.values()), default=0),
            cpu=cpu,
            marks=marks,
            settings={
                "processes": args.processes,
                "threads": args.threads,
                "sms_concurrency_per_thread": sms_concurrency(),
                "sms_rate_per_second": settings.sms_rate_per_second,
                "callback_delay_s": args.callback_delay,
                "batch_size": settings.batch_size,
                "page_size": settings.page_size,
                "database": "sqlite (embedded)" if not args.database_url else _safe_url(args.database_url),
                "broker": "redis (embedded)" if not args.broker_url else _safe_url(args.broker_url),
            },
        )
    finally:
        # Each step on its own, so one failure cannot leave processes behind.
        cleanup: list[Any] = [lambda p=p: _stop_profiler(p) for p in profilers]
        cleanup += [s.stop for s in samplers]
        if workers is not None:
            cleanup.append(lambda: _stop_workers(workers))
        if serve is not None:
            cleanup.append(lambda: _stop_group(serve))
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
            console.print(f"[yellow]kept {data_dir} (logs: {log}, {serve_log})[/]")


def bench_settings(
    args: argparse.Namespace,
    sandbox: SandboxProcess,
    data_dir: Path,
    namespace: str,
    port: int,
    event_obj: dict[str, Any],
) -> Any:
    """herald's settings for one run: SMS only, against the sandbox, callbacks to ``port``."""
    from worker.config import Settings

    return Settings(
        data_dir=data_dir,
        broker_url=args.broker_url,
        database_url=args.database_url,
        broker_namespace=namespace,
        channels=("sms",),
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_base_url=sandbox.url,
        public_url=f"http://127.0.0.1:{port}",
        http_host="127.0.0.1",
        http_port=port,
        sms_rate_per_second=args.sms_rate,
        batch_size=args.batch_size,
        page_size=args.page_size,
        max_event_bytes=max(1_048_576, payload_bytes(event_obj) * 2),
    )


# --- reporting -----------------------------------------------------------------------------


def _mb(n: int) -> float:
    return n / _MB


def summarise(pairs: list[tuple[BaselineResult, HeraldResult]]) -> dict[str, Any]:
    ratios = [h.create_rate / b.rate if b.rate else 0.0 for b, h in pairs]
    return {
        "baseline_creates_per_s": statistics.median(b.rate for b, _ in pairs),
        "herald_creates_per_s": statistics.median(h.create_rate for _, h in pairs),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "baseline_steady_creates_per_s": statistics.median(b.sandbox.steady_rate for b, _ in pairs),
        "herald_steady_creates_per_s": statistics.median(h.sandbox.steady_rate for _, h in pairs),
        "herald_deliveries_per_s": statistics.median(h.delivery_rate for _, h in pairs),
        "peak_worker_rss_mb": _mb(max(h.rss.worker_peak for _, h in pairs)),
        "peak_workers_total_rss_mb": _mb(max(h.rss.total_peak for _, h in pairs)),
        "peak_serve_rss_mb": _mb(max(h.serve_rss for _, h in pairs)),
        "reference_ratio": REFERENCE_RATIO,
    }


def report(pairs: list[tuple[BaselineResult, HeraldResult]], summary: dict[str, Any]) -> None:
    first_b, first_h = pairs[0]
    s = first_h.settings
    console.print(
        f"[bold]herald SMS benchmark[/]: {first_h.recipients:,} recipients (half +1 en, half +86 zh-CN), "
        f"channel sms only; {s['processes']} processes × {s['threads']} threads × "
        f"{s['sms_concurrency_per_thread']} concurrent creates = {first_b.concurrency}; "
        f"HERALD_SMS_RATE_PER_SECOND={s['sms_rate_per_second']:g} (limiter still consulted per SMS); "
        f"sandbox callback delay {s['callback_delay_s']} s (queued, sent, delivered: 3 callbacks per SMS); "
        f"batch {s['batch_size']}, page {s['page_size']}; database {s['database']}, broker {s['broker']}; "
        f"sandbox and `herald serve` in processes of their own; baseline: bare twilio Client + "
        f"AsyncTwilioHttpClient, {first_b.concurrency} concurrent create_async, same numbers and bodies, "
        f"no StatusCallback."
    )
    table = Table(title="runs")
    for column in (
        "run",
        "baseline creates/s",
        "herald creates/s",
        "ratio",
        "baseline steady/s",
        "herald steady/s",
        "herald deliv./s e2e",
        "last create s",
        "all terminal s",
        "refused",
        "cb failed",
        "worker RSS MB",
        "serve RSS MB",
    ):
        table.add_column(column, justify="right")
    for i, (b, h) in enumerate(pairs, 1):
        table.add_row(
            str(i),
            f"{b.rate:,.0f}",
            f"{h.create_rate:,.0f}",
            f"{h.create_rate / b.rate if b.rate else 0:.2f}",
            f"{b.sandbox.steady_rate:,.0f}",
            f"{h.sandbox.steady_rate:,.0f}",
            f"{h.delivery_rate:,.0f}",
            f"{h.create_seconds:.2f}",
            f"{h.seconds:.2f}",
            str(h.sandbox.refused),
            str(h.sandbox.callbacks_failed),
            f"{_mb(h.rss.worker_peak):.0f}",
            f"{_mb(h.serve_rss):.0f}",
        )
    console.print(table)
    b, h = pairs[-1]
    console.print(f"outcomes (last run): {', '.join(f'{k}={v:,}' for k, v in h.outcomes.items())}")
    console.print("timeline (last run, s after publish): " + ", ".join(f"{k} {v:.2f}" for k, v in h.marks.items()))
    console.print(
        "CPU seconds (last run; 2 cores = 2 s per s): baseline "
        + ", ".join(f"{k} {v:.1f}" for k, v in b.cpu.items())
        + f" in {b.seconds:.1f} s; herald "
        + ", ".join(f"{k} {v:.1f}" for k, v in h.cpu.items())
        + f" in {h.seconds:.1f} s"
    )
    label = "median ratio" if len(pairs) > 1 else "ratio"
    note = "" if summary["ratio_median"] >= REFERENCE_RATIO else " [red](below 0.5: see --profile)[/]"
    console.print(
        f"{label} herald creates/s ÷ bare loop creates/s = {summary['ratio_median']:.2f}{note}; "
        f"herald end-to-end {summary['herald_deliveries_per_s']:,.0f} delivered SMS/s (incl. callbacks)"
    )
    console.print(
        f"peak worker process RSS {summary['peak_worker_rss_mb']:.0f} MB (all workers "
        f"{summary['peak_workers_total_rss_mb']:.0f} MB), herald serve {summary['peak_serve_rss_mb']:.0f} MB"
    )


def write_json(
    path: Path, pairs: list[tuple[BaselineResult, HeraldResult]], args: argparse.Namespace, summary: dict[str, Any]
) -> None:
    runs = []
    for b, h in pairs:
        runs.append(
            {
                "baseline": {
                    **asdict(b),
                    "creates_per_s": b.rate,
                    "steady_creates_per_s": b.sandbox.steady_rate,
                },
                "herald": {
                    "recipients": h.recipients,
                    "seconds": h.seconds,
                    "last_create_seconds": h.create_seconds,
                    "creates_per_s": h.create_rate,
                    "steady_creates_per_s": h.sandbox.steady_rate,
                    "deliveries_per_s": h.delivery_rate,
                    "outcomes": h.outcomes,
                    "sandbox": asdict(h.sandbox),
                    "cpu_seconds": {k: round(v, 2) for k, v in h.cpu.items()},
                    "timeline_seconds": {k: round(v, 3) for k, v in h.marks.items()},
                    "rss_samples": h.rss.samples,
                    "rss_peak_per_process_mb": {
                        str(pid): {"role": role, "mb": round(_mb(rss), 1)}
                        for pid, (role, rss) in h.rss.per_process.items()
                    },
                    "rss_peak_worker_mb": round(_mb(h.rss.worker_peak), 1),
                    "rss_peak_total_mb": round(_mb(h.rss.total_peak), 1),
                    "rss_peak_serve_mb": round(_mb(h.serve_rss), 1),
                    "settings": h.settings,
                },
            }
        )
    data = {
        "when": datetime.now(UTC).isoformat(),
        "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"},
        "total_concurrency": args.processes * args.threads * sms_concurrency(),
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

    defaults = {name: Settings.model_fields[name].default for name in ("batch_size", "page_size")}
    parser = argparse.ArgumentParser(prog="python bench/sms.py", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=2_000)
    parser.add_argument("--processes", type=int, default=2, help="dramatiq worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="pairs of runs; baseline and herald alternate order, the median ratio is reported",
    )
    parser.add_argument(
        "--sms-rate",
        type=float,
        default=100_000.0,
        help="HERALD_SMS_RATE_PER_SECOND (default %(default)g: high enough never to wait; the limiter "
        "is still asked once per SMS)",
    )
    parser.add_argument(
        "--callback-delay",
        type=float,
        default=0.01,
        help="seconds the sandbox waits before each status callback (default %(default)s)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=defaults["batch_size"], help="HERALD_BATCH_SIZE (default %(default)s)"
    )
    parser.add_argument(
        "--page-size", type=int, default=defaults["page_size"], help="HERALD_PAGE_SIZE (default %(default)s)"
    )
    parser.add_argument("--warmup", type=int, default=20, help="recipients of the warm-up event / baseline warm-up")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one herald run may take")
    parser.add_argument(
        "--json", type=Path, default=None, help="write results here (default bench/out/sms-<time>.json)"
    )
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp data dir")
    parser.add_argument("--broker-url", default="", help="default: embedded Redis in a temp data dir")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record the worker processes and herald serve with py-spy during the measured run; "
        "raw collapsed stacks go to DIR (slows herald down a little)",
    )
    parser.add_argument("--keep-failed", action="store_true", help="keep the data dir of a failed run")
    args = parser.parse_args(argv)
    for name in ("recipients", "processes", "threads", "repeat", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.sms_rate <= 0 or args.callback_delay < 0:
        parser.error("--sms-rate must be positive and --callback-delay not negative")
    return args


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # A SIGTERM to the bench unwinds like Ctrl-C, so every finally below runs.
    signal.signal(signal.SIGTERM, _interrupt)
    if _STRAY_ENV:
        console.print(f"[yellow]ignoring {', '.join(_STRAY_ENV)} from the environment[/]")
    concurrency = args.processes * args.threads * sms_concurrency()
    console.print(
        f"event: {args.recipients:,} recipients with mobile numbers, payload "
        f"{payload_bytes(make_sms_event(args.recipients, 'r1')) / 1024:,.0f} KiB; concurrency "
        f"{args.processes} processes × {args.threads} threads × {sms_concurrency()} (SmsChannel) = {concurrency}; "
        f"HERALD_SMS_RATE_PER_SECOND={args.sms_rate:g}"
    )
    pairs: list[tuple[BaselineResult, HeraldResult]] = []
    sandbox = SandboxProcess("127.0.0.1", callback_delay_s=args.callback_delay)
    try:
        sandbox.start()
        console.print(f"Twilio sandbox: pid {sandbox.pid}, {sandbox.url}, callback delay {args.callback_delay} s")
        for run in range(1, args.repeat + 1):
            baseline_first = run % 2 == 1
            event_obj = make_sms_event(args.recipients, f"r{run}")  # one event per run, shared by both sides
            check_numbers(event_obj)
            base: BaselineResult | None = None
            herald: HeraldResult | None = None
            for step in ("baseline", "herald") if baseline_first else ("herald", "baseline"):
                if step == "baseline":
                    console.print(f"run {run}: baseline …")
                    settings = bench_settings(args, sandbox, Path(tempfile.gettempdir()), "unused", 1, event_obj)
                    base = run_baseline(sandbox, concurrency, event_obj, settings, args.warmup)
                    console.print(
                        f"run {run}: baseline {base.rate:,.0f} creates/s "
                        f"({base.sandbox.accepted:,} in {base.seconds:.2f} s)"
                    )
                    if base.errors or base.sandbox.accepted != base.messages:
                        raise BenchError(
                            f"baseline: {base.errors} errors, {base.sandbox.accepted} of {base.messages} accepted"
                        )
                else:
                    console.print(f"run {run}: herald …")
                    herald = run_herald(args, sandbox, event_obj, run)
                    console.print(
                        f"run {run}: herald {herald.create_rate:,.0f} creates/s (last create at "
                        f"{herald.create_seconds:.2f} s), {herald.delivery_rate:,.0f} delivered/s end to end "
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
        sandbox.stop()

    summary = summarise(pairs)
    report(pairs, summary)
    out = args.json or (BENCH_DIR / "out" / f"sms-{datetime.now():%Y%m%d-%H%M%S}.json")
    write_json(out, pairs, args, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
