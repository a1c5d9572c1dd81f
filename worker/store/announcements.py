"""The announcements table: one public announcement per topic, and its publication state.

``revision`` is bumped whenever the announcement's content changes (a new event of its
topic); ``published_revision`` is the newest revision that is public. An announcement is
public once ``first_public_at`` is set; the recipients it covers point at it by id.
``failures`` counts the publications in a row whose pages could not be built, ``failure``
says why the last one failed; both are cleared when a revision goes public, and a new
revision starts the count again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from worker.core.clock import as_utc
from worker.core.statuses import RouteOutcome
from worker.store.schema import announcements, events, routes


@dataclass(frozen=True, slots=True)
class Announcement:
    """One announcement's row."""

    id: str
    topic: str
    event_type: str
    event_id: str
    revision: int
    published_revision: int
    first_public_at: datetime | None
    published_at: datetime | None
    updated_at: datetime
    failures: int = 0
    failure: str | None = None

    @property
    def public(self) -> bool:
        """Whether it has gone public at least once."""
        return self.first_public_at is not None


def _from_row(row: Any) -> Announcement:
    return Announcement(
        id=row.id,
        topic=row.topic,
        event_type=row.event_type,
        event_id=row.event_id,
        revision=row.revision,
        published_revision=row.published_revision,
        first_public_at=as_utc(row.first_public_at) if row.first_public_at is not None else None,
        published_at=as_utc(row.published_at) if row.published_at is not None else None,
        updated_at=as_utc(row.updated_at),
        failures=row.failures,
        failure=row.failure,
    )


def ensure(
    conn: Connection, topic: str, event_type: str, event_id: str, now: datetime, slug: Callable[[str], str]
) -> Announcement:
    """The announcement of ``topic``, created (unpublished) if there is none yet."""
    found = by_topic(conn, topic)
    if found is not None:
        return found
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    base = slug(topic)
    # Two topics can sanitise to the same slug; the second gets a digest of its own topic.
    for candidate in (base, f"{base[:70]}-{hashlib.sha256(topic.encode()).hexdigest()[:8]}"):
        conn.execute(
            module.insert(announcements)
            .values(
                id=candidate,
                topic=topic,
                event_type=event_type,
                event_id=event_id,
                revision=1,
                published_revision=0,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing()
        )
        found = by_topic(conn, topic)
        if found is not None:
            return found
    raise RuntimeError(f"no free announcement id for topic {topic!r}")  # two sha256 prefixes collided


def by_topic(conn: Connection, topic: str) -> Announcement | None:
    """The announcement of a topic, if there is one."""
    row = conn.execute(select(announcements).where(announcements.c.topic == topic)).one_or_none()
    return _from_row(row) if row is not None else None


def get(conn: Connection, announcement_id: str) -> Announcement | None:
    """One announcement by id."""
    row = conn.execute(select(announcements).where(announcements.c.id == announcement_id)).one_or_none()
    return _from_row(row) if row is not None else None


def bump(conn: Connection, topic: str, now: datetime) -> str | None:
    """A new event of ``topic`` changes its announcement; returns the id to republish, if any."""
    row = conn.execute(
        update(announcements)
        .where(announcements.c.topic == topic)
        .values(revision=announcements.c.revision + 1, updated_at=now, failures=0)
        .returning(announcements.c.id)
    ).first()
    return row[0] if row is not None else None


def mark_published(conn: Connection, announcement_id: str, revision: int, now: datetime) -> Announcement:
    """Record that ``revision`` is public; the first publication's time is kept for ever."""
    conn.execute(
        update(announcements)
        .where(announcements.c.id == announcement_id, announcements.c.published_revision < revision)
        .values(
            published_revision=revision,
            published_at=now,
            first_public_at=func.coalesce(announcements.c.first_public_at, now),
            updated_at=now,
        )
    )
    conn.execute(
        update(announcements)
        .where(announcements.c.id == announcement_id, announcements.c.failure.is_not(None))
        .values(failures=0, failure=None)
    )
    found = get(conn, announcement_id)
    assert found is not None
    return found


def record_failure(conn: Connection, announcement_id: str, reason: str, now: datetime) -> int:
    """Count one more publication whose pages could not be built, with why; returns the count."""
    row = conn.execute(
        update(announcements)
        .where(announcements.c.id == announcement_id)
        .values(failures=announcements.c.failures + 1, failure=reason, updated_at=now)
        .returning(announcements.c.failures)
    ).first()
    return int(row[0]) if row is not None else 0


def on_site(conn: Connection, including: str | None = None) -> list[Announcement]:
    """Announcements that belong on the public site: those already public, and ``including``."""
    condition: ColumnElement[bool] = announcements.c.first_public_at.is_not(None)
    if including is not None:
        condition = condition | (announcements.c.id == including)
    rows = conn.execute(select(announcements).where(condition).order_by(announcements.c.created_at))
    return [_from_row(row) for row in rows]


def every(conn: Connection) -> list[Announcement]:
    """Every announcement, public or not yet, oldest first."""
    return [_from_row(row) for row in conn.execute(select(announcements).order_by(announcements.c.created_at))]


def stalled(conn: Connection, before: datetime, give_up_after: int, limit: int = 100) -> list[str]:
    """Announcements nobody has handed to a publisher since before ``before`` although they
    have an unpublished change (unless its pages failed to build ``give_up_after`` times in a
    row), or people still waiting for them to go public."""
    waiting = (
        select(routes.c.id)
        .where(routes.c.announcement_id == announcements.c.id, routes.c.outcome == RouteOutcome.COVERING.value)
        .exists()
    )
    rows = conn.execute(
        select(announcements.c.id)
        .where(
            announcements.c.updated_at < before,
            (
                (announcements.c.revision > announcements.c.published_revision)
                & (announcements.c.failures < give_up_after)
            )
            | waiting,
        )
        .limit(limit)
    )
    return [announcement_id for (announcement_id,) in rows]


def touch(conn: Connection, announcement_ids: list[str], now: datetime) -> None:
    """Mark announcements as just handed to a publisher, so the dead-man check waits a while."""
    if announcement_ids:
        conn.execute(update(announcements).where(announcements.c.id.in_(announcement_ids)).values(updated_at=now))


def topic_events(conn: Connection, topic: str) -> list[str]:
    """The ids of every accepted event of a topic, oldest first: the announcement's timeline."""
    rows = conn.execute(
        select(events.c.event_id).where(events.c.topic == topic).order_by(events.c.occurred_at, events.c.accepted_at)
    )
    return [event_id for (event_id,) in rows]


def event_as_stored(conn: Connection, event_id: str) -> tuple[datetime, dict[str, Any]]:
    """An event of a timeline as it was stored: when it occurred, and its JSON body, not
    validated again (for an entry whose templates, or whose model, fail on it).

    Raises:
        sqlalchemy.exc.NoResultFound: no event has that id.
    """
    row = conn.execute(select(events.c.occurred_at, events.c.body).where(events.c.event_id == event_id)).one()
    body = json.loads(row.body)
    return as_utc(row.occurred_at), body if isinstance(body, dict) else {}
