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
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from email.utils import formataddr, formatdate, parseaddr
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, _sink; spawned children inherit sys.path

import _common as common  # importing it drops stray HERALD_* variables
from _common import BenchError, console, mb, own_cpu, tree_cpu
from _sink import SinkProcess
from rich.table import Table

#: Targets from the issue.
TARGET_RATIO = 0.5
TARGET_RSS_MB = 300.0


# --- the event -----------------------------------------------------------------------------


def make_event(count: int, tag: str) -> dict[str, Any]:
    """A security incident addressed inline to ``count`` people with valid addresses; every
    other one reads Chinese (zh-CN)."""
    return common.make_event(tag, common.make_recipients(count, tag, lambda i: {"email": f"{tag}.{i}@example.com"}))


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
    from worker.delivery.rendering import Renderer
    from worker.intake.events import parse_event

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


def run_baseline(
    run: int, sink: SinkProcess, connections: int, event_obj: dict[str, Any], from_header: str
) -> BaselineResult:
    """Send every recipient's email with a bare aiosmtplib loop; time the sending only.

    Raises:
        BenchError: not every message arrived.
    """
    jobs = baseline_jobs(event_obj, from_header)
    envelope_from = parseaddr(from_header)[1]
    before = sink.count()
    cpu_before = (own_cpu(), tree_cpu(sink.pid))
    errors, seconds = asyncio.run(_baseline(sink.host, sink.port, connections, envelope_from, jobs))
    cpu = {"client": own_cpu() - cpu_before[0], "sink": tree_cpu(sink.pid) - cpu_before[1]}
    received = sink.count() - before
    if received + errors != len(jobs):
        # sendmail returns after the 250 reply, so the sink has counted everything by now
        time.sleep(0.5)
        received = sink.count() - before
    result = BaselineResult(len(jobs), received, errors, connections, seconds, cpu)
    console.print(f"run {run}: baseline {result.rate:,.0f} msg/s ({received:,} in {seconds:.2f} s)")
    if errors or received != result.messages:
        raise BenchError(f"baseline: {errors} errors, {received} of {result.messages} received")
    return result


# --- the herald run ------------------------------------------------------------------------


@dataclass(kw_only=True)
class HeraldResult(common.HeraldResult):
    emails_received: int
    email_seconds: float
    outcomes: dict[str, dict[str, int]]
    letters: int
    smtp_sessions: int

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


def _wait_terminal(
    herald: common.HeraldRun, event: dict[str, Any], started: float, timeout: float, sink: SinkProcess, sink_before: int
) -> dict[str, float]:
    """Poll until the event's fan-out is done and every delivery is terminal.

    Returns when things happened, in seconds after ``started``: ``accepted`` (ingest stored the
    event), ``first_email`` (the sink got one), ``fanout_done``, ``last_email`` (the sink had them
    all) and ``done`` (every delivery terminal). Sink marks are polled every 50 ms, the
    database every 200 ms.
    """
    expected_emails = len(event["data"]["audience"]["recipients"])
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
            if herald.poll(event["event_id"], marks, now=now, started=started):
                marks.setdefault("last_email", marks["done"])
                return marks
        herald.check()
        if now - started > timeout:
            raise BenchError(f"not every delivery was terminal after {timeout:.0f} s:\n{common.tail(herald.log)}")
        time.sleep(0.05)


def run_herald(args: argparse.Namespace, sink: SinkProcess, event_obj: dict[str, Any], run: int) -> HeraldResult:
    """One herald run on a fresh data dir and fresh worker processes."""
    from sqlalchemy import func, select

    from worker.config import Settings
    from worker.store.inbox import letter_count
    from worker.store.outcomes import outcome_counts
    from worker.store.schema import deliveries

    with common.HeraldRun(args, "herald-bench-", clock=time.perf_counter) as herald:
        warm = make_event(args.warmup, f"w{run}")
        settings = Settings(
            data_dir=herald.data_dir,
            broker_url=args.broker_url,
            database_url=args.database_url,
            broker_namespace=herald.namespace,
            smtp_host=sink.host,
            smtp_port=sink.port,
            smtp_connections=args.smtp_connections,
            batch_size=args.batch_size,
            page_size=args.page_size,
            max_event_bytes=max(1_048_576, common.payload_bytes(event_obj) * 2),
        )
        reader = herald.open(settings)
        workers = herald.start_workers(common.settings_env(settings))
        sampler = herald.sample(workers.pid)
        herald.wait_ready(timeout=120)

        # Warm-up: a small event through every stage, so imports, template caches, the first
        # SMTP connections and SQLite's WAL exist before the clock starts.
        before = sink.count()
        herald.publish(warm, lambda started: _wait_terminal(herald, warm, started, 120, sink, before))
        time.sleep(1.0)

        event = event_obj
        recipients = len(event["data"]["audience"]["recipients"])
        if args.profile is not None:
            herald.profile(
                workers.pid, args.profile / f"herald-run{run}-{datetime.now():%H%M%S}.txt", subprocesses=True
            )
            time.sleep(1.0)  # let it attach before the clock starts
        before, sessions_before = sink.counts()
        marks, cpu = herald.timed(
            event,
            {"workers": workers.pid, "sink": sink.pid},
            lambda started: _wait_terminal(herald, event, started, args.timeout, sink, before),
        )
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
        result = HeraldResult(
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
            settings=common.run_settings(args, settings, smtp_connections_per_thread=settings.smtp_connections),
        )
    console.print(
        f"run {run}: herald {result.email_rate:,.0f} emails/s, {result.total_rate:,.0f} deliveries/s "
        f"({result.seconds:.2f} s)"
    )
    return result


# --- reporting -----------------------------------------------------------------------------


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
        "peak_worker_rss_mb": mb(peak),
        "peak_total_rss_mb": mb(max(total_peaks)),
        "target_ratio": TARGET_RATIO,
        "target_rss_mb": TARGET_RSS_MB,
        "ratio_met": ratio >= TARGET_RATIO,
        "rss_met": mb(peak) < TARGET_RSS_MB,
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
            f"{mb(h.rss.worker_peak):.0f}",
            f"{mb(h.rss.total_peak):.0f}",
        )
    console.print(table)

    rss_table = Table(title="peak RSS per process (last run)")
    rss_table.add_column("pid", justify="right")
    rss_table.add_column("role")
    rss_table.add_column("peak MB", justify="right")
    for pid, (role, rss) in sorted(pairs[-1][1].rss.per_process.items()):
        rss_table.add_row(str(pid), "dramatiq main" if role == "main" else "worker", f"{mb(rss):.0f}")
    console.print(rss_table)

    outcome = ", ".join(
        f"{ch}: " + " ".join(f"{s}={n:,}" for s, n in st.items()) for ch, st in pairs[-1][1].outcomes.items()
    )
    console.print(f"outcomes (last run): {outcome}; station letters: {pairs[-1][1].letters:,}")
    common.print_timeline(*pairs[-1])

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


def results(pairs: list[tuple[BaselineResult, HeraldResult]]) -> list[dict[str, Any]]:
    """Each pair of runs as JSON-able data."""
    return [
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
                **common.rss_json(h.rss),
                "settings": h.settings,
            },
        }
        for b, h in pairs
    ]


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.bench_parser("fanout", __doc__, recipients=10_000)
    parser.add_argument(
        "--smtp-connections",
        type=int,
        default=common.herald_default("smtp_connections"),
        help="HERALD_SMTP_CONNECTIONS, per worker thread (default: herald's, %(default)s); "
        "the baseline uses processes × threads × this many connections",
    )
    common.add_sizes(parser, "default: herald's, ")
    common.add_repeat(parser)
    common.add_run_options(
        parser,
        "fanout",
        warmup="recipients of the warm-up event",
        profile="record the worker processes with py-spy (pip install py-spy) during the "
        "measured run; collapsed stacks go to DIR (slows herald down a little)",
    )
    at_least_one = ("recipients", "processes", "threads", "smtp_connections", "repeat", "warmup")
    return common.parse_checked(parser, argv, at_least_one)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.begin()
    from worker.config import Settings

    from_header = Settings().smtp_from
    connections = args.processes * args.threads * args.smtp_connections
    console.print(
        f"event: {args.recipients:,} recipients, payload "
        f"{common.payload_bytes(make_event(args.recipients, 'r1')) / 1024:,.0f} KiB; "
        f"{connections} SMTP connections in total"
    )
    sink = SinkProcess("127.0.0.1", 0)
    try:
        sink.start()
        console.print(f"sink: pid {sink.pid}, port {sink.port}")
        pairs = common.run_pairs(
            args.repeat,
            lambda run: make_event(args.recipients, f"r{run}"),
            lambda run, event_obj: run_baseline(run, sink, connections, event_obj, from_header),
            lambda run, event_obj: run_herald(args, sink, event_obj, run),
        )
    except (KeyboardInterrupt, BenchError) as exc:
        return common.failed(exc)
    finally:
        sink.stop()

    summary = summarise(pairs, args)
    report(pairs, args, summary)
    common.write_json(args, "fanout", summary, results(pairs), {"total_smtp_connections": connections})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
