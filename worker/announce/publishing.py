"""Publishing the public announcement: build the site from the database, write it, then
mark it public and cover everyone who was waiting for it.

The site is rebuilt whole from the database on every publication, under a lock that every
publisher on the host shares, so two publications at once can never leave an older build
on top of a newer one. Publishing again is harmless: the same rows give the same bytes.
Only once the files are written (the announcement *is* public) are the waiting recipients
marked covered, each with a ledger row naming the announcement and when it went public.

One announcement never stops another. Each announcement's pages are built on their own
(``SiteBuilder.build_each``) and the indexes and feeds list those that could be built:

* a timeline entry whose templates (or whose stored event) fail is shown in plain words
  (``worker.announce.plain_entry``), so the announcement still goes up and covers its people; the
  ledger says so (``plain``, recipient ``public``);
* an announcement whose pages still cannot be built is left out. When it is the one being
  published, the failure is counted against it (``announcements.failures`` and ``failure``)
  and recorded in the ledger (``failed``, recipient ``public``); after ``BUILD_ATTEMPTS`` in a
  row, the people waiting for it end ``unreached`` with the reason, and the dead-man check
  stops trying until a new event of its topic gives it new content.

A folder that cannot be written is not the announcement's fault: it is a transient error
(``TransientDeliveryError``), tried again until the folder can be written.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from channels.announcement import Publication, PublishReceipt, map_os_error
from worker.announce.plain_entry import plain_content
from worker.announce.site import AnnouncementView, SiteBuilder, TimelineEntry
from worker.core.clock import utcnow
from worker.core.errors import failure_line
from worker.core.messages import Content
from worker.core.statuses import RouteMark
from worker.intake.events import IncidentStatus, SecurityIncident
from worker.runtime import Runtime
from worker.store import announcements
from worker.store.engine import read_only
from worker.store.ledger import Note, note

log = logging.getLogger("herald.publishing")

#: The ledger's recipient for rows about the public itself (the announcement going up).
PUBLIC = "public"
#: Publications in a row whose pages could not be built before the people waiting give up.
BUILD_ATTEMPTS = 3

_STATUSES = frozenset(status.value for status in IncidentStatus)


@dataclass(frozen=True, slots=True)
class Published:
    """What one publication did; ``again`` when a newer revision arrived meanwhile.

    ``failure`` says why its pages could not be built (then nothing was written, and
    ``unreached`` people who were waiting for it gave up).
    """

    announcement_id: str
    revision: int
    url: str
    covered: int
    again: bool
    failure: str | None = None
    unreached: int = 0


@dataclass(frozen=True, slots=True)
class PlainEntry:
    """A timeline entry shown in plain words in ``locales``, because of ``reason``."""

    event_id: str
    locales: tuple[str, ...]
    reason: str


@contextmanager
def _build_lock(site: Path) -> Iterator[None]:
    """Hold the site's build lock.

    Raises:
        TransientDeliveryError: the folder or its lock file cannot be created.
    """
    try:
        site.mkdir(parents=True, exist_ok=True)
        handle = open(site / ".build.lock", "w")  # noqa: SIM115 - closed below, after the unlock
    except OSError as exc:
        raise map_os_error(exc, "taking the build lock") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def publish_announcement(rt: Runtime, announcement_id: str) -> Published | None:
    """Publish one announcement (and refresh the site around it); None if it does not exist.

    Raises:
        TransientDeliveryError: the site could not be written or the webhook failed for now;
            dramatiq retries the message, and publishing again is safe.
    """
    settings = rt.settings
    locales = rt.policy.locales
    builder = SiteBuilder(rt.renderer, locales=locales, base_url=settings.resolved_announcements_url)
    with _build_lock(settings.resolved_announcements_dir):
        now = utcnow()
        with read_only(rt.engine) as conn:
            target = announcements.get(conn, announcement_id)
            if target is None:
                log.error("no announcement %s to publish", announcement_id)
                return None
            shown = announcements.on_site(conn, including=announcement_id)
            timelines = {a.id: announcements.topic_events(conn, a.topic) for a in shown}
        views: list[AnnouncementView] = []
        unbuilt: dict[str, str] = {}
        plain: list[PlainEntry] = []
        for row in shown:
            try:
                view, fell_back = _view(rt, row, timelines[row.id], locales, now)
            except SQLAlchemyError:
                raise  # the database, not the announcement: dramatiq tries again
            except Exception as exc:  # anything one announcement's data can set off
                unbuilt[row.id] = failure_line(exc)
                continue
            views.append(view)
            if row.id == announcement_id:
                plain = fell_back
        site = builder.build_each(views, generated_at=now)
        unbuilt.update(site.left_out)
        for other, reason in unbuilt.items():
            if other != announcement_id:
                log.warning("announcement %s is left out of the site: its pages cannot be built: %s", other, reason)
        if announcement_id in unbuilt:
            return _unbuildable(rt, target, timelines[announcement_id], unbuilt[announcement_id])
        mine = next(v for v in views if v.id == announcement_id)
        newest = mine.entries[-1]
        url = builder.page_url(announcement_id, locales[0])
        publication = Publication(
            announcement_id=announcement_id,
            revision=target.revision,
            event_id=newest.event_id,
            url=url,
            title=newest.content[locales[0]].subject,
            status=newest.status,
            files=site.files,
        )
        receipt = rt.run(rt.publisher().publish(publication))
        # Marked public under the build lock: a publication that starts after this one wrote
        # its files must find this announcement public, or its index would leave it out.
        public, covered = _mark_public(rt, target, newest.event_id, url, receipt, plain, now)
    for entry in plain:
        log.warning(
            "announcement %s shows event %s in plain words in %s: %s",
            announcement_id,
            entry.event_id,
            ", ".join(entry.locales),
            entry.reason,
        )
    log.info(
        "announcement %s revision %d published (%d files); %d recipients covered",
        announcement_id,
        target.revision,
        receipt.files_written,
        covered,
    )
    return Published(announcement_id, target.revision, url, covered, again=public.revision > target.revision)


def _mark_public(
    rt: Runtime,
    target: announcements.Announcement,
    event_id: str,
    url: str,
    receipt: PublishReceipt,
    plain: list[PlainEntry],
    now: datetime,
) -> tuple[announcements.Announcement, int]:
    """Record the revision as public (with the time its pages were built with, so a later build
    of the same rows gives the same bytes), note it and its plain entries the first time it
    goes up (publishing it again, after a retry, adds no rows), and cover everyone waiting;
    returns the row and how many were covered."""
    webhook = ""
    code = None
    if receipt.webhook_error is not None:
        webhook = f"; the webhook refused it: {receipt.webhook_error.message}"
        code = receipt.webhook_error.code
    elif receipt.webhook_status is not None:
        webhook = f"; webhook answered {receipt.webhook_status}"
    notes = [
        Note(
            event_id,
            PUBLIC,
            "announcement",
            target.revision,
            RouteMark.PUBLISHED,
            f"announcement {target.id} revision {target.revision} public at {url}{webhook}",
            reference=target.id,
            code=code,
        )
    ]
    notes += [
        Note(
            entry.event_id,
            PUBLIC,
            "announcement",
            target.revision,
            RouteMark.PLAIN,
            f"announcement {target.id} revision {target.revision} shows this event in plain words in "
            f"{', '.join(entry.locales)}: its templates failed: {entry.reason}",
            reference=target.id,
        )
        for entry in plain
    ]
    with rt.engine.begin() as conn:
        public = announcements.mark_published(conn, target.id, target.revision, now)
        if target.published_revision < target.revision:  # read under the build lock: no one else moved it
            note(conn, notes)
        covered = rt.router.cover(conn, public, utcnow())
    return public, covered


def _unbuildable(rt: Runtime, target: announcements.Announcement, event_ids: list[str], reason: str) -> Published:
    """Count a publication whose pages could not be built; at the bound, the people waiting give up."""
    with rt.engine.begin() as conn:
        failures = announcements.record_failure(conn, target.id, reason, utcnow())
        note(
            conn,
            [
                Note(
                    event_ids[-1] if event_ids else target.event_id,
                    PUBLIC,
                    "announcement",
                    target.revision,
                    RouteMark.FAILED,
                    f"announcement {target.id} revision {target.revision} could not be built "
                    f"(try {failures} in a row; people waiting give up after {BUILD_ATTEMPTS}): {reason}",
                    reference=target.id,
                )
            ],
        )
        unreached = rt.router.abandon(conn, target, reason, utcnow()) if failures >= BUILD_ATTEMPTS else 0
    log.error(
        "announcement %s revision %d could not be built (try %d in a row)%s: %s",
        target.id,
        target.revision,
        failures,
        f"; {unreached} recipients waiting for it end unreached" if unreached else "",
        reason,
    )
    return Published(target.id, target.revision, "", 0, again=False, failure=reason, unreached=unreached)


def _view(
    rt: Runtime, row: announcements.Announcement, event_ids: list[str], locales: tuple[str, ...], now: datetime
) -> tuple[AnnouncementView, list[PlainEntry]]:
    """An announcement with its timeline rendered in every locale, and the entries that had
    to be shown in plain words."""
    entries: list[TimelineEntry] = []
    plain: list[PlainEntry] = []
    for event_id in event_ids:
        entry, fell_back = _entry(rt, event_id, locales)
        entries.append(entry)
        if fell_back is not None:
            plain.append(fell_back)
    view = AnnouncementView(
        id=row.id,
        event_type=row.event_type,
        first_public_at=row.first_public_at or now,
        updated_at=max(entry.posted_at for entry in entries),
        revision=row.revision,
        entries=tuple(entries),
    )
    return view, plain


def _entry(rt: Runtime, event_id: str, locales: tuple[str, ...]) -> tuple[TimelineEntry, PlainEntry | None]:
    """One event of the timeline in every locale: with its templates where they work, in plain
    words where they (or the stored event itself) fail.

    Raises:
        SQLAlchemyError: the database could not be read.
    """
    zones = rt.settings.locale_time_zones
    content: dict[str, Content] = {}
    failed: dict[str, str] = {}
    status: str | None = None
    try:
        event = rt.event(event_id)
    except SQLAlchemyError:
        raise
    except Exception as exc:  # stored, yet no longer a valid event
        event = None
        failed = dict.fromkeys(locales, failure_line(exc))
    if event is not None:
        status = event.data.status.value if isinstance(event, SecurityIncident) else None
        for locale in locales:
            try:
                content[locale] = rt.renderer.render(event, "announcement", locale, zones.get(locale))
            except Exception as exc:  # one entry's template failing must not stop the page
                failed[locale] = failure_line(exc)
    if not failed and event is not None:
        return TimelineEntry(event_id=event_id, status=status, posted_at=event.occurred_at, content=content), None
    with read_only(rt.engine) as conn:
        occurred_at, stored = announcements.event_as_stored(conn, event_id)
    for locale in failed:
        content[locale] = plain_content(stored, locale)
    if event is None:
        data = stored.get("data")
        raw_status = (
            data.get("status") if isinstance(data, dict) and stored.get("type") == "security_incident" else None
        )
        status = raw_status if raw_status in _STATUSES else None
    posted_at = event.occurred_at if event is not None else occurred_at
    reason = "; ".join(dict.fromkeys(failed.values()))
    entry = TimelineEntry(event_id=event_id, status=status, posted_at=posted_at, content=content)
    return entry, PlainEntry(event_id, tuple(failed), reason)
