"""The routes table: one row per (event, recipient), the person's place on the event's plan.

Every move is a guarded UPDATE (compare-and-set on the stage and the outcome), so two
workers that decide the same thing at once, or a message delivered twice, move a person
once. Rows are locked in ``recipient_ref`` order, so concurrent decisions never deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, bindparam, func, select, text, update

from worker.core.clock import as_utc
from worker.core.statuses import ROUTE_TERMINAL, RouteOutcome
from worker.store.dialect import insert_returning_new
from worker.store.schema import deliveries, routes

_OPEN = [RouteOutcome.IN_PROGRESS.value, RouteOutcome.COVERING.value]
# executemany() cannot expand an IN list, so the (constant, herald's own) outcomes are inlined.
_OPEN_SQL = text("routes.outcome IN (" + ", ".join(f"'{o}'" for o in _OPEN) + ")")
_REACHED = (
    update(routes)
    .where(
        routes.c.event_id == bindparam("k_event"),
        routes.c.recipient_ref == bindparam("k_ref"),
        _OPEN_SQL,
    )
    .values(
        outcome=RouteOutcome.REACHED.value,
        reached_channel=bindparam("k_channel"),
        wait_until=None,
        updated_at=bindparam("k_now"),
    )
)


@dataclass(frozen=True, slots=True)
class RouteRow:
    """One recipient's place on the plan."""

    recipient_ref: str
    stage: int
    outcome: RouteOutcome
    wait_until: datetime | None


def start(conn: Connection, event_id: str, refs: Sequence[str], wait_until: datetime, now: datetime) -> list[str]:
    """Put recipients on stage 0; returns the refs that were not on the plan already."""
    if not refs:
        return []
    # Normally none is on the plan yet: one indexed look-up, then a plain bulk insert, is
    # cheaper than an insert that returns every row. A page handled twice finds its people.
    there = {
        ref
        for (ref,) in conn.execute(
            select(routes.c.recipient_ref).where(routes.c.event_id == event_id, routes.c.recipient_ref.in_(list(refs)))
        )
    }
    rows = [
        {
            "event_id": event_id,
            "recipient_ref": ref,
            "stage": 0,
            "outcome": RouteOutcome.IN_PROGRESS.value,
            "wait_until": wait_until,
            "created_at": now,
            "updated_at": now,
        }
        for ref in refs
        if ref not in there
    ]
    if not there:
        conn.execute(routes.insert(), rows)
        return list(refs)
    # Another copy of this page may be running right now: let the unique key decide.
    return insert_returning_new(conn, routes, rows, "recipient_ref", "event_id", "recipient_ref")


@dataclass(frozen=True, slots=True)
class Standing:
    """A recipient still being tried, with every delivery they have for the event."""

    route: RouteRow
    deliveries: list[tuple[str, int, str, str | None]]  # (channel, step, status, error code)


def lock_with_deliveries(conn: Connection, event_id: str, refs: Iterable[str]) -> list[Standing]:
    """The recipients still being tried and their deliveries; their route rows stay locked
    (PostgreSQL) until the transaction ends.

    On PostgreSQL the lock is taken by a statement of its own *before* the deliveries are
    read: rows joined to a ``FOR UPDATE`` come from the snapshot taken before the lock was
    waited for, so two workers settling the same person at once could each miss the other's
    result and leave the person waiting. SQLite serialises writers, so one query does there.
    """
    wanted = sorted(set(refs))
    if not wanted:
        return []
    if conn.dialect.name == "postgresql":
        _lock(conn, event_id, wanted)
    stmt = (
        select(
            routes.c.recipient_ref,
            routes.c.stage,
            routes.c.wait_until,
            deliveries.c.channel,
            deliveries.c.step,
            deliveries.c.status,
            deliveries.c.error_code,
        )
        .select_from(
            routes.outerjoin(
                deliveries,
                (deliveries.c.event_id == routes.c.event_id) & (deliveries.c.recipient_ref == routes.c.recipient_ref),
            )
        )
        .where(
            routes.c.event_id == event_id,
            routes.c.recipient_ref.in_(wanted),
            routes.c.outcome == RouteOutcome.IN_PROGRESS.value,
        )
        .order_by(routes.c.recipient_ref)
    )
    found: dict[str, Standing] = {}
    for ref, stage, wait, channel, step, status, code in conn.execute(stmt):
        standing = found.get(ref)
        if standing is None:
            row = RouteRow(ref, stage, RouteOutcome.IN_PROGRESS, as_utc(wait) if wait is not None else None)
            standing = found[ref] = Standing(row, [])
        if channel is not None:
            standing.deliveries.append((channel, step, status, code))
    return list(found.values())


def mark_reached(conn: Connection, event_id: str, refs: Sequence[str], channel: str, now: datetime) -> None:
    """Recipients a channel confirmed (those still open; the others keep their outcome)."""
    if not refs:
        return
    _lock(conn, event_id, refs)
    # One row per parameter set (executemany) is about twice as fast as one IN list here,
    # and this runs for every chunk of every batch.
    conn.execute(
        _REACHED,
        [{"k_event": event_id, "k_ref": ref, "k_channel": channel, "k_now": now} for ref in refs],
    )


def reach_after_all(conn: Connection, event_id: str, refs: Sequence[str], channel: str, now: datetime) -> list[str]:
    """Recipients whose chain had ended (covered, unreached) when a confirmation overturned
    the failure that ended it (``worker.core.statuses.overturnable``): now reached; returns them."""
    if not refs:
        return []
    _lock(conn, event_id, refs)
    stmt = (
        update(routes)
        .where(
            routes.c.event_id == event_id,
            routes.c.recipient_ref.in_(list(refs)),
            routes.c.outcome.in_([RouteOutcome.COVERED.value, RouteOutcome.UNREACHED.value]),
        )
        .values(outcome=RouteOutcome.REACHED.value, reached_channel=channel, wait_until=None, updated_at=now)
        .returning(routes.c.recipient_ref)
    )
    return [ref for (ref,) in conn.execute(stmt)]


def advance(
    conn: Connection, event_id: str, refs: Sequence[str], from_stage: int, wait_until: datetime, now: datetime
) -> list[str]:
    """Move recipients from ``from_stage`` to the next; returns those this call moved (the CAS winners)."""
    if not refs:
        return []
    stmt = (
        update(routes)
        .where(
            routes.c.event_id == event_id,
            routes.c.recipient_ref.in_(list(refs)),
            routes.c.stage == from_stage,
            routes.c.outcome == RouteOutcome.IN_PROGRESS.value,
        )
        .values(stage=from_stage + 1, wait_until=wait_until, updated_at=now)
        .returning(routes.c.recipient_ref)
    )
    return [ref for (ref,) in conn.execute(stmt)]


def finish(
    conn: Connection,
    event_id: str,
    refs: Sequence[str],
    outcome: RouteOutcome,
    now: datetime,
    *,
    announcement_id: str | None = None,
    from_outcomes: Sequence[RouteOutcome] = (RouteOutcome.IN_PROGRESS,),
) -> list[str]:
    """Set the outcome of recipients whose chain ended; returns those this call moved."""
    if not refs:
        return []
    values: dict[str, object] = {"outcome": outcome.value, "wait_until": None, "updated_at": now}
    if announcement_id is not None:
        values["announcement_id"] = announcement_id
    stmt = (
        update(routes)
        .where(
            routes.c.event_id == event_id,
            routes.c.recipient_ref.in_(list(refs)),
            routes.c.outcome.in_([o.value for o in from_outcomes]),
        )
        .values(**values)
        .returning(routes.c.recipient_ref)
    )
    return [ref for (ref,) in conn.execute(stmt)]


def covering(conn: Connection, announcement_id: str, limit: int = 5_000) -> list[tuple[str, str]]:
    """(event_id, ref) of recipients waiting for this announcement to go public, locked."""
    stmt = (
        select(routes.c.event_id, routes.c.recipient_ref)
        .where(routes.c.announcement_id == announcement_id, routes.c.outcome == RouteOutcome.COVERING.value)
        .order_by(routes.c.event_id, routes.c.recipient_ref)
        .limit(limit)
        .with_for_update()
    )
    return [(event_id, ref) for event_id, ref in conn.execute(stmt)]


def due(conn: Connection, now: datetime, limit: int) -> list[tuple[str, str]]:
    """(event_id, ref) of recipients whose stage's confirmation wait is over."""
    stmt = (
        select(routes.c.event_id, routes.c.recipient_ref)
        .where(routes.c.outcome == RouteOutcome.IN_PROGRESS.value, routes.c.wait_until <= now)
        .order_by(routes.c.wait_until)
        .limit(limit)
    )
    return [(event_id, ref) for event_id, ref in conn.execute(stmt)]


def outcome_counts(conn: Connection, event_id: str) -> dict[str, int]:
    """Recipients of an event by outcome."""
    stmt = select(routes.c.outcome, func.count()).where(routes.c.event_id == event_id).group_by(routes.c.outcome)
    return {outcome: count for outcome, count in conn.execute(stmt)}


def reached_by(conn: Connection, event_id: str) -> dict[str, int]:
    """Reached recipients of an event by the channel that reached them."""
    stmt = (
        select(routes.c.reached_channel, func.count())
        .where(routes.c.event_id == event_id, routes.c.outcome == RouteOutcome.REACHED.value)
        .group_by(routes.c.reached_channel)
    )
    return {channel or "-": count for channel, count in conn.execute(stmt)}


def open_count(conn: Connection, event_ids: Iterable[str]) -> int:
    """How many recipients of these events have no terminal outcome yet."""
    stmt = select(func.count()).where(
        routes.c.event_id.in_(list(event_ids)),
        routes.c.outcome.not_in([o.value for o in ROUTE_TERMINAL]),
    )
    return int(conn.execute(stmt).scalar_one())


def _lock(conn: Connection, event_id: str, refs: Sequence[str]) -> None:
    """Lock rows in ref order before an UPDATE touches them in whatever order it likes."""
    if conn.dialect.name != "postgresql":
        return  # SQLite: BEGIN IMMEDIATE already serialises writers
    conn.execute(
        select(routes.c.id)
        .where(routes.c.event_id == event_id, routes.c.recipient_ref.in_(sorted(set(refs))))
        .order_by(routes.c.recipient_ref)
        .with_for_update()
    )
