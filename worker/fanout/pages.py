"""Fan-out: put one page of an event's audience on the event's routing plan.

The audience is streamed a page at a time (never held whole in memory): each fan-out
message handles one page, puts its recipients on the plan's first stage (which opens
that stage's deliveries), enqueues the batches, then moves the event's cursor forward
with a compare-and-set and hands the next page to a new message. Running a page twice (a
redelivery) starts nobody twice and only re-enqueues batches whose keys the ledger guards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, func, select

from worker.core.clock import utcnow
from worker.fanout.outbox import Dispatch
from worker.intake.events import AllAudience, Event, InlineAudience, UserIdsAudience, audience_of, topic_of
from worker.routing.chains import Router
from worker.store import announcements, recipients
from worker.store.intake import advance_fanout
from worker.store.schema import recipients as recipients_table


@dataclass(frozen=True, slots=True)
class Page:
    """What one fan-out step produced; ``next_cursor`` is None after the last page."""

    dispatch: Dispatch = field(default_factory=Dispatch)
    next_cursor: str | None = None
    count: int = 0


def _page_refs(conn: Connection, event: Event, cursor: str, page_size: int) -> tuple[list[str], str | None]:
    """Refs of the page at ``cursor`` (people given inline are stored first), and the next cursor."""
    audience = audience_of(event)
    if isinstance(audience, AllAudience):
        refs = recipients.page_all(conn, cursor, page_size)
        return refs, (refs[-1] if len(refs) == page_size else None)
    start = int(cursor or 0)
    end = start + page_size
    if isinstance(audience, InlineAudience):
        # Their contacts were kept for this event at intake (event_contacts), not in their record.
        mapping = recipients.ensure_users(conn, [person.user_id for person in audience.recipients[start:end]])
        total = len(audience.recipients)
    else:
        assert isinstance(audience, UserIdsAudience)
        mapping = recipients.ensure_users(conn, audience.user_ids[start:end])
        total = len(audience.user_ids)
    return list(mapping.values()), (str(end) if end < total else None)


def plan_page(
    engine: Engine,
    router: Router,
    event: Event,
    cursor: str,
    *,
    page_size: int,
    announce_all_above: int,
) -> Page:
    """Resolve one audience page and put it on the plan; the batches come back to be enqueued.

    An ``{"all": true}`` audience bigger than ``announce_all_above`` is told one by one *and*
    gets the public announcement at once, on the first page: waiting for individual
    failures among that many people would leave the public uninformed for too long.
    """
    now = utcnow()
    with engine.begin() as conn:
        refs, next_cursor = _page_refs(conn, event, cursor, page_size)
        dispatch = router.start(conn, event.event_id, refs, now)
        if cursor == "" and isinstance(audience_of(event), AllAudience):
            route = router.route_of(conn, event.event_id)
            if route is not None and route.plan.announce:
                everybody = int(conn.execute(select(func.count()).select_from(recipients_table)).scalar_one())
                if everybody > announce_all_above:
                    found = announcements.ensure(conn, topic_of(event), event.type, event.event_id, now, router.slug)
                    if not found.public:
                        dispatch.publish.add(found.id)
    return Page(dispatch=dispatch, next_cursor=next_cursor, count=len(refs))


def finish_page(engine: Engine, event_id: str, cursor: str, page: Page) -> bool:
    """Record that the page's batches are enqueued; False if a copy of this step got there first."""
    with engine.begin() as conn:
        return advance_fanout(conn, event_id, cursor, page.next_cursor, page.count)
