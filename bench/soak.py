#!/usr/bin/env python
"""Soak: herald under a mixed stream of events with faults injected on a cycle, for a given
duration; then, once everything has settled, the chaos suite's figures over all of it.

    python bench/soak.py [--duration 600] [--processes 2] [--threads 4] [--events-per-minute 30]

Everything runs for real: worker processes (``dramatiq worker.app``), ``herald scheduler``,
``herald serve`` (Twilio's callbacks), a Redis of the run's own (append-only file, fsync
always) unless ``--broker-url``, SQLite or ``--database-url``, and one child process with the
SMTP sink and the Twilio sandbox. The stream mixes security incidents of every severity (and
updates), account notices, maintenance and outage notices and policy changes (minor and
substantial, each on the durable schedule), to recipients with and without phones, a few of
whose mailboxes refuse mail. Every ``--fault-every`` seconds the next fault of the cycle
starts: the SMTP server down for ``--smtp-outage`` s (60 by default, the issue's figure),
the Twilio peer answering 30 % 429, 10 % 500 and 5 % unreadable 2xx after 100 ms for
``--twilio-faults`` s, the worker processes SIGKILLed and started again, Redis SIGKILLed and
restarted (own Redis only). Then the stream stops, the faults end, and the soak waits up to
``--recovery`` s for every recipient and delivery to be terminal.

Printed at the end (and written to bench/out/soak-<time>.json): events, recipients,
terminal, lost (must be 0), duplicates at the sinks and the bound (batches in flight at the
faults × HERALD_RECORD_EVERY), the faults injected and the throughput. Exit status: 0 when
lost is 0 and duplicates are within the bound, 3 when not, 1 when the run itself failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common; spawned children inherit sys.path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # faults: the chaos suite's figures

import _common as common  # importing it drops stray HERALD_* variables
from _common import BenchError, ChildProcess, console, ignore_interrupts, serve_commands

common.strip_env("TWILIO_")  # the twilio client would rewrite every URL away from the sandbox

ACCOUNT_SID = "AC" + "5a" * 16
AUTH_TOKEN = "soak-auth-token"
#: A share of recipients whose mailbox refuses mail for good (they fall back, or are covered).
BOUNCING = 0.03
#: A share of recipients with a mobile number.
WITH_PHONE = 0.6
TWILIO_FAULTS = {"rate_429": 0.3, "rate_500": 0.1, "rate_unreadable": 0.05, "latency_s": 0.1}

ROUTING = """\
version: 1
locales: [en, zh-CN]
announce_all_above: 1000000
routes:
  - name: serious-incident
    match: {type: security_incident, severity: [critical, high]}
    stages:
      - {channels: [email, insite, sms], wait: 30s}
      - {channels: [phone], wait: 30s}
    announce: true
  - name: other-incident
    match: {type: security_incident}
    stages:
      - {channels: [email, insite], wait: 30s}
      - {channels: [sms], wait: 30s}
    announce: true
  - name: account
    match: {type: account_notice}
    stages: [{channels: [email, insite, sms], wait: 30s}]
  - name: service
    match: {type: service_notice}
    stages: [{channels: [email, insite], wait: 30s}]
    announce: true
  - name: policy
    match: {type: policy_change}
    stages: [{channels: [email, insite], wait: 30s}]
    announce: true
"""


# --- the peers: SMTP sink and Twilio sandbox, in a process of their own --------------------


class _Peers:
    """The SMTP sink (counting Message-IDs) and the Twilio sandbox, started and stopped together."""

    def __init__(self, host: str, smtp_port: int) -> None:
        from worker.sandbox.smtp_sink import SmtpSink
        from worker.sandbox.twilio import TwilioSandbox

        self.emails: Counter[str] = Counter()
        self.sink = SmtpSink(host, smtp_port, store=False, on_message=lambda m: self.emails.update([m.message_id]))
        self.sink.refuse(r"^bounce", code=550, text="5.1.1 <{address}>: mailbox unavailable")
        self.sandbox = TwilioSandbox(host, 0, account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN, seed=7)
        self.port = smtp_port

    def start(self) -> None:
        self.sink.start()
        self.sandbox.start()
        self.port = self.sink.port

    def stop(self) -> None:
        self.sandbox.stop()
        self.sink.stop()

    def answer(self, command: str) -> Any:
        if command == "twilio-url":
            return self.sandbox.url
        if command == "smtp-down":
            self.sink.stop()
            return "down"
        if command == "smtp-up":
            self.sink.start()
            return "up"
        if command.startswith("faults:"):
            self.sandbox.clear_faults()
            return self.sandbox.set_faults(**json.loads(command.removeprefix("faults:"))).to_dict()
        if command == "received":
            digest = _digest
            return {
                "emails": dict(self.emails),
                "texts": list(Counter((m.to, digest(m.body)) for m in self.sandbox.messages).items()),
                "calls": list(Counter((c.to, digest(c.twiml or c.url or "")) for c in self.sandbox.calls).items()),
                "requests": len(self.sandbox.requests),
                "refused": sum(1 for r in self.sandbox.requests if r.status_code in (429, 500)),
                "unreadable": sum(1 for r in self.sandbox.requests if getattr(r, "unreadable", False)),
            }
        if command == "stop":
            return ("stopped", len(self.emails))
        return None


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:16]


def _serve_peers(conn: Connection, host: str, smtp_port: int) -> None:
    ignore_interrupts(conn)
    peers = _Peers(host, smtp_port)
    serve_commands(conn, peers, peers.answer)


class PeersProcess(ChildProcess):
    """The SMTP sink and the Twilio sandbox in a spawned process; faults and counts over a pipe."""

    label = "the SMTP sink and Twilio sandbox"

    def target(self) -> tuple[Callable[..., None], tuple[Any, ...], str]:
        return _serve_peers, (self.port,), "soak-peers"


# --- the stream of events ------------------------------------------------------------------


@dataclass
class Stream:
    """Events of every kind, each to recipients of its own (so that duplicates show per key)."""

    rng: random.Random
    max_recipients: int
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    people: int = 0
    events: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    last_incident: str | None = None

    def _person(self) -> dict[str, str]:
        n = self.people
        self.people += 1
        person = {
            "user_id": f"soak-{self.tag}-{n:07d}",
            "name": f"Person {n}",
            "email": f"{'bounce' if self.rng.random() < BOUNCING else 'p'}{n}.{self.tag}@example.com",
            "locale": "zh-CN" if n % 2 else "en",
        }
        if self.rng.random() < WITH_PHONE:
            person["phone"] = f"+86139{n:08d}" if n % 2 else f"+1415{200 + (n // 10000) % 800:03d}{n % 10000:04d}"
        return person

    def _audience(self, low: int) -> list[dict[str, str]]:
        return [self._person() for _ in range(self.rng.randint(low, max(low, self.max_recipients)))]

    def next(self) -> tuple[dict[str, Any], int]:
        """The next event and how many people it is addressed to."""
        self.events += 1
        now = datetime.now(UTC)
        kind = self.rng.choices(
            ["security_incident", "account_notice", "service_notice", "policy_change"], [4, 3, 2, 1]
        )[0]
        self.kinds[kind] += 1
        event_id = f"soak-{self.tag}-{self.events:05d}"
        if kind == "account_notice":
            person = self._person()
            data: dict[str, Any] = {
                "user_id": person["user_id"],
                "action": self.rng.choice(["suspended", "cancelled", "restored"]),
                "reason": "Repeated violations of section 4 of the Terms of Service.",
                "effective_at": now.isoformat(),
                "recipient": person,
            }
            count = 1
        elif kind == "service_notice":
            audience = self._audience(20)
            data = {
                "kind": self.rng.choice(["maintenance", "outage"]),
                "title": "Database upgrade",
                "starts_at": (now + timedelta(days=2)).isoformat(),
                "ends_at": (now + timedelta(days=2, hours=2)).isoformat(),
                "services": ["Console", "Public API"],
                "audience": {"recipients": audience},
            }
            count = len(audience)
        elif kind == "policy_change":
            audience = self._audience(10)
            substantial = self.rng.random() < 0.5
            publish_at = now + timedelta(seconds=self.rng.randint(5, 30))
            data = {
                "document": f"soak-terms-{self.events}",  # one document each: a new version would replace it
                "version": "1",
                "title": "Shorter retention of support tickets",
                "summary_of_changes": "We now keep support tickets for 2 years instead of 5.",
                "url": "https://www.example.com/legal/terms",
                "substantial": substantial,
                "publish_at": publish_at.isoformat(),
                "effective_at": (
                    publish_at + timedelta(days=7, hours=1) if substantial else now + timedelta(days=1)
                ).isoformat(),
                "audience": {"recipients": audience},
            }
            count = len(audience)
        else:
            audience = self._audience(20)
            update = self.last_incident is not None and self.rng.random() < 0.2
            incident_id = self.last_incident if update and self.last_incident else f"INC-{self.tag}-{self.events}"
            self.last_incident = incident_id
            data = {
                "incident_id": incident_id,
                "severity": self.rng.choice(["low", "medium", "high", "critical"]),
                "status": "monitoring" if update else "investigating",
                "title": "Credential stuffing against the sign-in page",
                "detected_at": (now - timedelta(hours=1)).isoformat(),
                "situation": "Attackers tried leaked passwords against many accounts.",
                "impact": "Some accounts may have been signed into.",
                "measures": "We blocked the attacking addresses and reset affected sessions.",
                "advice": "Use a unique password and turn on two-step sign-in.",
                "remedies": "Contact support to review your account activity.",
                "audience": {"recipients": audience},
            }
            count = len(audience)
        event = {
            "event_id": event_id,
            "type": kind,
            "occurred_at": now.isoformat(),
            "source": "herald-soak",
            "data": data,
        }
        return event, count


# --- the faults ----------------------------------------------------------------------------


@dataclass
class Fault:
    """One fault injected: what, when (s after the start), for how long, batches in flight."""

    kind: str
    at: float
    seconds: float
    in_flight: int


class FaultCycle:
    """The fault cycle: each ``every`` s the next kind starts; outages end by themselves."""

    def __init__(self, args: argparse.Namespace, run: Any, peers: PeersProcess, redis: Any) -> None:
        self.args = args
        self.run = run
        self.peers = peers
        self.redis = redis
        self.cycle = ["smtp-down", "twilio-faults", "worker-kill"] + (["redis-restart"] if redis is not None else [])
        self.done: list[Fault] = []
        self.ends: dict[str, float] = {}
        self.next_at = args.fault_every / 2

    def tick(self, elapsed: float) -> None:
        """Start the next fault when due and end the outages whose time is up."""
        for kind, end in list(self.ends.items()):
            if elapsed >= end:
                self._end(kind)
        if elapsed >= self.next_at:
            self.next_at += self.args.fault_every
            self._start(self.cycle[len(self.done) % len(self.cycle)], elapsed)

    def end_all(self) -> None:
        for kind in list(self.ends):
            self._end(kind)

    def _start(self, kind: str, elapsed: float) -> None:
        seconds = 0.0
        if kind == "smtp-down" and kind not in self.ends:
            self.peers.ask("smtp-down")
            seconds = self.args.smtp_outage
        elif kind == "twilio-faults" and kind not in self.ends:
            self.peers.ask("faults:" + json.dumps(TWILIO_FAULTS))
            seconds = self.args.twilio_faults
        elif kind == "worker-kill":
            self.run.kill_workers()
            self.run.start_workers(processes=self.args.processes, threads=self.args.threads)
        elif kind == "redis-restart":
            self.redis.restart(down_s=2.0)
            seconds = 2.0
        else:
            return
        in_flight = self.run.fault(kind)  # counted after the fault froze what was in flight
        if kind in ("smtp-down", "twilio-faults"):
            self.ends[kind] = elapsed + seconds
        self.done.append(Fault(kind, round(elapsed, 1), seconds, in_flight))
        console.print(
            f"{elapsed:6.0f} s  fault: {kind}"
            + (f" for {seconds:g} s" if seconds else "")
            + f" ({in_flight} batches in flight)"
        )

    def _end(self, kind: str) -> None:
        self.ends.pop(kind, None)
        self.peers.ask("smtp-up" if kind == "smtp-down" else "faults:{}")


# --- the run -------------------------------------------------------------------------------


def soak_settings(
    args: argparse.Namespace, data_dir: Path, broker_url: str, smtp_port: int, twilio_url: str, http_port: int
) -> Any:
    """herald's settings for the soak: production's shape, with waits short enough to recover in minutes."""
    from faults import QUICK

    from worker.config import Settings

    routing = data_dir / "routing.yaml"
    routing.write_text(ROUTING, encoding="utf-8")
    return Settings(
        **{
            **QUICK,
            "broker_heartbeat_timeout_ms": 10_000,
            "sweep_interval_s": 2.0,
            "stuck_after_s": 30.0,
            "retry_min_backoff_ms": 500,
            "retry_max_backoff_ms": 5_000,  # 20 retries span well over a 60 s outage
            "confirmation_grace_s": 15.0,
            "batch_size": 50,
            "record_every": 10,
        },
        data_dir=data_dir,
        broker_url=broker_url,
        database_url=args.database_url,
        broker_namespace=f"herald-soak-{uuid.uuid4().hex[:8]}",
        routing_file=routing,
        channels=("email", "insite", "sms", "phone"),
        smtp_port=smtp_port,
        twilio_account_sid=ACCOUNT_SID,
        twilio_auth_token=AUTH_TOKEN,
        twilio_base_url=twilio_url,
        public_url=f"http://127.0.0.1:{http_port}",
        http_port=http_port,
        sms_rate_per_second=200.0,
        phone_rate_per_second=100.0,
        announcements_dir=data_dir / "site",
        scheduler_interval_s=1.0,
        scheduler_lease_s=10.0,
    )


def soak(args: argparse.Namespace) -> dict[str, Any]:
    from faults import ChaosRun, OwnRedis, Received, wait_settled
    from sqlalchemy import func, select

    from worker.core.clock import as_utc
    from worker.core.statuses import TERMINAL
    from worker.service.serving import free_port
    from worker.store.engine import make_engine, migrate
    from worker.store.outcomes import outcome_counts
    from worker.store.schema import deliveries

    data_dir = Path(tempfile.mkdtemp(prefix="herald-soak-"))
    redis = None if args.broker_url else OwnRedis(data_dir / "redis").start()
    peers = PeersProcess("127.0.0.1", 0)
    run: ChaosRun | None = None
    ok = False
    try:
        peers.start()
        twilio_url = str(peers.ask("twilio-url"))
        settings = soak_settings(args, data_dir, args.broker_url or redis.url, peers.port, twilio_url, free_port())  # type: ignore[union-attr]
        engine = make_engine(settings.resolved_database_url)
        migrate(engine)
        engine.dispose()
        run = ChaosRun(settings, data_dir)
        run.start_herald("serve")
        run.start_herald("scheduler")
        run.start_workers(processes=args.processes, threads=args.threads)
        run.wait_ready(timeout=120)
        console.print(f"soak: {args.duration:g} s, data in {data_dir}, log {run.log}")

        stream = Stream(random.Random(args.seed), args.max_recipients)
        faults = FaultCycle(args, run, peers, redis)
        event_ids: list[str] = []
        expected = 0
        backlog: list[tuple[dict[str, Any], int]] = []
        gap = 60.0 / args.events_per_minute
        started = time.monotonic()
        started_at = datetime.now(UTC)
        next_event = 0.0
        while (elapsed := time.monotonic() - started) < args.duration:
            _check(run)
            faults.tick(elapsed)
            if elapsed >= next_event:
                next_event += stream.rng.expovariate(1.0 / gap)
                backlog.append(stream.next())
            while backlog:
                event, count = backlog[0]
                try:
                    run.publish(event)
                except Exception as exc:  # Redis is restarting: a producer tries again
                    console.print(f"[yellow]{elapsed:6.0f} s  publish deferred: {type(exc).__name__}[/]")
                    break
                backlog.pop(0)
                event_ids.append(event["event_id"])
                expected += count
            time.sleep(0.2)
        stream_s = time.monotonic() - started
        faults.end_all()
        console.print(
            f"stream over: {len(event_ids)} events to {expected} recipients in {stream_s:.0f} s; waiting for recovery …"
        )
        settled = wait_settled(run.engine, event_ids, args.recovery, check=lambda: _check(run))
        total_s = time.monotonic() - started

        got = peers.ask("received")
        received = Received(
            emails=Counter(got["emails"]),
            texts=Counter({tuple(k): n for k, n in got["texts"]}),
            calls=Counter({tuple(k): n for k, n in got["calls"]}),
        )
        result = run.figures(event_ids, expected=expected, received=received)
        terminal = [s.value for s in TERMINAL]
        with run.engine.connect() as conn:
            counts = outcome_counts(conn)
            last = conn.execute(select(func.max(deliveries.c.updated_at)).where(deliveries.c.status.in_(terminal)))
            last_terminal = as_utc(last.scalar_one() or started_at)
        done = sum(n for (_, status), n in counts.items() if status in terminal)
        busy_s = max((last_terminal - started_at).total_seconds(), 1.0)
        ok = True
        return {
            "settled": settled,
            "events": len(event_ids),
            "kinds": dict(stream.kinds),
            "figures": {
                "recipients": result.recipients,
                "terminal": result.terminal,
                "lost": result.lost,
                "duplicates": result.duplicates,
                "bound": result.bound,
                "lost_examples": list(result.why),
            },
            "line": result.line(
                f"{args.duration:g}s",
                "postgresql" if args.database_url.startswith("postgresql") else "sqlite",
                f"{len(event_ids)} events, {len(faults.done)} faults",
                suite="soak",
            ),
            "faults": [vars(f) for f in faults.done],
            "twilio": {k: got[k] for k in ("requests", "refused", "unreadable")},
            "deliveries": {f"{c}/{s}": n for (c, s), n in sorted(counts.items())},
            "seconds": {"stream": round(stream_s, 1), "last_terminal": round(busy_s, 1), "waited": round(total_s, 1)},
            "throughput": {
                "events_per_s": len(event_ids) / stream_s,
                "recipients_per_s": expected / stream_s,
                "terminal_deliveries_per_s": done / busy_s,
            },
        }
    finally:
        if run is not None:
            run.close()
        peers.stop()
        if redis is not None:
            redis.stop()
        if args.broker_url and run is not None:
            common.drop_namespace(args.broker_url, run.settings.broker_namespace)
        if ok or not args.keep_failed:
            shutil.rmtree(data_dir, ignore_errors=True)
        else:
            console.print(f"[yellow]kept {data_dir}[/]")


def _check(run: Any) -> None:
    try:
        run.check()
    except AssertionError as exc:
        raise BenchError(str(exc)) from None


def report(summary: dict[str, Any]) -> bool:
    """Print the figures; whether both invariants hold."""
    f = summary["figures"]
    console.print(f"[bold]{summary['line']}[/]")
    console.print(f"events {summary['events']} ({', '.join(f'{k} {n}' for k, n in sorted(summary['kinds'].items()))})")
    faults = Counter(x["kind"] for x in summary["faults"])
    console.print("faults injected: " + (", ".join(f"{k} ×{n}" for k, n in faults.items()) or "none"))
    t = summary["twilio"]
    console.print(f"Twilio creates {t['requests']}: {t['refused']} answered 429/500, {t['unreadable']} unreadable 2xx")
    th = summary["throughput"]
    console.print(
        f"throughput: {th['events_per_s']:.2f} events/s, {th['recipients_per_s']:.1f} recipients/s offered; "
        f"{th['terminal_deliveries_per_s']:.1f} terminal deliveries/s from the start to the last one "
        f"({summary['seconds']['stream']:.0f} s stream, "
        f"last delivery terminal at {summary['seconds']['last_terminal']:.0f} s; "
        + ("settled" if summary["settled"] else f"[red]not settled[/] after {summary['seconds']['waited']:.0f} s")
        + ")"
    )
    held = f["lost"] == 0 and f["duplicates"] <= f["bound"]
    verdict = "[green]held[/]" if held else "[red]NOT held[/]"
    console.print(f"nothing lost, duplicates within the bound: {verdict}")
    if f["lost_examples"]:
        console.print(f"lost, e.g.: {f['lost_examples']}")
    return held


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python bench/soak.py", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--duration", type=float, default=600.0, help="seconds of stream and faults (default %(default)g)"
    )
    parser.add_argument("--processes", type=int, default=2, help="dramatiq worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process")
    parser.add_argument("--events-per-minute", type=float, default=30.0, help="mean rate of the stream")
    parser.add_argument("--max-recipients", type=int, default=200, help="largest audience of one event")
    parser.add_argument("--fault-every", type=float, default=90.0, help="seconds between the starts of two faults")
    parser.add_argument("--smtp-outage", type=float, default=60.0, help="seconds the SMTP server stays down")
    parser.add_argument("--twilio-faults", type=float, default=60.0, help="seconds the Twilio peer misbehaves")
    parser.add_argument("--recovery", type=float, default=300.0, help="seconds to wait for everything to settle")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp data dir")
    parser.add_argument("--broker-url", default="", help="default: a Redis of the soak's own, which it restarts")
    parser.add_argument("--json", type=Path, default=None, help="default bench/out/soak-<time>.json")
    parser.add_argument("--keep-failed", action="store_true", help="keep the data dir of a failed run")
    args = parser.parse_args(argv)
    for name in ("duration", "processes", "threads", "events_per_minute", "max_recipients", "fault_every"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be more than 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    common.begin()
    try:
        summary = soak(args)
    except (KeyboardInterrupt, BenchError, RuntimeError) as exc:
        return common.failed(exc)
    held = report(summary)
    common.write_json(args, "soak", summary, [], {})
    return 0 if held else 3


if __name__ == "__main__":
    raise SystemExit(main())
