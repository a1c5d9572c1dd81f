"""Fan-out: turn one page of an event's audience into per-channel delivery batches.

The audience is streamed a page at a time (never held whole in memory): each fan-out
message handles one page, enqueues that page's batches, then moves the event's cursor
forward with a compare-and-set and hands the next page to a new message. Running a page
twice (a redelivery) only re-enqueues batches whose keys the ledger already guards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine

from channels import get_spec
from channels.base import Recipient
from worker.errors import DeliveryError, PermanentDeliveryError
from worker.events import AllAudience, Event, InlineAudience, UserIdsAudience, audience_of
from worker.rendering import channel_covers
from worker.store import ledger, recipients
from worker.store.intake import advance_fanout


@dataclass(frozen=True, slots=True)
class Batch:
    """Recipients of one event to send on one channel, as one broker message."""

    event_id: str
    channel: str
    refs: list[str]


@dataclass(frozen=True, slots=True)
class Page:
    """What one fan-out step produced; ``next_cursor`` is None after the last page."""

    batches: list[Batch] = field(default_factory=list)
    next_cursor: str | None = None
    count: int = 0
    failed_at_once: int = 0


def _page_refs(
    conn: Connection, event: Event, cursor: str, page_size: int
) -> tuple[dict[str, str], recipients.ContactProblems, str | None]:
    """Refs (user_id → ref) of the page at ``cursor``, contact problems, and the next cursor."""
    audience = audience_of(event)
    if isinstance(audience, AllAudience):
        refs = recipients.page_all(conn, cursor, page_size)
        next_cursor = refs[-1] if len(refs) == page_size else None
        return {ref: ref for ref in refs}, recipients.ContactProblems(), next_cursor
    start = int(cursor or 0)
    end = start + page_size
    if isinstance(audience, InlineAudience):
        people = audience.recipients[start:end]
        mapping, problems = recipients.upsert_people(conn, people)
        total = len(audience.recipients)
    else:
        assert isinstance(audience, UserIdsAudience)
        mapping = recipients.ensure_users(conn, audience.user_ids[start:end])
        problems = recipients.ContactProblems()
        total = len(audience.user_ids)
    return mapping, problems, (str(end) if end < total else None)


def _unreachable(
    channel: str, people: dict[str, str], loaded: dict[str, Recipient], problems: recipients.ContactProblems
) -> dict[str, DeliveryError]:
    """Recipients this channel cannot even try, with the reason (no or unusable contact)."""
    contact = get_spec(channel).contact
    failures: dict[str, DeliveryError] = {}
    if contact is None:
        return failures
    known: dict[str, str] = getattr(problems, contact, {})
    for user_id, ref in people.items():
        person = loaded.get(ref)
        if person is not None and getattr(person, contact, None):
            continue
        if user_id in known:
            failures[ref] = PermanentDeliveryError(known[user_id], code="invalid-contact")
        else:
            failures[ref] = PermanentDeliveryError(f"no {contact.replace('_', ' ')} on record", code="no-contact")
    return failures


def plan_page(
    engine: Engine, event: Event, cursor: str, *, channels: Sequence[str], page_size: int, batch_size: int
) -> Page:
    """Resolve one audience page, open its delivery rows, and cut it into batches."""
    event_id = event.event_id
    with engine.begin() as conn:
        people, problems, next_cursor = _page_refs(conn, event, cursor, page_size)
        loaded = recipients.load(conn, people.values())
        # For an {"all": true} page the mapping is ref → ref; translate to user ids for problems.
        if isinstance(audience_of(event), AllAudience):
            people = {person.user_id: ref for ref, person in loaded.items()}
        batches: list[Batch] = []
        failed = 0
        refs = list(people.values())
        for channel in [c for c in channels if channel_covers(c, event.type)]:
            failures = _unreachable(channel, people, loaded, problems)
            failed += len(failures)
            to_send = ledger.open_deliveries(conn, event_id, channel, refs, failures=failures)
            for i in range(0, len(to_send), batch_size):
                batches.append(Batch(event_id, channel, to_send[i : i + batch_size]))
    return Page(batches=batches, next_cursor=next_cursor, count=len(refs), failed_at_once=failed)


def finish_page(engine: Engine, event_id: str, cursor: str, page: Page) -> bool:
    """Record that the page's batches are enqueued; False if a copy of this step got there first."""
    with engine.begin() as conn:
        return advance_fanout(conn, event_id, cursor, page.next_cursor, page.count)
