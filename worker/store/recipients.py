"""The recipients table: the stored record of every person, and their contact details.

Everybody in an audience gets a row and a random pseudonymous ``ref``; every other table
names people by that ref. Only ``herald recipients import`` writes contacts here: an event
that lists people inline keeps its contacts in ``event_contacts`` for that event, and
``load``/``load_reach`` lay them over the stored record when given that event's id.
"""

from __future__ import annotations

import csv
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select

from worker.core.clock import utcnow
from worker.core.contacts import check_email, check_phone
from worker.core.messages import Recipient
from worker.intake.events import RecipientIn
from worker.store import event_contacts
from worker.store.dialect import insert_ignoring_conflicts, upsert
from worker.store.schema import recipients

CSV_COLUMNS = ("user_id", "name", "email", "phone", "locale", "opt_out", "time_zone")


@dataclass(frozen=True, slots=True)
class ContactProblems:
    """Per user: why a given email or phone could not be used."""

    email: dict[str, str] = field(default_factory=dict)
    phone: dict[str, str] = field(default_factory=dict)


def _row(person: RecipientIn, problems: ContactProblems, allowed_special_domains: Collection[str]) -> dict[str, Any]:
    now = utcnow()
    email = check_email(person.email, allowed_special_domains=allowed_special_domains) if person.email else None
    phone = check_phone(person.phone) if person.phone else None
    if email is not None and email.problem:
        problems.email[person.user_id] = email.problem
    if phone is not None and phone.problem:
        problems.phone[person.user_id] = phone.problem
    return {
        "ref": uuid.uuid4().hex,
        "user_id": person.user_id,
        "name": person.name,
        "email": email.value if email else None,
        "phone": phone.value if phone else None,
        "locale": person.locale,
        # Kept so that a later fallback stage can still say why an address was unusable.
        "email_problem": email.problem[:300] if email is not None and email.problem else None,
        "phone_problem": phone.problem[:300] if phone is not None and phone.problem else None,
        "opt_out": ",".join(sorted(set(person.opt_out))) or None,
        "time_zone": person.time_zone,
        "created_at": now,
        "updated_at": now,
    }


_REFRESHED = [
    "name",
    "email",
    "phone",
    "locale",
    "email_problem",
    "phone_problem",
    "opt_out",
    "time_zone",
    "updated_at",
]


def upsert_people(
    conn: Connection, people: Sequence[RecipientIn], *, allowed_special_domains: Collection[str] = ()
) -> tuple[dict[str, str], ContactProblems]:
    """Store or refresh people's records (an import); returns user_id → ref and any contact problems.

    ``allowed_special_domains``: special-use mail domains accepted anyway (see ``check_email``).
    """
    problems = ContactProblems()
    rows = {person.user_id: _row(person, problems, allowed_special_domains) for person in people}
    upsert(conn, recipients, list(rows.values()), "user_id", _REFRESHED)
    return refs_for(conn, list(rows)), problems


def ensure_users(conn: Connection, user_ids: Sequence[str]) -> dict[str, str]:
    """Refs for users named by id; an unknown user gets a row without contacts."""
    now = utcnow()
    rows = [
        {
            "ref": uuid.uuid4().hex,
            "user_id": uid,
            "name": "",
            "locale": "en",
            "created_at": now,
            "updated_at": now,
        }
        for uid in dict.fromkeys(user_ids)
    ]
    insert_ignoring_conflicts(conn, recipients, rows, "user_id")
    return refs_for(conn, list(dict.fromkeys(user_ids)))


def refs_for(conn: Connection, user_ids: Sequence[str]) -> dict[str, str]:
    """Map user ids to their refs."""
    if not user_ids:
        return {}
    rows = conn.execute(select(recipients.c.user_id, recipients.c.ref).where(recipients.c.user_id.in_(user_ids)))
    return {user_id: ref for user_id, ref in rows}


def page_all(conn: Connection, after_ref: str, limit: int) -> list[str]:
    """The next page of every recipient's ref, in ref order (keyset pagination)."""
    rows = conn.execute(
        select(recipients.c.ref).where(recipients.c.ref > after_ref).order_by(recipients.c.ref).limit(limit)
    )
    return [ref for (ref,) in rows]


def load(conn: Connection, refs: Iterable[str], *, event_id: str | None = None) -> dict[str, Recipient]:
    """The recipients with these refs, with their contacts; with ``event_id``, as that event
    gave them inline where it did (see ``worker.store.event_contacts``)."""
    refs = list(refs)
    if not refs:
        return {}
    rows = conn.execute(select(recipients).where(recipients.c.ref.in_(refs)))
    given = event_contacts.given_for(conn, event_id, refs) if event_id is not None else {}
    people: dict[str, Recipient] = {}
    for row in rows:
        said = given.get(row.ref, _NOTHING_GIVEN)
        people[row.ref] = Recipient(
            ref=row.ref,
            user_id=row.user_id,
            name=row.name if said.name is None else said.name,
            email=said.email if said.gives_email else row.email,
            phone=said.phone if said.gives_phone else row.phone,
            locale=said.locale or row.locale,
            time_zone=said.time_zone or row.time_zone,
        )
    return people


_NOTHING_GIVEN = event_contacts.GivenContact()


@dataclass(frozen=True, slots=True)
class Reach:
    """What routing needs to know about a person: which contacts exist, why not, and opt-outs."""

    ref: str
    email: bool
    phone: bool
    email_problem: str | None
    phone_problem: str | None
    opt_out: frozenset[str]

    def contact_problem(self, contact: str) -> str | None:
        """Why ``contact`` ("email" or "phone") cannot be used, or None when it can."""
        if getattr(self, contact):
            return None
        return getattr(self, f"{contact}_problem", None) or f"no {contact} on record"


def load_reach(conn: Connection, refs: Iterable[str], *, event_id: str | None = None) -> dict[str, Reach]:
    """Reachability of these refs, without reading the contacts themselves; with
    ``event_id``, as that event gave them inline (its opt-outs add to the stored ones)."""
    refs = list(refs)
    if not refs:
        return {}
    c = recipients.c
    rows = conn.execute(
        select(
            c.ref,
            c.email.is_not(None),
            c.phone.is_not(None),
            c.email_problem,
            c.phone_problem,
            c.opt_out,
        ).where(c.ref.in_(refs))
    )
    given = event_contacts.given_for(conn, event_id, refs) if event_id is not None else {}
    reach: dict[str, Reach] = {}
    for ref, email, phone, email_problem, phone_problem, opt_out in rows:
        said = given.get(ref, _NOTHING_GIVEN)
        if said.gives_email:
            email, email_problem = said.email is not None, said.email_problem
        if said.gives_phone:
            phone, phone_problem = said.phone is not None, said.phone_problem
        opted_out = _channels(opt_out) | said.opt_out
        reach[ref] = Reach(ref, bool(email), bool(phone), email_problem, phone_problem, opted_out)
    return reach


def _channels(text: str | None) -> frozenset[str]:
    return frozenset(part for part in (text or "").split(",") if part)


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What `herald recipients import` did."""

    imported: int
    problems: list[str]


def import_csv(
    conn: Connection, path: Path, chunk: int = 1_000, *, allowed_special_domains: Collection[str] = ()
) -> ImportResult:
    """Load recipients from a CSV with a header row (user_id,name,email,phone,locale[,opt_out,time_zone]).

    ``opt_out`` lists channels separated by spaces or semicolons, e.g. ``sms;phone``.

    Rows with an unusable contact are imported without it and listed in ``problems``;
    rows without a user_id are skipped and listed.

    Raises:
        ValueError: the header lacks a ``user_id`` column.
    """
    imported, messages, batch = 0, [], []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "user_id" not in reader.fieldnames:
            raise ValueError(f"{path.name}: the header must include user_id (columns: {', '.join(CSV_COLUMNS)})")
        for line, raw in enumerate(reader, start=2):
            values = {k: (raw.get(k) or "").strip() for k in CSV_COLUMNS}
            try:
                person = RecipientIn(
                    user_id=values["user_id"],
                    name=values["name"],
                    email=values["email"] or None,
                    phone=values["phone"] or None,
                    locale=values["locale"] or "en",
                    opt_out=[part for part in values["opt_out"].replace(";", " ").replace(",", " ").split() if part],
                    time_zone=values["time_zone"] or None,
                )
            except ValueError as exc:
                messages.append(f"line {line}: skipped: {str(exc).splitlines()[0]}")
                continue
            batch.append(person)
            if len(batch) >= chunk:
                imported += _import_batch(conn, batch, messages, allowed_special_domains)
                batch = []
    imported += _import_batch(conn, batch, messages, allowed_special_domains)
    return ImportResult(imported=imported, problems=messages)


def _import_batch(
    conn: Connection, batch: list[RecipientIn], messages: list[str], allowed_special_domains: Collection[str]
) -> int:
    if not batch:
        return 0
    _, problems = upsert_people(conn, batch, allowed_special_domains=allowed_special_domains)
    for user_id, problem in {**problems.email, **problems.phone}.items():
        messages.append(f"user {user_id}: {problem}")
    return len({p.user_id for p in batch})
