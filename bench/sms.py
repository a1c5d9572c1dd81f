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
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common; spawned children inherit sys.path

import _common as common  # importing it drops stray HERALD_* variables
from _common import BenchError, console, mb, own_cpu, tree_cpu
from rich.table import Table

# The Twilio client reads TWILIO_EDGE / TWILIO_REGION from the environment, which would rewrite
# every URL away from the sandbox.
common.strip_env("TWILIO_")

#: The ratio below which the brief asks for a profile.
REFERENCE_RATIO = 0.5
ACCOUNT_SID = "AC" + "be" * 16
AUTH_TOKEN = "bench-sms-auth-token"


# --- the event -----------------------------------------------------------------------------


def mobile_number(i: int) -> str:
    """A distinct valid mobile number per index: odd ones Chinese (China Mobile), even ones US."""
    if i % 2:
        return f"+86139{i:08d}"
    return f"+1415{200 + (i // 10000) % 800:03d}{i % 10000:04d}"


def make_sms_event(count: int, tag: str) -> dict[str, Any]:
    """fanout's security incident, addressed to ``count`` people with mobile numbers only;
    Chinese numbers read zh-CN, US numbers English."""
    return common.make_event(tag, common.make_recipients(count, tag, lambda i: {"phone": mobile_number(i)}))


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


class _Answers:
    """The sandbox process's answers to the bench: ``stats``, ``mark``, ``reset``, ``stop``."""

    def __init__(self, sandbox: Any) -> None:
        self.sandbox = sandbox
        self.tally = _Tally(sandbox)

    def __call__(self, command: str) -> Any:
        if command == "stats":
            return self.tally.update(self.sandbox)
        if command == "mark":
            self.tally = _Tally(self.sandbox)
            return "marked"
        if command == "reset":
            self.sandbox.reset()
            self.tally = _Tally(self.sandbox)
            return "reset"
        return "stopped" if command == "stop" else None


def _serve_sandbox(conn: Connection, host: str, callback_delay_s: float) -> None:
    common.ignore_interrupts(conn)
    import logging

    from worker.sandbox.twilio import TwilioSandbox

    # Failed callbacks are counted; thousands of warning lines would only slow the sandbox.
    logging.getLogger("worker.sandbox.twilio").setLevel(logging.ERROR)
    sandbox = TwilioSandbox(host, 0, account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, callback_delay_s=callback_delay_s)
    common.serve_commands(conn, sandbox, _Answers(sandbox))


class SandboxProcess(common.ChildProcess):
    """``worker.sandbox.twilio.TwilioSandbox`` in a spawned process; ``stats()`` reads its counters."""

    label = "the Twilio sandbox"
    start_timeout = 60.0
    stop_timeout = 10.0

    def __init__(self, host: str = "127.0.0.1", callback_delay_s: float = 0.01) -> None:
        super().__init__(host)
        self.callback_delay_s = callback_delay_s

    def target(self) -> tuple[Callable[..., None], tuple[Any, ...], str]:
        return _serve_sandbox, (self.callback_delay_s,), "bench-twilio-sandbox"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stats(self) -> SandboxStats:
        """Counts since the last ``mark()`` or ``reset()``."""
        return SandboxStats(**self.ask("stats"))

    def mark(self) -> None:
        """Start counting afresh (the records stay)."""
        self.ask("mark")

    def reset(self) -> None:
        """Forget every record and pending callback, and start counting afresh."""
        self.ask("reset")


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
    from worker.delivery.rendering import Renderer
    from worker.intake.events import parse_event

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
    run: int, sandbox: SandboxProcess, concurrency: int, event_obj: dict[str, Any], settings: Any, warmup: int
) -> BaselineResult:
    """Create every recipient's SMS with a bare twilio-client loop; time the creates only.

    Raises:
        BenchError: not every create was accepted.
    """
    jobs = baseline_jobs(event_obj, settings)
    warm = jobs[:warmup]
    sandbox.reset()
    cpu_before: dict[str, float] = {}

    def mark() -> None:
        sandbox.mark()
        cpu_before.update(client=own_cpu(), sandbox=tree_cpu(sandbox.pid))

    with warnings.catch_warnings():  # twilio's async client still uses aiohttp's BasicAuth
        warnings.simplefilter("ignore", DeprecationWarning)
        errors, seconds = asyncio.run(
            _baseline(sandbox.url, settings.twilio_from, settings.twilio_timeout_s, concurrency, jobs, warm, mark)
        )
    cpu = {
        "client": own_cpu() - cpu_before["client"],
        "sandbox": tree_cpu(sandbox.pid) - cpu_before["sandbox"],
    }
    stats = sandbox.stats()
    result = BaselineResult(len(jobs), errors, concurrency, seconds, stats, cpu)
    console.print(f"run {run}: baseline {result.rate:,.0f} creates/s ({stats.accepted:,} in {seconds:.2f} s)")
    if errors or stats.accepted != result.messages:
        raise BenchError(f"baseline: {errors} errors, {stats.accepted} of {result.messages} accepted")
    return result


# --- the herald run ------------------------------------------------------------------------


@dataclass(kw_only=True)
class HeraldResult(common.HeraldResult):
    create_seconds: float  # publish → the last create the sandbox accepted
    sandbox: SandboxStats
    outcomes: dict[str, int]
    serve_rss: int

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


def serve_command(port: int) -> list[str]:
    """``herald serve`` (the callback app) on ``port``."""
    return [
        sys.executable,
        "-c",
        "from worker.cli.commands import main; main()",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def _wait_healthy(serve: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        common.check_processes([("herald serve", serve, log)])
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"{url}/health", timeout=2) as response,
        ):
            if response.status == 200:
                return
        if time.monotonic() > deadline:
            raise BenchError(f"herald serve was not healthy after {timeout:.0f} s:\n{common.tail(log)}")
        time.sleep(0.1)


def _wait_terminal(
    herald: common.HeraldRun, event: dict[str, Any], started: float, timeout: float, sandbox: SandboxProcess
) -> dict[str, float]:
    """Poll until the event's fan-out is done and every delivery is terminal.

    Returns when things happened, in seconds after ``started``: ``accepted`` (ingest stored the
    event), ``first_create`` / ``last_create`` (the sandbox's own arrival times), ``fanout_done``,
    ``last_delivered_callback`` (the sandbox's "delivered" callback for the last message
    finished) and ``done`` (every delivery terminal in the database). The sandbox is polled every
    100 ms; the database every 250 ms, every 50 ms once the sandbox has had every callback answered.
    """
    expected = len(event["data"]["audience"]["recipients"])
    marks: dict[str, float] = {}
    next_db = 0.0
    while True:
        now = time.monotonic()
        stats = sandbox.stats()
        callbacks_done = stats.delivered + stats.refused >= expected
        if now >= next_db or callbacks_done:
            next_db = now + 0.25
            if herald.poll(event["event_id"], marks, now=now, started=started):
                break
        herald.check()
        if now - started > timeout:
            raise BenchError(
                f"not every delivery was terminal after {timeout:.0f} s (sandbox: {stats});\n"
                + "\n".join(f"{role}: {common.tail(log, 8)}" for role, _, log in herald.watched)
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
    from worker.service.serving import free_port
    from worker.store.outcomes import outcome_counts

    with common.HeraldRun(args, "herald-bench-sms-", clock=time.monotonic) as herald:
        serve_log = herald.data_dir / "serve.log"
        port = free_port()
        settings = bench_settings(args, sandbox, herald.data_dir, herald.namespace, port, event_obj)
        env = common.settings_env(settings)
        recipients = len(event_obj["data"]["audience"]["recipients"])
        warm = make_sms_event(args.warmup, f"w{run}")
        reader = herald.open(settings)
        serve = herald.spawn("herald serve", serve_command(port), env, serve_log)
        workers = herald.start_workers(env)
        herald.sample(workers.pid)
        herald.sample(serve.pid)
        _wait_healthy(serve, settings.public_url, serve_log)
        herald.wait_ready(timeout=120)

        # Warm-up: a small event through every stage (twilio imports, connections, templates,
        # the callback app's first requests) before the clock starts.
        sandbox.reset()
        herald.publish(warm, lambda started: _wait_terminal(herald, warm, started, 120, sandbox))
        time.sleep(1.0)
        sandbox.reset()

        if args.profile is not None:
            stamp = f"run{run}-{datetime.now():%H%M%S}"
            herald.profile(workers.pid, args.profile / f"workers-{stamp}.txt", subprocesses=True)
            herald.profile(serve.pid, args.profile / f"serve-{stamp}.txt", subprocesses=False)
            time.sleep(1.0)  # let py-spy attach before the clock starts
        marks, cpu = herald.timed(
            event_obj,
            {"workers": workers.pid, "serve": serve.pid, "sandbox": sandbox.pid},
            lambda started: _wait_terminal(herald, event_obj, started, args.timeout, sandbox),
        )
        stats = sandbox.stats()
        rss, serve_peaks = herald.stop_samplers()
        with reader.connect() as conn:
            outcomes = {status: n for (_, status), n in sorted(outcome_counts(conn, event_obj["event_id"]).items())}
        if sum(outcomes.values()) != recipients:
            raise BenchError(f"expected {recipients} deliveries, the ledger has {sum(outcomes.values())}")
        result = HeraldResult(
            recipients=recipients,
            seconds=marks["done"],
            create_seconds=marks.get("last_create", marks["done"]),
            sandbox=stats,
            outcomes=outcomes,
            rss=rss,
            serve_rss=max((peak for _, peak in serve_peaks.per_process.values()), default=0),
            cpu=cpu,
            marks=marks,
            settings=common.run_settings(
                args,
                settings,
                sms_concurrency_per_thread=sms_concurrency(),
                sms_rate_per_second=settings.sms_rate_per_second,
                callback_delay_s=args.callback_delay,
            ),
        )
    console.print(
        f"run {run}: herald {result.create_rate:,.0f} creates/s (last create at "
        f"{result.create_seconds:.2f} s), {result.delivery_rate:,.0f} delivered/s end to end "
        f"({result.seconds:.2f} s)"
    )
    return result


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
        channels=("insite", "sms"),
        routing_file=common.single_channel_routing(data_dir, "sms"),
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_base_url=sandbox.url,
        public_url=f"http://127.0.0.1:{port}",
        http_host="127.0.0.1",
        http_port=port,
        sms_rate_per_second=args.sms_rate,
        batch_size=args.batch_size,
        page_size=args.page_size,
        max_event_bytes=max(1_048_576, common.payload_bytes(event_obj) * 2),
    )


# --- reporting -----------------------------------------------------------------------------


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
        "peak_worker_rss_mb": mb(max(h.rss.worker_peak for _, h in pairs)),
        "peak_workers_total_rss_mb": mb(max(h.rss.total_peak for _, h in pairs)),
        "peak_serve_rss_mb": mb(max(h.serve_rss for _, h in pairs)),
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
            f"{mb(h.rss.worker_peak):.0f}",
            f"{mb(h.serve_rss):.0f}",
        )
    console.print(table)
    b, h = pairs[-1]
    console.print(f"outcomes (last run): {', '.join(f'{k}={v:,}' for k, v in h.outcomes.items())}")
    common.print_timeline(b, h)
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


def results(pairs: list[tuple[BaselineResult, HeraldResult]]) -> list[dict[str, Any]]:
    """Each pair of runs as JSON-able data."""
    return [
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
                **common.rss_json(h.rss),
                "rss_peak_serve_mb": round(mb(h.serve_rss), 1),
                "settings": h.settings,
            },
        }
        for b, h in pairs
    ]


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.bench_parser("sms", __doc__, recipients=2_000)
    common.add_repeat(parser)
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
    common.add_sizes(parser, "default ")
    common.add_run_options(
        parser,
        "sms",
        warmup="recipients of the warm-up event / baseline warm-up",
        profile="record the worker processes and herald serve with py-spy during the measured run; "
        "raw collapsed stacks go to DIR (slows herald down a little)",
    )
    args = common.parse_checked(parser, argv, ("recipients", "processes", "threads", "repeat", "warmup"))
    if args.sms_rate <= 0 or args.callback_delay < 0:
        parser.error("--sms-rate must be positive and --callback-delay not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.begin()
    concurrency = args.processes * args.threads * sms_concurrency()
    console.print(
        f"event: {args.recipients:,} recipients with mobile numbers, payload "
        f"{common.payload_bytes(make_sms_event(args.recipients, 'r1')) / 1024:,.0f} KiB; concurrency "
        f"{args.processes} processes × {args.threads} threads × {sms_concurrency()} (SmsChannel) = {concurrency}; "
        f"HERALD_SMS_RATE_PER_SECOND={args.sms_rate:g}"
    )

    def event_for(run: int) -> dict[str, Any]:
        event_obj = make_sms_event(args.recipients, f"r{run}")  # one event per run, shared by both sides
        check_numbers(event_obj)
        return event_obj

    def baseline(run: int, event_obj: dict[str, Any]) -> BaselineResult:
        settings = bench_settings(args, sandbox, Path(tempfile.gettempdir()), "unused", 1, event_obj)
        return run_baseline(run, sandbox, concurrency, event_obj, settings, args.warmup)

    sandbox = SandboxProcess("127.0.0.1", callback_delay_s=args.callback_delay)
    try:
        sandbox.start()
        console.print(f"Twilio sandbox: pid {sandbox.pid}, {sandbox.url}, callback delay {args.callback_delay} s")
        pairs = common.run_pairs(
            args.repeat, event_for, baseline, lambda run, event_obj: run_herald(args, sandbox, event_obj, run)
        )
    except (KeyboardInterrupt, BenchError) as exc:
        return common.failed(exc)
    finally:
        sandbox.stop()

    summary = summarise(pairs)
    report(pairs, summary)
    common.write_json(args, "sms", summary, results(pairs), {"total_concurrency": concurrency})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
