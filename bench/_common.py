"""What the benchmarks share: the event, the child processes they start and stop, what they
measure (RSS, CPU seconds), one herald run's set-up and clean-up, the pairs of runs, the
common command-line options and the JSON results.

Importing this module drops every ``HERALD_*`` variable from the environment (``STRAY_ENV``
lists them): the benchmarks pass every setting they depend on explicitly, so a variable from
the calling shell (a real SMTP server, say) must not leak into the workers or the baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

import psutil
from rich.console import Console

if TYPE_CHECKING:
    from dramatiq.brokers.redis import RedisBroker
    from sqlalchemy import Engine

    from worker.config import Settings

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
MB = 1024 * 1024

console = Console(width=None if sys.stdout.isatty() else 150)


def strip_env(prefix: str) -> list[str]:
    """Drop every environment variable whose name starts with ``prefix``; returns their names."""
    names = sorted(k for k in os.environ if k.startswith(prefix))
    for name in names:
        del os.environ[name]
    return names


STRAY_ENV = strip_env("HERALD_")


class BenchError(Exception):
    """Something went wrong that makes the figures meaningless."""


def mb(n: int) -> float:
    return n / MB


# --- the event -----------------------------------------------------------------------------


def make_recipients(count: int, tag: str, contact: Callable[[int], dict[str, str]]) -> list[dict[str, str]]:
    """``count`` people named like the demo's, ``contact(i)`` giving each one's address or
    number; every other one reads Chinese (zh-CN)."""
    from worker.cli.demo import _NAMES

    return [
        {
            "user_id": f"{tag}-{i:06d}",
            "name": _NAMES[i % len(_NAMES)],
            **contact(i),
            "locale": "zh-CN" if i % 2 else "en",
        }
        for i in range(count)
    ]


def make_event(tag: str, recipients: list[dict[str, str]]) -> dict[str, Any]:
    """The demo's security incident (``worker.cli.demo.demo_event``) as the bench's own, addressed
    inline to ``recipients``."""
    from worker.cli.demo import demo_event

    event = demo_event(0)
    event["event_id"] = f"bench-{tag}-{uuid.uuid4().hex[:8]}"
    event["source"] = "herald-bench"
    event["data"]["incident_id"] = "INC-BENCH-1"
    event["data"]["audience"] = {"recipients": recipients}
    return event


def single_channel_routing(folder: Path, channel: str) -> Path:
    """A routing policy that sends every notice on ``channel`` alone, in one stage.

    The benchmarks measure a channel, not routing. Policy changes have only email and
    station-letter templates, so they go by station letter (enable ``insite`` too).
    """
    path = folder / "routing.yaml"
    routes = "".join(
        f"  - name: {kind}\n    match: {{type: {kind}}}\n"
        f"    stages: [{{channels: [{channel if kind != 'policy_change' else 'insite'}], wait: 1h}}]\n"
        f"    announce: {'false' if kind == 'account_notice' else 'true'}\n"
        for kind in ("security_incident", "account_notice", "service_notice", "policy_change")
    )
    path.write_text(f"version: 1\nlocales: [en, zh-CN]\nroutes:\n{routes}", encoding="utf-8")
    return path


def payload_bytes(event: dict[str, Any]) -> int:
    """The size the ingest limit sees."""
    return len(json.dumps(event, ensure_ascii=False).encode())


# --- peak memory and CPU seconds -----------------------------------------------------------


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


def own_cpu() -> float:
    """CPU seconds of the bench process itself."""
    return tree_cpu(os.getpid(), children=False)


def redis_cpu(data_dir: Path) -> float:
    """CPU seconds of the embedded redis-server of ``data_dir`` (it daemonises: found via its registry)."""
    try:
        pid = int(json.loads((data_dir / "redis.rdb.json").read_text())["server_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
    return tree_cpu(pid, children=False)


def herald_cpu(trees: dict[str, int | None], data_dir: Path) -> dict[str, float]:
    """CPU seconds so far of each process tree in ``trees``, then of the embedded Redis and the bench."""
    return {
        **{name: tree_cpu(pid) for name, pid in trees.items()},
        "redis": redis_cpu(data_dir),
        "bench": own_cpu(),
    }


# --- processes -----------------------------------------------------------------------------


def tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``command`` in the repository, in a session of its own (Ctrl-C reaches the bench only; it
    stops its processes itself), stderr to ``log``."""
    return subprocess.Popen(
        command,
        env=env,
        cwd=str(REPO_DIR),
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        start_new_session=True,
    )


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
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


def wait_ready(workers: subprocess.Popen[bytes], log: Path, processes: int, timeout: float) -> None:
    """Wait until every dramatiq worker process has said it is ready."""
    deadline = time.monotonic() + timeout
    while True:
        if workers.poll() is not None:
            raise BenchError(f"the workers exited with code {workers.returncode}:\n{tail(log)}")
        text = log.read_text(errors="replace") if log.exists() else ""
        if text.count("ready for action") >= processes:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"the workers were not ready after {timeout:.0f} s:\n{tail(log)}")
        time.sleep(0.1)


def check_processes(watched: list[tuple[str, subprocess.Popen[bytes], Path]]) -> None:
    """Raise if any of the (role, process, log) has exited."""
    for role, proc, log in watched:
        if proc.poll() is not None:
            raise BenchError(f"{role} exited with code {proc.returncode}:\n{tail(log)}")


def start_profiler(pid: int, out: Path, *, subprocesses: bool) -> subprocess.Popen[bytes]:
    """py-spy on ``pid`` (and its children): collapsed stacks of the thread holding the GIL
    (where each process's Python CPU goes)."""
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


def stop_profiler(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- a server in a child process -----------------------------------------------------------


class Server(Protocol):
    port: int

    def start(self) -> object: ...

    def stop(self) -> None: ...


def ignore_interrupts(conn: Connection) -> None:
    """In the child: Ctrl-C reaches the whole foreground process group; the parent decides when we stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: conn.close())


def serve_commands(conn: Connection, server: Server, answer: Callable[[str], Any]) -> None:
    """In the child: start ``server`` and tell the parent its port (or why it could not start),
    then send ``answer(command)`` for each command (nothing when that is None) until "stop" or
    until the parent is gone; stop ``server`` in the end."""
    try:
        server.start()
    except Exception as exc:  # report, do not hang the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    try:
        conn.send(("ready", server.port))
        while True:
            try:
                if not conn.poll(1.0):
                    continue
                command = conn.recv()
            except (EOFError, OSError):
                break  # the parent is gone
            reply = answer(command)
            if reply is not None:
                conn.send(reply)
            if command == "stop":
                break
    finally:
        server.stop()


class ChildProcess:
    """A server in a spawned process of its own, so it never shares a GIL with the code being
    measured; the parent asks it things over a pipe (``ask``), the child runs ``serve_commands``."""

    label = "the child"  #: how messages name it
    error: type[Exception] = BenchError  #: what start() and ask() raise
    start_timeout = 30.0
    stop_timeout = 5.0

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._ctx = multiprocessing.get_context("spawn")
        self._conn: Connection | None = None
        self._proc: Any = None

    def target(self) -> tuple[Callable[..., None], tuple[Any, ...], str]:
        """The child's function, its arguments after the pipe and the host, and the process name."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The child process id."""
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout: float | None = None) -> Self:
        """Start the child process and wait until its server listens.

        Raises:
            error: it did not start.
        """
        function, args, name = self.target()
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=function, args=(child, self.host, *args), name=name)
        self._proc.daemon = True
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(self.start_timeout if timeout is None else timeout):
            self.stop()
            raise self.error(f"{self.label} process did not start in time")
        kind, value = parent.recv()
        if kind != "ready":
            self.stop()
            raise self.error(f"{self.label} could not start: {value}")
        self.port = int(value)
        return self

    def ask(self, command: str) -> Any:
        """Send ``command`` and return the child's answer.

        Raises:
            error: the child is gone or did not answer.
        """
        if self._conn is None or self._proc is None or not self._proc.is_alive():
            raise self.error(f"{self.label} process is gone")
        self._conn.send(command)
        if not self._conn.poll(30.0):
            raise self.error(f"{self.label} did not answer {command!r}")
        return self._conn.recv()

    def stop(self) -> None:
        """Stop the child process (politely, then by force)."""
        conn, self._conn = self._conn, None
        proc, self._proc = self._proc, None
        if conn is not None:
            with contextlib.suppress(EOFError, OSError):
                conn.send("stop")
                if conn.poll(self.stop_timeout):
                    conn.recv()
            conn.close()
        if proc is not None:
            proc.join(self.stop_timeout)
            if proc.is_alive():
                proc.terminate()
                proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.stop()


# --- one herald run ------------------------------------------------------------------------


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a herald process build exactly these settings."""
    return settings.as_env()


def read_engine(url: str) -> Engine:
    """An engine for polling. On SQLite a plain one: herald's engine begins every transaction
    with BEGIN IMMEDIATE, so polling through it would take the write lock several times a second."""
    from sqlalchemy import create_engine

    from worker.store.engine import make_engine

    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": 60})
    return make_engine(url)


def drop_namespace(url: str, namespace: str) -> None:
    """Remove this run's keys from an external Redis."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def run_settings(args: argparse.Namespace, settings: Settings, **specific: Any) -> dict[str, Any]:
    """What a herald run was configured with, for the report: ``specific`` after the worker
    processes and threads; the database and the broker without passwords."""
    return {
        "processes": args.processes,
        "threads": args.threads,
        **specific,
        "batch_size": settings.batch_size,
        "page_size": settings.page_size,
        "database": "sqlite (embedded)" if not args.database_url else safe_url(args.database_url),
        "broker": "redis (embedded)" if not args.broker_url else safe_url(args.broker_url),
    }


class HeraldRun:
    """What one herald run uses, on a fresh data dir: the database (migrated), the broker (the
    embedded Redis unless ``--broker-url``; then a namespace of its own), the dramatiq workers
    and whatever else the bench starts, RSS samplers and py-spy. On leaving the ``with`` block
    all of it stops, each step on its own so that one failure cannot leave processes behind,
    and the data dir goes unless the run failed and ``--keep-failed`` was given. Times are read
    from ``clock``."""

    def __init__(self, args: argparse.Namespace, prefix: str, clock: Callable[[], float]) -> None:
        self.args = args
        self.clock = clock
        self.data_dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.log = self.data_dir / "workers.log"
        self.namespace = f"herald-bench-{uuid.uuid4().hex[:8]}"
        self.engine: Engine | None = None
        self.reader: Engine | None = None
        self.broker: RedisBroker | None = None
        self.workers: subprocess.Popen[bytes] | None = None
        self.others: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.samplers: list[RssSampler] = []
        self.profilers: list[subprocess.Popen[bytes]] = []

    def open(self, settings: Settings) -> Engine:
        """Migrate the database and connect to the broker; returns an engine to poll the database with."""
        from worker.broker import build_broker
        from worker.store.engine import make_engine, migrate

        self.engine = make_engine(settings.resolved_database_url)
        migrate(self.engine)
        self.reader = read_engine(settings.resolved_database_url)
        self.broker = build_broker(settings)  # starts (and joins) the embedded Redis when no URL is given
        return self.reader

    def start_workers(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """``dramatiq worker.app`` with ``--processes`` and ``--threads``, logging to ``self.log``."""
        from worker.broker import worker_command

        self.workers = spawn(worker_command(self.args.processes, self.args.threads), env, self.log)
        return self.workers

    def wait_ready(self, timeout: float) -> None:
        assert self.workers is not None, "start_workers() first"
        wait_ready(self.workers, self.log, self.args.processes, timeout)

    def spawn(self, role: str, command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        """Another process of the run, watched like the workers (and stopped after them)."""
        proc = spawn(command, env, log)
        self.others.append((role, proc, log))
        return proc

    @property
    def watched(self) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
        """(role, process, log) of every process the run started, the workers first."""
        workers = [("the workers", self.workers, self.log)] if self.workers is not None else []
        return workers + self.others

    def check(self) -> None:
        """Raise if any process of the run has exited."""
        check_processes(self.watched)

    def sample(self, pid: int) -> RssSampler:
        """Start sampling the RSS of ``pid`` and its children."""
        sampler = RssSampler(pid)
        sampler.start()
        self.samplers.append(sampler)
        return sampler

    def stop_samplers(self) -> list[RssPeaks]:
        samplers, self.samplers = self.samplers, []
        return [sampler.stop() for sampler in samplers]

    def profile(self, pid: int, out: Path, *, subprocesses: bool) -> None:
        self.profilers.append(start_profiler(pid, out, subprocesses=subprocesses))

    def stop_profilers(self) -> None:
        profilers, self.profilers = self.profilers, []
        for profiler in profilers:
            stop_profiler(profiler)

    def publish(self, event: dict[str, Any], wait: Callable[[float], dict[str, float]]) -> dict[str, float]:
        """Put ``event`` on the ingest queue as a producer would, then ``wait(started)``."""
        from worker.broker import ingest_message, publish

        assert self.broker is not None, "open() first"
        started = self.clock()
        publish(self.broker, ingest_message(event))
        return wait(started)

    def timed(
        self, event: dict[str, Any], trees: dict[str, int | None], wait: Callable[[float], dict[str, float]]
    ) -> tuple[dict[str, float], dict[str, float]]:
        """``publish`` the measured event, counting the CPU seconds of ``trees``, the embedded
        Redis and the bench meanwhile; py-spy stops right after. Returns (marks, CPU seconds)."""
        before = herald_cpu(trees, self.data_dir)
        marks = self.publish(event, wait)
        after = herald_cpu(trees, self.data_dir)
        self.stop_profilers()
        return marks, {k: after[k] - before[k] for k in before}

    def poll(self, event_id: str, marks: dict[str, float], *, now: float, started: float) -> bool:
        """One look at the event in the database: notes ``accepted`` (ingest stored it) and
        ``fanout_done`` in ``marks`` at ``now`` the first time, and ``done`` once every delivery
        is terminal; returns whether it is.

        Raises:
            BenchError: ingest rejected the event.
        """
        from worker.store.intake import event_summary, list_rejections
        from worker.store.outcomes import unfinished_count

        assert self.reader is not None, "open() first"
        with self.reader.connect() as conn:
            summary = event_summary(conn, event_id)
            if summary is None:
                rejected = [r for r in list_rejections(conn, 5) if r.event_id == event_id]
                if rejected:
                    raise BenchError(f"the event was rejected: {rejected[0].reason}")
                return False
            marks.setdefault("accepted", now - started)
            if not summary.fanout_done:
                return False
            marks.setdefault("fanout_done", now - started)
            if unfinished_count(conn, [event_id]):
                return False
            marks["done"] = self.clock() - started
            return True

    def __enter__(self) -> Self:
        return self

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.close(ok=_t is None)

    def close(self, *, ok: bool) -> None:
        from worker.embedded_redis import shutdown_if_last

        steps: list[Callable[[], object]] = [partial(stop_profiler, p) for p in self.profilers]
        steps += [s.stop for s in self.samplers]
        if self.workers is not None:
            steps.append(partial(stop_group, self.workers, 30.0))
        steps += [partial(stop_group, proc) for _, proc, _ in self.others]
        if self.broker is not None:
            steps.append(self.broker.close)
        steps += [eng.dispose for eng in (self.reader, self.engine) if eng is not None]
        steps.append(shutdown_if_last)  # the bench was the last user of the embedded Redis: stop it
        if self.args.broker_url:
            steps.append(partial(drop_namespace, self.args.broker_url, self.namespace))
        for step in steps:
            try:
                step()
            except Exception as exc:
                console.print(f"[yellow]clean-up step failed: {type(exc).__name__}: {exc}[/]")
        if ok or not self.args.keep_failed:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        elif not self.others:
            console.print(f"[yellow]kept {self.data_dir} (worker log: {self.log})[/]")
        else:
            logs = ", ".join(str(log) for log in [self.log, *(log for _, _, log in self.others)])
            console.print(f"[yellow]kept {self.data_dir} (logs: {logs})[/]")


# --- pairs of runs -------------------------------------------------------------------------

B = TypeVar("B")
H = TypeVar("H")


def run_pairs(
    repeat: int,
    event_for: Callable[[int], dict[str, Any]],
    baseline: Callable[[int, dict[str, Any]], B],
    herald: Callable[[int, dict[str, Any]], H],
) -> list[tuple[B, H]]:
    """``repeat`` pairs of runs, one event per run shared by both sides; the baseline goes
    first in odd runs, herald in even ones."""
    pairs: list[tuple[B, H]] = []
    for run in range(1, repeat + 1):
        event_obj = event_for(run)
        base: B | None = None
        result: H | None = None
        for step in ("baseline", "herald") if run % 2 == 1 else ("herald", "baseline"):
            console.print(f"run {run}: {step} …")
            if step == "baseline":
                base = baseline(run, event_obj)
            else:
                result = herald(run, event_obj)
        assert base is not None and result is not None
        pairs.append((base, result))
    return pairs


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def begin() -> None:
    """A SIGTERM to the bench unwinds like Ctrl-C, so every finally runs; say what was ignored."""
    signal.signal(signal.SIGTERM, _interrupt)
    if STRAY_ENV:
        console.print(f"[yellow]ignoring {', '.join(STRAY_ENV)} from the environment[/]")


def failed(exc: BaseException) -> int:
    """Say why the bench stopped early; its exit status."""
    if isinstance(exc, KeyboardInterrupt):
        console.print("[red]interrupted[/]")
        return 130
    console.print(f"[red]benchmark failed:[/] {exc}")
    return 1


# --- command line --------------------------------------------------------------------------


def bench_parser(script: str, doc: str | None, recipients: int) -> argparse.ArgumentParser:
    """A parser with ``--recipients``, ``--processes`` and ``--threads``."""
    parser = argparse.ArgumentParser(prog=f"python bench/{script}.py", description=(doc or "").split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=recipients)
    parser.add_argument("--processes", type=int, default=2, help="dramatiq worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process")
    return parser


def herald_default(name: str) -> Any:
    """The default of one of herald's settings."""
    from worker.config import Settings

    return Settings.model_fields[name].default


def add_repeat(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="pairs of runs; baseline and herald alternate order, the median ratio is reported",
    )


def add_sizes(parser: argparse.ArgumentParser, default: str) -> None:
    """``--batch-size`` and ``--page-size``; ``default`` introduces the default in the help."""
    for name in ("batch_size", "page_size"):
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=herald_default(name),
            help=f"HERALD_{name.upper()} ({default}%(default)s)",
        )


def add_run_options(parser: argparse.ArgumentParser, script: str, *, warmup: str, profile: str) -> None:
    """``--warmup``, ``--timeout``, ``--json``, ``--database-url``, ``--broker-url``, ``--profile``
    and ``--keep-failed``; ``warmup`` and ``profile`` are their help."""
    parser.add_argument("--warmup", type=int, default=20, help=warmup)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one herald run may take")
    parser.add_argument(
        "--json", type=Path, default=None, help=f"write results here (default bench/out/{script}-<time>.json)"
    )
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp data dir")
    parser.add_argument("--broker-url", default="", help="default: embedded Redis in a temp data dir")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR", help=profile)
    parser.add_argument("--keep-failed", action="store_true", help="keep the data dir of a failed run")


def parse_checked(
    parser: argparse.ArgumentParser, argv: list[str] | None, at_least_one: tuple[str, ...]
) -> argparse.Namespace:
    """Parse ``argv``; every option in ``at_least_one`` must be 1 or more."""
    args = parser.parse_args(argv)
    for name in at_least_one:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


# --- reporting -----------------------------------------------------------------------------


class Measured(Protocol):
    seconds: float
    cpu: dict[str, float]


@dataclass(kw_only=True)
class HeraldResult:
    """What every herald run measures; each benchmark adds its own figures."""

    recipients: int
    seconds: float  # publish → every delivery terminal
    rss: RssPeaks  # the dramatiq processes
    settings: dict[str, Any]
    cpu: dict[str, float] = field(default_factory=dict)
    marks: dict[str, float] = field(default_factory=dict)


def print_timeline(base: Measured, herald: HeraldResult) -> None:
    """The timeline and the CPU seconds of a pair of runs."""
    console.print("timeline (last run, s after publish): " + ", ".join(f"{k} {v:.2f}" for k, v in herald.marks.items()))
    console.print(
        "CPU seconds (last run; 2 cores = 2 s per s): baseline "
        + ", ".join(f"{k} {v:.1f}" for k, v in base.cpu.items())
        + f" in {base.seconds:.1f} s; herald "
        + ", ".join(f"{k} {v:.1f}" for k, v in herald.cpu.items())
        + f" in {herald.seconds:.1f} s"
    )


def rss_json(rss: RssPeaks) -> dict[str, Any]:
    return {
        "rss_samples": rss.samples,
        "rss_peak_per_process_mb": {
            str(pid): {"role": role, "mb": round(mb(peak), 1)} for pid, (role, peak) in rss.per_process.items()
        },
        "rss_peak_worker_mb": round(mb(rss.worker_peak), 1),
        "rss_peak_total_mb": round(mb(rss.total_peak), 1),
    }


def write_json(
    args: argparse.Namespace, script: str, summary: dict[str, Any], runs: list[Any], totals: dict[str, Any]
) -> None:
    """The results, to ``--json`` or ``bench/out/<script>-<time>.json``."""
    path = args.json or (BENCH_DIR / "out" / f"{script}-{datetime.now():%Y%m%d-%H%M%S}.json")
    data = {
        "when": datetime.now(UTC).isoformat(),
        "host": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"},
        **totals,
        "summary": summary,
        "runs": runs,
    }
    data["args"]["database_url"] = safe_url(args.database_url) if args.database_url else ""
    data["args"]["broker_url"] = safe_url(args.broker_url) if args.broker_url else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    console.print(f"results written to {path}")
