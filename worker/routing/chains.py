"""Routing: every recipient of an event walks the event's plan, one stage at a time.

A stage sends on one or more channels at once. The recipient is *reached* as soon as any
delivery of theirs confirms (the plan says which statuses confirm on which channel: an
email accepted by the recipient's server, an SMS the carrier delivered, a call answered
with a keypress, a station letter read). A stage is *settled* when every delivery in it
is terminal without a confirmation, or when its confirmation wait is over; the recipient
then moves to the next stage, for that recipient only. After the last stage the person is
covered by the event's public announcement (or, for notices that are never announced,
ends unreached). Every move is written to the ledger with the reason.

Decisions happen inside the caller's transaction, which also holds the status moves that
prompted them, and they are compare-and-set on the recipient's stage: a redelivered
message, a duplicate callback or two workers deciding at once move a person once and open
a stage's deliveries once. What a decision asks to send comes back as a ``Dispatch`` for
the caller to enqueue after the commit.

One confirmation can arrive after the failure it contradicts: a call's keypress recorded
after the call's end (``worker.core.statuses.overturnable``). The person then ends reached
whatever that failure decided, and the later stages' deliveries not yet claimed are skipped.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, select

from channels import get_spec
from worker.core.errors import DeliveryError, PermanentDeliveryError
from worker.core.messages import Receipt
from worker.core.statuses import TERMINAL, DeliveryStatus, RouteMark, RouteOutcome
from worker.fanout.outbox import Batch, Dispatch, cut
from worker.routing.policy import Plan, format_duration
from worker.store import announcements, deliveries, ledger, outcomes, recipients, routes
from worker.store.ledger import Note
from worker.store.moves import Move, skip_later_stages
from worker.store.schema import events

_TERMINAL = frozenset(s.value for s in TERMINAL)
_PLAN_CACHE_SIZE = 256


class ChannelNotUsed(PermanentDeliveryError):
    """A channel deliberately left out for this person: opted out, or over a frequency cap."""


@dataclass(frozen=True, slots=True)
class EventRoute:
    """What routing needs to know about an event: its plan and its announcement topic."""

    event_id: str
    event_type: str
    topic: str
    plan: Plan


class Router:
    """Routing decisions for one process; each event's plan is read once and kept.

    Args:
        batch_size: recipients per delivery message it asks for.
        slug: turns an announcement topic into its public id (``worker.announce.site.announcement_slug``).
    """

    def __init__(self, *, batch_size: int, slug: Callable[[str], str]) -> None:
        self.batch_size = batch_size
        self.slug = slug
        self._lock = threading.Lock()
        self._events: OrderedDict[str, EventRoute | None] = OrderedDict()

    # --- plans ---------------------------------------------------------------------------

    def route_of(self, conn: Connection, event_id: str) -> EventRoute | None:
        """The event's plan and topic; None for an event accepted before plans existed."""
        with self._lock:
            if event_id in self._events:
                self._events.move_to_end(event_id)
                return self._events[event_id]
        row = conn.execute(
            select(events.c.event_type, events.c.topic, events.c.plan).where(events.c.event_id == event_id)
        ).one_or_none()
        found = None
        if row is not None and row.plan:
            found = EventRoute(event_id, row.event_type, row.topic or f"event:{event_id}", Plan.from_json(row.plan))
        with self._lock:
            self._events[event_id] = found
            while len(self._events) > _PLAN_CACHE_SIZE:
                self._events.popitem(last=False)
        return found

    # --- entry points --------------------------------------------------------------------

    def start(self, conn: Connection, event_id: str, refs: Sequence[str], now: datetime) -> Dispatch:
        """Put a page of recipients on the plan's first stage and open its deliveries.

        A page handled again (its fan-out message redelivered) opens nothing twice; its
        deliveries that are still pending are handed on again, which the claims make safe.
        """
        route = self.route_of(conn, event_id)
        dispatch = Dispatch()
        if route is None or not route.plan.stages:
            return dispatch
        first = route.plan.stages[0]
        new = routes.start(conn, event_id, refs, now + timedelta(seconds=first.wait_s), now)
        fresh = set(new)
        old = [ref for ref in refs if ref not in fresh]
        if old:
            for (channel, step), pending in outcomes.pending_by_step(conn, event_id, old).items():
                dispatch.batches += cut(event_id, channel, pending, step, self.batch_size)
        if new:
            batches, idle = self._open_stage(conn, route, 0, new, now)
            dispatch.batches += batches
            if idle:
                dispatch.extend(self.settle(conn, event_id, idle, now))
        return dispatch

    def after_receipts(
        self, conn: Connection, event_id: str, receipts: Sequence[Receipt], moves: Sequence[Move] = (), *, now: datetime
    ) -> Dispatch:
        """Route on what a batch just recorded (and callbacks it let through)."""
        results = [(r.key.recipient_ref, r.key.channel, r.status) for r in receipts]
        dispatch = self._after(conn, event_id, results, now)
        for other, group in _by_event(moves).items():
            dispatch.extend(self._after(conn, other, group, now))
        self._reached_after_all(conn, [m for m in moves if m.overturned], now)
        return dispatch

    def after_moves(self, conn: Connection, moves: Iterable[Move], now: datetime) -> Dispatch:
        """Route on statuses that came from outside a batch: callbacks, reconciliation, a letter read."""
        moves = list(moves)
        dispatch = Dispatch()
        for event_id, group in _by_event(moves).items():
            dispatch.extend(self._after(conn, event_id, group, now))
        self._reached_after_all(conn, [m for m in moves if m.overturned], now)
        return dispatch

    def settle(self, conn: Connection, event_id: str, refs: Sequence[str], now: datetime) -> Dispatch:
        """Decide for each recipient: reached, still waiting, next stage, or the end of the chain."""
        route = self.route_of(conn, event_id)
        dispatch = Dispatch()
        if route is None:
            return dispatch
        todo = list(refs)
        # Each round moves people at most one stage on; a stage with nothing to send (every
        # channel failed at once or was skipped) settles in the next round.
        for _ in range(len(route.plan.stages) + 1):
            if not todo:
                break
            todo = self._settle_round(conn, route, todo, now, dispatch)
        return dispatch

    def cover(self, conn: Connection, announcement: announcements.Announcement, now: datetime) -> int:
        """Everyone waiting for this announcement is now covered by it; returns how many."""
        assert announcement.first_public_at is not None
        return self._end_waiting(
            conn,
            announcement,
            RouteOutcome.COVERED,
            now,
            lambda event_id, ref, step: _covered_note(event_id, ref, step, announcement),
        )

    def abandon(self, conn: Connection, announcement: announcements.Announcement, reason: str, now: datetime) -> int:
        """Everyone waiting for an announcement that cannot be published ends unreached, with
        ``reason`` in the ledger; returns how many."""
        why = f"announcement {announcement.id} could not be published: {reason}"
        return self._end_waiting(
            conn,
            announcement,
            RouteOutcome.UNREACHED,
            now,
            lambda event_id, ref, step: Note(
                event_id, ref, "announcement", step, RouteMark.UNREACHED, why, reference=announcement.id
            ),
        )

    def _end_waiting(
        self,
        conn: Connection,
        announcement: announcements.Announcement,
        outcome: RouteOutcome,
        now: datetime,
        note_for: Callable[[str, str, int], Note],
    ) -> int:
        """Move everyone waiting for ``announcement`` to ``outcome``, a ledger row each; how many."""
        total = 0
        while True:
            waiting = routes.covering(conn, announcement.id)
            if not waiting:
                return total
            notes: list[Note] = []
            for event_id, refs in _group(waiting).items():
                route = self.route_of(conn, event_id)
                step = len(route.plan.stages) if route is not None else 0
                moved = routes.finish(
                    conn,
                    event_id,
                    refs,
                    outcome,
                    now,
                    announcement_id=announcement.id if outcome is RouteOutcome.COVERED else None,
                    from_outcomes=(RouteOutcome.COVERING,),
                )
                notes += [note_for(event_id, ref, step) for ref in moved]
            ledger.note(conn, notes)
            total += len(notes)
            if not notes:
                return total

    # --- the state machine ---------------------------------------------------------------

    def _after(
        self, conn: Connection, event_id: str, results: Sequence[tuple[str, str, DeliveryStatus]], now: datetime
    ) -> Dispatch:
        route = self.route_of(conn, event_id)
        dispatch = Dispatch()
        if route is None:
            return dispatch
        confirmed: dict[str, list[str]] = defaultdict(list)
        check: list[str] = []
        for ref, channel, status in results:
            if status.value in route.plan.confirmed_by.get(channel, ()):
                confirmed[channel].append(ref)
            elif status.terminal:
                check.append(ref)
        for channel, refs in confirmed.items():
            routes.mark_reached(conn, event_id, refs, channel, now)
        done = {ref for refs in confirmed.values() for ref in refs}
        check = [ref for ref in dict.fromkeys(check) if ref not in done]
        if check:
            dispatch.extend(self.settle(conn, event_id, check, now))
        return dispatch

    def _reached_after_all(self, conn: Connection, moves: Sequence[Move], now: datetime) -> None:
        """Confirmations that overturned a failure (``worker.core.statuses.overturnable``): whatever
        that failure decided, the person ends reached.

        ``_after`` has already marked them reached if their route was open (still on a stage,
        or waiting for the announcement); a chain that had ended (covered, unreached) is
        reopened as reached here, the later stages' deliveries nobody has claimed yet are
        skipped, and the ledger says why.
        """
        for move in moves:
            key = move.key
            route = self.route_of(conn, key.event_id)
            if route is None or move.status.value not in route.plan.confirmed_by.get(key.channel, ()):
                continue
            stage = f"stage {key.step + 1}"
            ended = routes.reach_after_all(conn, key.event_id, [key.recipient_ref], key.channel, now)
            unsent = ChannelNotUsed(f"reached by {key.channel} at {stage} before this stage was sent", code="reached")
            skipped = skip_later_stages(conn, key, unsent)
            why = (
                f"{key.channel} {move.status.value} at {stage} after it had been judged failed: reached by "
                f"{key.channel}" + (f"; {len(skipped)} later deliveries not sent" if skipped else "")
            )
            if ended:
                why += "; the chain had already ended"
            ledger.note(conn, [Note(key.event_id, key.recipient_ref, "route", key.step, RouteMark.REACHED, why)])

    def _settle_round(
        self, conn: Connection, route: EventRoute, refs: Sequence[str], now: datetime, dispatch: Dispatch
    ) -> list[str]:
        plan, event_id = route.plan, route.event_id
        standing = routes.lock_with_deliveries(conn, event_id, refs)
        if not standing:
            return []
        reached: dict[str, list[str]] = defaultdict(list)
        moving: dict[int, dict[str, str]] = defaultdict(dict)  # stage -> ref -> why
        for person in standing:
            row, mine = person.route, person.deliveries
            hit = next((c for c, _step, status, _code in mine if status in plan.confirmed_by.get(c, ())), None)
            if hit is not None:
                reached[hit].append(row.recipient_ref)
                continue
            current = [(c, status, code) for c, step, status, code in mine if step == row.stage]
            timed_out = row.wait_until is not None and row.wait_until <= now
            if timed_out or (current and all(status in _TERMINAL for _c, status, _code in current)):
                wait = plan.stages[row.stage].wait_s if row.stage < len(plan.stages) else 0.0
                moving[row.stage][row.recipient_ref] = _why(row.stage, current, timed_out, wait)
        for channel, group in reached.items():
            routes.mark_reached(conn, event_id, group, channel, now)

        again: list[str] = []
        for stage, whys in moving.items():
            if stage + 1 < len(plan.stages):
                nxt = plan.stages[stage + 1]
                won = routes.advance(conn, event_id, list(whys), stage, now + timedelta(seconds=nxt.wait_s), now)
                ledger.note(
                    conn,
                    [
                        Note(
                            event_id,
                            ref,
                            "route",
                            stage + 1,
                            RouteMark.FALLBACK,
                            f"{whys[ref]}; trying stage {stage + 2}: {', '.join(nxt.channels)}",
                        )
                        for ref in won
                    ],
                )
                batches, idle = self._open_stage(conn, route, stage + 1, won, now)
                dispatch.batches += batches
                again += idle
            else:
                self._end_of_chain(conn, route, whys, now, dispatch)
        return again

    def _open_stage(
        self, conn: Connection, route: EventRoute, stage: int, refs: Sequence[str], now: datetime
    ) -> tuple[list[Batch], list[str]]:
        """Open a stage's deliveries; returns its batches and the refs left with nothing to send."""
        plan, event_id = route.plan, route.event_id
        reach = recipients.load_reach(conn, refs, event_id=event_id)
        sending: set[str] = set()
        batches: list[Batch] = []
        overrides: list[Note] = []
        for channel in plan.stages[stage].channels:
            contact = get_spec(channel).contact
            cap = plan.caps.get(channel)
            counts = (
                outcomes.recent_counts(conn, channel, refs, now - timedelta(seconds=cap.per_s), event_id) if cap else {}
            )
            failures: dict[str, DeliveryError] = {}
            skips: dict[str, DeliveryError] = {}
            for ref in refs:
                person = reach.get(ref)
                if person is None:
                    failures[ref] = PermanentDeliveryError("recipient erased before delivery", code="erased")
                    continue
                problem = person.contact_problem(contact) if contact else None
                if problem is not None:
                    stored = getattr(person, f"{contact}_problem", None)
                    failures[ref] = PermanentDeliveryError(problem, code="invalid-contact" if stored else "no-contact")
                elif channel in person.opt_out:
                    if plan.mandatory:
                        overrides.append(
                            Note(
                                event_id,
                                ref,
                                channel,
                                stage,
                                RouteMark.OVERRIDE,
                                f"opted out of {channel}; sent anyway: a {route.event_type.replace('_', ' ')} "
                                "is a mandatory notice",
                                code="opted-out",
                            )
                        )
                    else:
                        skips[ref] = ChannelNotUsed(f"opted out of {channel} for optional notices", code="opted-out")
                elif cap is not None and counts.get(ref, 0) >= cap.count:
                    skips[ref] = ChannelNotUsed(
                        f"throttled: {counts[ref]} {channel} notices in the last {format_duration(cap.per_s)}; "
                        f"optional notices are capped at {cap.count}",
                        code="throttled",
                    )
            to_send = deliveries.open_deliveries(
                conn, event_id, channel, list(refs), step=stage, failures=failures, skips=skips
            )
            sending |= set(to_send)
            batches += cut(event_id, channel, to_send, stage, self.batch_size)
        ledger.note(conn, overrides)
        return batches, [ref for ref in refs if ref not in sending]

    def _end_of_chain(
        self, conn: Connection, route: EventRoute, whys: dict[str, str], now: datetime, dispatch: Dispatch
    ) -> None:
        plan, event_id = route.plan, route.event_id
        step = len(plan.stages)
        refs = list(whys)
        if not plan.announce:
            moved = routes.finish(conn, event_id, refs, RouteOutcome.UNREACHED, now)
            ledger.note(
                conn,
                [
                    Note(
                        event_id,
                        ref,
                        "route",
                        step,
                        RouteMark.UNREACHED,
                        f"{whys[ref]}; nothing left to try, and a {route.event_type.replace('_', ' ')} "
                        "is never announced publicly",
                    )
                    for ref in moved
                ],
            )
            return
        announcement = announcements.ensure(conn, route.topic, route.event_type, event_id, now, self.slug)
        outcome = RouteOutcome.COVERED if announcement.public else RouteOutcome.COVERING
        moved = routes.finish(conn, event_id, refs, outcome, now, announcement_id=announcement.id)
        notes = [
            Note(
                event_id,
                ref,
                "route",
                step,
                RouteMark.FALLBACK,
                f"{whys[ref]}; nothing left to try: the public announcement {announcement.id} covers this person",
                reference=announcement.id,
            )
            for ref in moved
        ]
        if announcement.public:
            notes += [_covered_note(event_id, ref, step, announcement) for ref in moved]
        elif moved:
            dispatch.publish.add(announcement.id)
        ledger.note(conn, notes)


def _covered_note(event_id: str, ref: str, step: int, announcement: announcements.Announcement) -> Note:
    assert announcement.first_public_at is not None
    since = announcement.first_public_at.isoformat(timespec="seconds")
    return Note(
        event_id,
        ref,
        "announcement",
        step,
        RouteMark.COVERED,
        f"covered by the public announcement {announcement.id}, public since {since}",
        reference=announcement.id,
    )


def _why(stage: int, current: Sequence[tuple[str, str, str | None]], timed_out: bool, wait_s: float) -> str:
    """One line on why a stage ended without reaching the person."""
    parts = [
        f"{channel} {status}" + (f" ({code})" if code and status != "delivered" else "")
        for channel, status, code in current
    ]
    shown = ", ".join(parts) or "nothing sent"
    if timed_out:
        return f"stage {stage + 1} unconfirmed after {format_duration(wait_s)}: {shown}"
    return f"stage {stage + 1} unconfirmed: {shown}"


def _by_event(moves: Iterable[Move]) -> dict[str, list[tuple[str, str, DeliveryStatus]]]:
    grouped: dict[str, list[tuple[str, str, DeliveryStatus]]] = defaultdict(list)
    for move in moves:
        grouped[move.key.event_id].append((move.key.recipient_ref, move.key.channel, move.status))
    return grouped


def _group(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = defaultdict(list)
    for event_id, ref in pairs:
        grouped[event_id].append(ref)
    return grouped
