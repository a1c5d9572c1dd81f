"""The event_contacts table: contacts an event gave inline, kept for that event only.

An event that lists its recipients inline says how to reach them *for this notice*; it does
not speak for what the person told the company. So those contacts never overwrite the
stored record (``recipients``, changed only by ``herald recipients import``): they are kept
here, one row per (event, person), and laid over the stored record when that event is
routed and delivered. A field the event left out falls back to the stored record, and an
event's opt-outs add to the person's stored ones, never replace them.

Like ``recipients``, this table holds personal data; retention can clear it without
touching the evidence, which names people only by ``recipient_ref``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, select

from worker.core.clock import utcnow
from worker.store.dialect import insert_ignoring_conflicts
from worker.store.schema import event_contacts


@dataclass(frozen=True, slots=True)
class GivenContact:
    """What an event said about one person, already checked; None means "not given".

    ``email_problem`` / ``phone_problem`` say why a given address or number is unusable
    (``email``/``phone`` is None then): the event's word holds for this notice, so the
    stored contact is not used in its place.
    """

    name: str | None = None
    email: str | None = None
    phone: str | None = None
    locale: str | None = None
    time_zone: str | None = None
    opt_out: frozenset[str] = frozenset()
    email_problem: str | None = None
    phone_problem: str | None = None

    @property
    def gives_email(self) -> bool:
        """Whether the event said anything about the email address (usable or not)."""
        return self.email is not None or self.email_problem is not None

    @property
    def gives_phone(self) -> bool:
        """Whether the event said anything about the phone number (usable or not)."""
        return self.phone is not None or self.phone_problem is not None


def record_given(conn: Connection, event_id: str, given: Mapping[str, GivenContact]) -> None:
    """Keep what the event said about each person (``given`` by ref); idempotent."""
    now = utcnow()
    rows = [
        {
            "event_id": event_id,
            "recipient_ref": ref,
            "name": person.name,
            "email": person.email,
            "phone": person.phone,
            "locale": person.locale,
            "time_zone": person.time_zone,
            "opt_out": ",".join(sorted(person.opt_out)) or None,
            "email_problem": person.email_problem[:300] if person.email_problem else None,
            "phone_problem": person.phone_problem[:300] if person.phone_problem else None,
            "created_at": now,
        }
        for ref, person in given.items()
    ]
    insert_ignoring_conflicts(conn, event_contacts, rows, "event_id", "recipient_ref")


def given_for(conn: Connection, event_id: str, refs: Iterable[str]) -> dict[str, GivenContact]:
    """What ``event_id`` said about each of ``refs`` (by ref); people it did not list are absent."""
    refs = list(refs)
    if not refs:
        return {}
    c = event_contacts.c
    rows = conn.execute(select(event_contacts).where(c.event_id == event_id, c.recipient_ref.in_(refs)))
    return {
        row.recipient_ref: GivenContact(
            name=row.name,
            email=row.email,
            phone=row.phone,
            locale=row.locale,
            time_zone=row.time_zone,
            opt_out=frozenset(part for part in (row.opt_out or "").split(",") if part),
            email_problem=row.email_problem,
            phone_problem=row.phone_problem,
        )
        for row in rows
    }


def copy_given(conn: Connection, from_event_id: str, to_event_id: str) -> None:
    """Give a derived event (a reminder of a change) what its parent event was given; idempotent."""
    c = event_contacts.c
    given = {row.recipient_ref: row for row in conn.execute(select(event_contacts).where(c.event_id == from_event_id))}
    rows = [{**row._asdict(), "event_id": to_event_id} for row in given.values()]
    insert_ignoring_conflicts(conn, event_contacts, rows, "event_id", "recipient_ref")
