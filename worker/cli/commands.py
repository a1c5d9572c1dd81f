"""The ``herald`` command line (Typer + Rich).

Exit codes: 0 done; 1 an operational failure (broker or database unreachable, a timeout);
2 invalid input (the event, a file, an option). Errors are one line on stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from worker.config import Settings, get_settings
from worker.core.errors import BrokerUnavailable, ConfigurationError, HeraldError, InvalidEvent
from worker.intake.events import PolicyChange

app = typer.Typer(
    name="herald",
    help="Keeps the company's written promises to its users: notices by email, SMS, phone and station letter.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
events_app = typer.Typer(help="Look at events herald received.", no_args_is_help=True)
recipients_app = typer.Typer(help="Manage the recipients table.", no_args_is_help=True)
routing_app = typer.Typer(help="The routing policy: channels, fallback chains, announcements.", no_args_is_help=True)
schedule_app = typer.Typer(help="The durable schedule of policy-change notices.", no_args_is_help=True)
announcements_app = typer.Typer(help="The public announcements.", no_args_is_help=True)
app.add_typer(events_app, name="events")
app.add_typer(recipients_app, name="recipients")
app.add_typer(routing_app, name="routing")
app.add_typer(announcements_app, name="announcements")
app.add_typer(schedule_app, name="schedule")

out = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line error and exit with ``code``."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _settings() -> Settings:
    try:
        return get_settings()
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        fail(f"bad configuration: {' '.join(str(exc).split())}", 2)


def _engine(settings: Settings, migrate: bool = True):  # type: ignore[no-untyped-def]
    from worker.store.engine import make_engine
    from worker.store.engine import migrate as run_migrations

    try:
        engine = make_engine(settings.resolved_database_url)
        if migrate:
            run_migrations(engine)
    except ConfigurationError as exc:
        fail(str(exc), 2)
    except Exception as exc:  # a database that cannot be reached surfaces as many driver errors
        fail(f"cannot open the database: {' '.join(str(exc).split())[:300]}")
    return engine


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (the worker and the demo do this themselves)."""
    settings = _settings()
    _engine(settings)
    out.print("database schema is current")


@app.command()
def worker(
    processes: Annotated[int, typer.Option("--processes", "-p", min=1, help="Worker processes.")] = 2,
    threads: Annotated[int, typer.Option("--threads", "-t", min=1, help="Threads per process.")] = 4,
    queues: Annotated[list[str] | None, typer.Option("--queue", "-Q", help="Only these queues.")] = None,
) -> None:
    """Run dramatiq workers for every herald queue until interrupted."""
    settings = _settings()
    _engine(settings)
    from worker.actors import check_wiring
    from worker.broker import worker_command
    from worker.runtime import Runtime

    # The workers check this too, but a bad routing file or template is clearer said once, here.
    runtime = Runtime(settings)
    try:
        check_wiring(settings, runtime)
    finally:
        runtime.close()

    args = worker_command(processes, threads, queues)
    # dramatiq's own supervisor takes over this process: signals, restarts and logs are its job.
    os.execv(sys.executable, args)


@app.command()
def send(
    file: Annotated[str, typer.Argument(help="A JSON event file, or - for standard input.")],
) -> None:
    """Validate one event and put it on the ingest queue; exit 2 with the reason if it is invalid."""
    from worker.broker import build_broker, ingest_message, publish
    from worker.intake.events import parse_event

    settings = _settings()
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        fail(f"cannot read {file}: {exc.strerror}", 2)
    try:
        event = parse_event(raw, max_bytes=settings.max_event_bytes, rules=settings.notice_rules)
    except InvalidEvent as exc:
        fail(f"invalid event: {exc.reason}", 2)
    try:
        broker = build_broker(settings)
        message_id = publish(broker, ingest_message(raw.decode("utf-8")))
        broker.close()
    except BrokerUnavailable as exc:
        fail(str(exc))
    out.print(f"queued {event.type} [bold]{event.event_id}[/] (message {message_id})", highlight=False)
    if isinstance(event, PolicyChange):
        out.print(change_schedule_table(event))


@app.command()
def schema(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file.")] = None,
) -> None:
    """Print the JSON Schema of every event herald accepts."""
    from worker.intake.events import event_json_schema

    text = json.dumps(event_json_schema(), indent=2, ensure_ascii=False)
    if output is None:
        print(text)
    else:
        output.write_text(text + "\n", encoding="utf-8")
        out.print(f"wrote {output}")


@events_app.command("rejected")
def events_rejected(
    limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List refused payloads (rejected, or a conflicting repeat of an id) with the reason for each."""
    from worker.store.intake import list_rejections

    settings = _settings()
    with _engine(settings).connect() as conn:
        rejections = list_rejections(conn, limit)
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "id": r.id,
                        "outcome": r.outcome,
                        "event_id": r.event_id,
                        "type": r.event_type,
                        "reason": r.reason,
                        "size_bytes": r.size_bytes,
                        "payload_sha256": r.payload_sha256,
                        "excerpt": r.excerpt,
                        "received_at": r.received_at.isoformat(),
                    }
                    for r in rejections
                ],
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    if not rejections:
        out.print("no rejected events")
        return
    table = Table(title="Rejected events (newest first)")
    for column in ("received (UTC)", "outcome", "event_id", "type", "size", "reason"):
        table.add_column(column, overflow="fold")
    for r in rejections:
        table.add_row(
            r.received_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.outcome,
            escape(r.event_id or "-"),
            escape(r.event_type or "-"),
            f"{r.size_bytes:,} B",
            escape(r.reason),
        )
    out.print(table)


@events_app.command("show")
def events_show(event_id: Annotated[str, typer.Argument(help="The event's id.")]) -> None:
    """Show one event's fan-out progress and delivery outcomes by channel and status."""
    from worker.intake.events import topic_of
    from worker.store import announcements, routes
    from worker.store.intake import event_summary, intake_counts, load_event
    from worker.store.outcomes import outcome_counts

    settings = _settings()
    announcement = None
    with _engine(settings).connect() as conn:
        summary = event_summary(conn, event_id)
        received = intake_counts(conn, event_id)
        counts = outcome_counts(conn, event_id)
        outcomes = routes.outcome_counts(conn, event_id)
        reached = routes.reached_by(conn, event_id)
        if summary is not None:
            announcement = announcements.by_topic(conn, topic_of(load_event(conn, event_id)))
    if summary is None:
        reason = "was rejected (see `herald events rejected`)" if received.get("rejected") else "was never accepted"
        fail(f"event {event_id!r} {reason}", 2)
    out.print(
        f"[bold]{summary.event_id}[/] {summary.event_type}, accepted {summary.accepted_at:%Y-%m-%d %H:%M:%S} UTC, "
        f"{summary.recipients_total} recipients, fan-out {'done' if summary.fanout_done else 'in progress'}, "
        f"received {sum(received.values())}x",
        highlight=False,
    )
    out.print(outcome_table(counts))
    if outcomes:
        out.print(recipient_table(outcomes, reached))
    if announcement is not None:
        out.print(announcement_line(settings, announcement), highlight=False)


def outcome_table(counts: dict[tuple[str, str], int], title: str = "Deliveries") -> Table:
    """A table of delivery counts by channel (rows) and status (columns)."""
    statuses = sorted({status for _, status in counts})
    table = Table(title=title)
    table.add_column("channel")
    for status in statuses:
        table.add_column(status, justify="right")
    table.add_column("total", justify="right")
    for channel in sorted({channel for channel, _ in counts}):
        row = [counts.get((channel, status), 0) for status in statuses]
        table.add_row(channel, *(str(n) for n in row), str(sum(row)))
    return table


def change_schedule_table(event: PolicyChange) -> Table:
    """What a policy change will do, and when (as the workers will schedule it now)."""
    from worker.core.clock import utcnow
    from worker.schedule.jobs import describe, jobs_for

    data = event.data
    table = Table(title=f"Schedule of {data.document} version {data.version} (herald scheduler sends each when due)")
    table.add_column("when (UTC)")
    table.add_column("what")
    for job, due in jobs_for(event, utcnow()):
        table.add_row(f"{due:%Y-%m-%d %H:%M:%S}", describe(job))
    table.add_row(f"{data.effective_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}", "the change takes effect")
    if data.override is not None:
        table.caption = f"lead-time rule waived by {data.override.operator}: {data.override.legal_basis}"
    return table


def recipient_table(outcomes: dict[str, int], reached: dict[str, int]) -> Table:
    """A table of recipients by routing outcome, with the channels that reached them."""
    table = Table(title="Recipients")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    table.add_column("detail", overflow="fold")
    order = ["reached", "covered", "unreached", "covering", "in_progress"]
    for outcome in sorted(outcomes, key=lambda o: order.index(o) if o in order else len(order)):
        detail = ", ".join(f"{channel} {n}" for channel, n in sorted(reached.items())) if outcome == "reached" else ""
        table.add_row(outcome.replace("_", " "), str(outcomes[outcome]), detail)
    return table


def announcement_line(settings: Settings, announcement: Any) -> str:
    """Where an announcement is, and since when it is public."""
    from worker.announce.site import page_path

    locale = "en"
    url = f"{settings.resolved_announcements_url}/{page_path(announcement.id, locale)}"
    path = settings.resolved_announcements_dir / page_path(announcement.id, locale)
    if announcement.first_public_at is None:
        return f"announcement {announcement.id}: not public yet (revision {announcement.revision})"
    return (
        f"announcement {announcement.id}: public since {announcement.first_public_at:%Y-%m-%d %H:%M:%S} UTC, "
        f"revision {announcement.published_revision}; {url} (file {path})"
    )


@routing_app.command("check")
def routing_check(
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Check this file instead of HERALD_ROUTING_FILE.")
    ] = None,
) -> None:
    """Validate the routing policy against the templates and enabled channels; print its routes."""
    from worker.routing.policy import format_duration, load_policy
    from worker.runtime import Runtime

    settings = _settings()
    path = file or settings.routing_file
    policy = load_policy(path)
    runtime = Runtime(settings)
    policy.check(runtime.renderer, settings.channels)
    table = Table(title=f"Routes in {path} (first match wins)")
    table.add_column("route", no_wrap=True)
    table.add_column("line", justify="right")
    for column in ("matches", "stages", "announce"):
        table.add_column(column, overflow="fold")
    for route in policy.routes:
        matches = route.event_type
        if route.severities is not None:
            matches += " " + "/".join(sorted(route.severities))
        if route.substantial is not None:
            matches += " substantial" if route.substantial else " not substantial"
        stages = " → ".join(
            f"{'+'.join(c for c in stage.channels if c in settings.channels) or '(disabled)'} "
            f"({format_duration(stage.wait_s)})"
            for stage in route.stages
        )
        table.add_row(route.name, str(route.line), matches, stages, "yes" if route.announce else "no")
    out.print(table)
    out.print(f"routing policy is valid; enabled channels: {', '.join(settings.channels)}", highlight=False)


@announcements_app.command("list")
def announcements_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List announcements: id, topic, revision, and since when each is public."""
    from worker.announce.site import page_path
    from worker.store import announcements

    settings = _settings()
    with _engine(settings).connect() as conn:
        unique = announcements.every(conn)
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "id": a.id,
                        "topic": a.topic,
                        "revision": a.revision,
                        "published_revision": a.published_revision,
                        "first_public_at": a.first_public_at.isoformat() if a.first_public_at else None,
                        "url": f"{settings.resolved_announcements_url}/{page_path(a.id, 'en')}",
                        "failures": a.failures,
                        "failure": a.failure,
                    }
                    for a in unique
                ],
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    if not unique:
        out.print("no announcements")
        return
    table = Table(title=f"Announcements ({settings.resolved_announcements_dir})")
    failing = any(a.failures for a in unique)
    for column in ("id", "topic", "revision", "public since (UTC)", "url", *(("failed builds",) if failing else ())):
        table.add_column(column, overflow="fold")
    for a in unique:
        since = a.first_public_at.strftime("%Y-%m-%d %H:%M:%S") if a.first_public_at else "not yet"
        failed = (f"{a.failures}: {a.failure}" if a.failures else "",) if failing else ()
        table.add_row(
            a.id,
            a.topic,
            f"{a.published_revision}/{a.revision}",
            since,
            f"{settings.resolved_announcements_url}/{page_path(a.id, 'en')}",
            *failed,
        )
    out.print(table)


@announcements_app.command("publish")
def announcements_publish(
    announcement_id: Annotated[str, typer.Argument(help="The announcement's id (see `herald announcements list`).")],
) -> None:
    """Queue a publication of one announcement (regenerates the whole site; always safe)."""
    from worker.broker import build_broker
    from worker.fanout.outbox import Dispatch, enqueue
    from worker.store import announcements

    settings = _settings()
    with _engine(settings).connect() as conn:
        found = announcements.get(conn, announcement_id)
    if found is None:
        fail(f"no announcement {announcement_id!r}", 2)
    try:
        broker = build_broker(settings)
        enqueue(broker, Dispatch(publish={announcement_id}))
        broker.close()
    except BrokerUnavailable as exc:
        fail(str(exc))
    out.print(f"queued a publication of {announcement_id}", highlight=False)


@app.command()
def scheduler(
    interval: Annotated[
        float | None, typer.Option(help="Seconds between ticks (default HERALD_SCHEDULER_INTERVAL_S).")
    ] = None,
) -> None:
    """Run the scheduler: hand due policy-change jobs to the workers until interrupted (safe to run several)."""
    import signal as signals
    import threading

    from worker.broker import build_broker
    from worker.logs import configure_logging
    from worker.schedule.scheduler import Scheduler

    settings = _settings()
    if interval is not None:
        settings = settings.model_copy(update={"scheduler_interval_s": interval})
    engine = _engine(settings)
    configure_logging()
    stop = threading.Event()
    for sig in (signals.SIGINT, signals.SIGTERM):
        signals.signal(sig, lambda *_: stop.set())
    broker = build_broker(settings)
    runner = Scheduler(settings, engine, broker)
    err.print(f"herald scheduler {runner.claimant}: every {settings.scheduler_interval_s:g} s", highlight=False)
    try:
        runner.run(stop)
    finally:
        broker.close()
        engine.dispose()


@schedule_app.command("list")
def schedule_list(
    tz: Annotated[str, typer.Option("--tz", help="Also show due times in this IANA zone.")] = "Asia/Shanghai",
    show_all: Annotated[bool, typer.Option("--all", help="Include jobs done or cancelled.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List scheduled jobs: due time in UTC and in a chosen zone, state, and what they do."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from worker.schedule.jobs import describe
    from worker.store import schedules
    from worker.store.intake import load_event

    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        fail(f"unknown time zone {tz!r}; use an IANA name such as Europe/Berlin", 2)
    settings = _settings()
    with _engine(settings).connect() as conn:
        jobs = schedules.listing(conn, include_finished=show_all)
        docs: dict[str, str] = {}
        for job in jobs:
            if job.event_id not in docs:
                event = load_event(conn, job.event_id)
                docs[job.event_id] = (
                    f"{event.data.document} {event.data.version}" if isinstance(event, PolicyChange) else event.type
                )
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "id": j.id,
                        "event_id": j.event_id,
                        "document": docs[j.event_id],
                        "job": j.job.value,
                        "due_at": j.due_at.isoformat(),
                        "due_local": j.due_at.astimezone(zone).isoformat(),
                        "state": j.state.value,
                        "note": j.note,
                    }
                    for j in jobs
                ],
                indent=2,
                ensure_ascii=False,
            )
        )
        return
    if not jobs:
        out.print("nothing scheduled" if not show_all else "the schedule is empty")
        return
    table = Table(title="Scheduled jobs")
    for column in ("id", "due (UTC)", f"due ({tz})", "state", "document", "what", "event", "note"):
        table.add_column(column, overflow="fold")
    for j in jobs:
        table.add_row(
            str(j.id),
            f"{j.due_at:%Y-%m-%d %H:%M}",
            f"{j.due_at.astimezone(zone):%Y-%m-%d %H:%M %Z}",
            j.state.value,
            docs[j.event_id],
            describe(j.job),
            j.event_id,
            j.note or "",
        )
    out.print(table)


@schedule_app.command("cancel")
def schedule_cancel(
    job_id: Annotated[int, typer.Argument(help="A job's id (see `herald schedule list`).")],
    operator: Annotated[str, typer.Option(help="Who cancels (recorded in the ledger).")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the ledger).")] = "no reason given",
) -> None:
    """Cancel a policy change (its notice or notices job) or only its reminder; a change whose
    notice is already public gets a public withdrawal notice."""
    from worker.core.clock import utcnow
    from worker.schedule.jobs import cancel_change, cancel_reminder
    from worker.store import schedules
    from worker.store.schedules import Job, JobState

    settings = _settings()
    operator, reason = " ".join(operator.split()), " ".join(reason.split())
    if not operator:
        fail("--operator must name who cancels", 2)
    with _engine(settings).begin() as conn:
        job = schedules.get(conn, job_id)
        if job is None:
            fail(f"no scheduled job {job_id}", 2)
        if job.job is Job.WITHDRAW:
            fail(f"job {job_id} is a withdrawal notice; a withdrawal is not cancelled", 2)
        if job.state in (JobState.DONE, JobState.CANCELLED) and job.job is Job.REMINDER:
            fail(f"job {job_id} is already {job.state.value}", 2)
        if job.job is Job.REMINDER:
            cancel_reminder(conn, job.event_id, operator=operator, reason=reason, now=utcnow())
            out.print(f"cancelled the reminder of {job.event_id}", highlight=False)
            return
        result = cancel_change(conn, job.event_id, operator=operator, reason=reason, now=utcnow())
    if not result.replaced:
        fail(f"nothing left to cancel for {job.event_id}: its notices have all gone out", 2)
    withdrawn = " Its notice was already public: a withdrawal notice will be published." if result.withdrawn else ""
    out.print(f"cancelled the policy change {job.event_id}.{withdrawn}", highlight=False)


@recipients_app.command("import")
def recipients_import(
    file: Annotated[Path, typer.Argument(help="CSV with a header: user_id,name,email,phone,locale[,opt_out].")],
) -> None:
    """Load or refresh recipients from a CSV file (for audiences by user_ids or all)."""
    from worker.store.recipients import import_csv

    settings = _settings()
    if not file.is_file():
        fail(f"no such file: {file}", 2)
    engine = _engine(settings)
    try:
        with engine.begin() as conn:
            result = import_csv(conn, file, allowed_special_domains=settings.email_allowed_special_domains)
    except (ValueError, UnicodeDecodeError) as exc:
        fail(str(exc), 2)
    for problem in result.problems[:20]:
        err.print(f"[yellow]warning:[/] {problem}", highlight=False)
    if len(result.problems) > 20:
        err.print(f"[yellow]warning:[/] and {len(result.problems) - 20} more", highlight=False)
    out.print(f"imported {result.imported} recipients from {file.name}")


@app.command()
def demo(
    recipients: Annotated[
        int, typer.Option("--recipients", "-n", min=1, max=100_000, help="Generated recipients.")
    ] = 1_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    processes: Annotated[int, typer.Option("--processes", "-p", min=1)] = 2,
    threads: Annotated[int, typer.Option("--threads", "-t", min=1)] = 4,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 600.0,
) -> None:
    """Run the whole pipeline once on embedded parts and print what happened."""
    from worker.cli.demo import run_demo

    settings = _settings()
    try:
        summary = run_demo(
            settings,
            recipients=recipients,
            processes=processes,
            threads=threads,
            timeout=timeout,
            quiet=as_json,
            console=err if as_json else out,
        )
    except HeraldError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(summary.as_dict(), indent=2))
        return
    out.print(outcome_table(summary.counts, title=f"Event {summary.event_id}: deliveries by channel and status"))
    out.print(recipient_table(summary.people, summary.reached_by))
    if summary.fallbacks:
        handed = ", ".join(f"{n} {where}" for where, n in sorted(summary.fallbacks.items()))
        out.print(f"handed down the chain: {handed}", highlight=False)
    if summary.failures:
        why = Table(title="Why deliveries failed")
        for column in ("channel", "code", "count", "example reason"):
            why.add_column(column, overflow="fold")
        for channel, code, count, reason in summary.failures:
            why.add_row(channel, code, str(count), reason)
        out.print(why)
    out.print(
        f"{summary.recipients} recipients; the local sandboxes received {summary.emails_received} emails, "
        f"{summary.sms_received} SMS and {summary.calls_received} calls; "
        f"{summary.letters} station letters were written, {summary.ledger_rows} ledger rows, {summary.seconds:.1f} s",
        highlight=False,
    )
    if summary.announcement_file:
        covered = summary.people.get("covered", 0)
        out.print(
            f"public announcement {summary.announcement_id} (covers {covered} people); open its page: "
            f"{summary.announcement_file}",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface (default HERALD_HTTP_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default HERALD_HTTP_PORT).")] = None,
) -> None:
    """Serve HTTP: Twilio status callbacks (signed), health."""
    import uvicorn

    from worker.logs import configure_logging
    from worker.service.http import create_app

    settings = _settings()
    engine = _engine(settings)
    configure_logging()
    uvicorn.run(
        create_app(settings, engine),
        host=host or settings.http_host,
        port=port or settings.http_port,
        log_config=None,  # uvicorn's records go through herald's one redacting handler
        log_level="info",
        access_log=False,
    )


@app.command()
def sandbox(
    smtp_port: Annotated[int, typer.Option(help="SMTP sink port.")] = 8025,
    twilio_port: Annotated[int, typer.Option(help="Twilio-compatible API and web page port.")] = 8089,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    faults: Annotated[
        str | None,
        typer.Option(
            help='Fault injection as JSON, e.g. \'{"rate_429": 0.3, "fail_numbers": {"+15551234567": 21610}}\'.'
        ),
    ] = None,
) -> None:
    """Run the local SMTP sink and the Twilio-compatible sandbox (with a web page) until interrupted."""
    from worker.sandbox.twilio import run_sandbox

    settings = _settings()
    try:
        parsed = json.loads(faults) if faults else None
    except json.JSONDecodeError as exc:
        fail(f"--faults is not JSON: {exc}", 2)
    if parsed is not None and not isinstance(parsed, dict):
        fail("--faults must be a JSON object", 2)
    try:
        run_sandbox(
            host,
            smtp_port,
            twilio_port,
            settings.twilio_account_sid,
            settings.twilio_auth_token.get_secret_value(),
            parsed,
        )
    except ValueError as exc:
        fail(str(exc), 2)
    except OSError as exc:
        fail(f"cannot listen: {exc.strerror or exc}")


def main() -> None:
    """Console-script entry point: a wiring error anywhere is one line and exit 2."""
    from worker.logs import configure_logging

    configure_logging(logging.WARNING)  # commands that run a service raise it to INFO
    try:
        app()
    except ConfigurationError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
