"""Publishing the public announcement: build the site from the database, write it, then
mark it public and cover everyone who was waiting for it.

The site is rebuilt whole from the database on every publication, under a lock that every
publisher on the host shares, so two publications at once can never leave an older build
on top of a newer one. Publishing again is harmless: the same rows give the same bytes.
Only once the files are written (the announcement *is* public) are the waiting recipients
marked covered, each with a ledger row naming the announcement and when it went public.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from channels.announcement import Publication
from worker.clock import utcnow
from worker.events import SecurityIncident
from worker.runtime import Runtime
from worker.site import AnnouncementView, SiteBuilder, TimelineEntry
from worker.statuses import RouteMark
from worker.store import announcements
from worker.store.engine import read_only
from worker.store.ledger import Note, note

log = logging.getLogger("herald.publishing")

#: The ledger's recipient for rows about the public itself (the announcement going up).
PUBLIC = "public"


@dataclass(frozen=True, slots=True)
class Published:
    """What one publication did; ``again`` when a newer revision arrived meanwhile."""

    announcement_id: str
    revision: int
    url: str
    covered: int
    again: bool


@contextmanager
def _build_lock(site: Path) -> Iterator[None]:
    site.mkdir(parents=True, exist_ok=True)
    with open(site / ".build.lock", "w") as handle:
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
        views = [_view(rt, a, timelines[a.id], locales, now) for a in shown]
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
            files=builder.build(views, generated_at=now),
        )
        receipt = rt.run(rt.publisher().publish(publication))
    webhook = ""
    code = None
    if receipt.webhook_error is not None:
        webhook = f"; the webhook refused it: {receipt.webhook_error.message}"
        code = receipt.webhook_error.code
    elif receipt.webhook_status is not None:
        webhook = f"; webhook answered {receipt.webhook_status}"
    with rt.engine.begin() as conn:
        public = announcements.mark_published(conn, announcement_id, target.revision, utcnow())
        note(
            conn,
            [
                Note(
                    newest.event_id,
                    PUBLIC,
                    "announcement",
                    target.revision,
                    RouteMark.PUBLISHED,
                    f"announcement {announcement_id} revision {target.revision} public at {url}{webhook}",
                    reference=announcement_id,
                    code=code,
                )
            ],
        )
        covered = rt.router.cover(conn, public, utcnow())
    log.info(
        "announcement %s revision %d published (%d files); %d recipients covered",
        announcement_id,
        target.revision,
        receipt.files_written,
        covered,
    )
    return Published(announcement_id, target.revision, url, covered, again=public.revision > target.revision)


def _view(
    rt: Runtime, row: announcements.Announcement, event_ids: list[str], locales: tuple[str, ...], now: datetime
) -> AnnouncementView:
    """An announcement with its timeline rendered in every locale."""
    entries = []
    for event_id in event_ids:
        event = rt.event(event_id)
        status = event.data.status.value if isinstance(event, SecurityIncident) else None
        zones = rt.settings.locale_time_zones
        content = {locale: rt.renderer.render(event, "announcement", locale, zones.get(locale)) for locale in locales}
        entries.append(TimelineEntry(event_id=event_id, status=status, posted_at=event.occurred_at, content=content))
    return AnnouncementView(
        id=row.id,
        event_type=row.event_type,
        first_public_at=row.first_public_at or now,
        updated_at=max(entry.posted_at for entry in entries),
        revision=row.revision,
        entries=tuple(entries),
    )
