"""Station letters: the in-site inbox, per user, with read/unread."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, update

from worker.core.clock import as_utc, utcnow
from worker.store.dialect import insert_ignoring_conflicts
from worker.store.moves import Move, acknowledge
from worker.store.schema import letters, recipients


@dataclass(frozen=True, slots=True)
class Letter:
    """One station letter as its reader sees it."""

    id: int
    event_id: str
    subject: str
    body: str
    locale: str
    created_at: datetime
    read: bool


def deliver_letters(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Put letters in inboxes; a letter already there for (event, recipient) stays as it is."""
    now = utcnow()
    insert_ignoring_conflicts(
        conn,
        letters,
        [{**row, "created_at": now, "read_at": None} for row in rows],
        "event_id",
        "recipient_ref",
    )


def inbox(conn: Connection, user_id: str, *, unread_only: bool = False, limit: int = 50) -> list[Letter]:
    """A user's letters, newest first."""
    stmt = (
        select(letters)
        .join(recipients, recipients.c.ref == letters.c.recipient_ref)
        .where(recipients.c.user_id == user_id)
        .order_by(letters.c.id.desc())
        .limit(limit)
    )
    if unread_only:
        stmt = stmt.where(letters.c.read_at.is_(None))
    return [
        Letter(
            id=row.id,
            event_id=row.event_id,
            subject=row.subject,
            body=row.body,
            locale=row.locale,
            created_at=as_utc(row.created_at),
            read=row.read_at is not None,
        )
        for row in conn.execute(stmt)
    ]


def mark_read(conn: Connection, user_id: str, letter_id: int) -> bool:
    """Mark one of the user's own letters read; False if it is not theirs, not there or read already."""
    return read_letter(conn, user_id, letter_id) is not False


def read_letter(conn: Connection, user_id: str, letter_id: int) -> Move | bool:
    """Mark one of the user's own letters read, which confirms its station-letter delivery.

    Returns the delivery's ``Move`` to acknowledged (for routing: the person is reached),
    True when the letter was marked read but its delivery had nothing left to confirm, and
    False when the letter is not theirs, not there, or was read already.
    """
    owner = select(recipients.c.ref).where(recipients.c.user_id == user_id).scalar_subquery()
    row = conn.execute(
        update(letters)
        .where(letters.c.id == letter_id, letters.c.recipient_ref == owner, letters.c.read_at.is_(None))
        .values(read_at=utcnow())
        .returning(letters.c.event_id, letters.c.recipient_ref)
    ).first()
    if row is None:
        return False
    moved = acknowledge(conn, row.event_id, row.recipient_ref, "insite", "the station letter was read")
    return moved if moved is not None else True


def unread_count(conn: Connection, user_id: str) -> int:
    """How many unread letters a user has."""
    stmt = (
        select(func.count())
        .select_from(letters.join(recipients, recipients.c.ref == letters.c.recipient_ref))
        .where(recipients.c.user_id == user_id, letters.c.read_at.is_(None))
    )
    return int(conn.execute(stmt).scalar_one())


def letter_count(conn: Connection, event_id: str) -> int:
    """How many letters an event put in inboxes."""
    return int(conn.execute(select(func.count()).where(letters.c.event_id == event_id)).scalar_one())
