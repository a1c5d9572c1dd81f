"""The public announcement site, rendered from announcement data: ``SiteBuilder.build(...)``.

The privacy policy promises that when people cannot be told one by one, herald *publishes an
announcement*. This module turns the announcements (one per topic, each with its timeline of
events) into every file of a static site, as bytes, and does nothing else: no database, no
clock, no I/O, so the same announcements always give the same bytes, and publishing them
again changes nothing (``channels.announcement`` writes them).

Per locale the site has an index (most recently updated first), one page per announcement
(its whole timeline, newest first), an Atom 1.0 feed and a JSON Feed 1.1; a language chooser
sits at the root. Links inside HTML are relative, so the folder works wherever it is served;
links in feeds are absolute (``base_url``), as feed readers need.

Safety: the chrome templates (``templates/_site/<locale>/``, and ``_site/layout.html`` that they
extend) run in the renderer's sandbox with autoescape. Only the entries' HTML fragments, which
the renderer produced with autoescape from the announcement templates, go in as ``Markup``;
titles and everything else are plain values and get escaped. Feeds are built with
``xml.etree.ElementTree`` and ``json``, which escape for their formats.
"""

from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import jinja2
from markupsafe import Markup

from worker.core.clock import as_utc
from worker.core.errors import ConfigurationError, failure_line
from worker.core.messages import Content
from worker.delivery.rendering import FALLBACK_LOCALE, Renderer
from worker.intake.samples import sample_event

#: Longest slug ``announcement_slug`` returns.
MAX_SLUG_CHARS = 80
#: Hex characters of the topic's sha256 that end a slug which had to be cut or lost characters.
SLUG_HASH_CHARS = 8
#: Where the chrome templates live inside the templates folder (ignored by locale discovery).
SITE_TEMPLATES = "_site"

ATOM_NS = "http://www.w3.org/2005/Atom"
JSON_FEED_VERSION = "https://jsonfeed.org/version/1.1"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*$")
# Characters XML 1.0 cannot carry at all, even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One event of the announcement's topic, as the public sees it."""

    event_id: str
    status: str | None
    posted_at: datetime
    content: Mapping[str, Content]


@dataclass(frozen=True, slots=True)
class AnnouncementView:
    """One announcement and its timeline (``entries`` oldest first)."""

    id: str
    event_type: str
    first_public_at: datetime
    updated_at: datetime
    revision: int
    entries: tuple[TimelineEntry, ...]


@dataclass(frozen=True, slots=True)
class SiteBuild:
    """The files of a site built announcement by announcement, and those left out, with why."""

    files: dict[str, bytes]
    left_out: dict[str, str]  # announcement id -> one line: why its pages could not be built


@dataclass(frozen=True, slots=True)
class SiteWords:
    """The words of the site's chrome that code, not a template, needs: feed titles, labels."""

    title: str
    language: str
    statuses: Mapping[str, str]


#: Chrome words per locale; a locale missing here uses English words (its templates are its own).
SITE_WORDS: dict[str, SiteWords] = {
    "en": SiteWords(
        title="Announcements",
        language="English",
        statuses={
            "investigating": "Investigating",
            "identified": "Identified",
            "monitoring": "Monitoring",
            "resolved": "Resolved",
        },
    ),
    "zh-CN": SiteWords(
        title="公告",
        language="简体中文",
        statuses={
            "investigating": "调查中",
            "identified": "已查明原因",
            "monitoring": "持续监控",
            "resolved": "已解决",
        },
    ),
}


def announcement_slug(topic: str) -> str:
    """The URL slug of a topic's announcement: readable, safe in a path, and stable for life.

    ``'incident:INC-2026-0042'`` → ``'incident-inc-2026-0042'``: lower-case ASCII letters and
    digits joined by single ``-``. A topic that had to be cut to ``MAX_SLUG_CHARS``, or that
    held characters the slug cannot show (``policy:隐私政策:2026-12``), ends with ``-`` and
    ``SLUG_HASH_CHARS`` hex characters of its sha256, so such topics never share a slug.
    Topics that differ only in case or punctuation do share one.
    """
    base = _NOT_SLUG.sub("-", topic.lower()).strip("-")
    if topic.isascii() and base and len(base) <= MAX_SLUG_CHARS:
        return base
    digest = hashlib.sha256(topic.encode("utf-8", "surrogatepass")).hexdigest()[:SLUG_HASH_CHARS]
    kept = base[: MAX_SLUG_CHARS - SLUG_HASH_CHARS - 1].rstrip("-") or "announcement"
    return f"{kept}-{digest}"


def page_path(slug: str, locale: str) -> str:
    """Where an announcement's page is, relative to the site root: ``en/<slug>.html``."""
    return f"{locale}/{slug}.html"


def rfc3339(moment: datetime) -> str:
    """A time as feeds want it: RFC 3339 in UTC, ``2026-11-23T14:05:00Z`` (in the moment's own
    offset, still RFC 3339, when UTC cannot hold it: ``0001-01-01T00:00:00+01:00``)."""
    return as_utc(moment).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class _Language:
    locale: str
    name: str
    href: str
    current: bool


@dataclass(frozen=True, slots=True)
class _Entry:
    """One timeline entry as a chrome template shows it."""

    anchor: str
    status: str | None
    status_label: str | None
    posted_at: datetime
    posted_iso: str
    lang: str
    html: Markup
    text: str


@dataclass(frozen=True, slots=True)
class _Page:
    """One announcement in one locale, ready for the templates and the feeds."""

    slug: str
    event_type: str
    href: str
    url: str
    title: str
    status: str | None
    status_label: str | None
    first_public_at: datetime
    first_public_iso: str
    updated_at: datetime
    updated_iso: str
    entries: tuple[_Entry, ...]  # newest first

    @property
    def newest(self) -> _Entry:
        """The latest entry: its words stand for the announcement in the index and feeds."""
        return self.entries[0]


class SiteBuilder:
    """Builds every file of the announcement site from announcements, in every locale.

    Args:
        renderer: its sandboxed environment renders the chrome (``templates/_site``).
        locales: the site's languages; the first is the primary one (the root's ``lang``).
        base_url: the public URL of the site root, e.g. ``https://example.com/announcements``.

    Raises:
        ConfigurationError: no locales, a malformed or repeated locale, a ``base_url`` that is
            not an absolute http(s) URL, or a chrome template missing for a locale.
    """

    def __init__(self, renderer: Renderer, *, locales: Sequence[str], base_url: str) -> None:
        self.renderer = renderer
        self.locales = tuple(locales)
        self.base_url = base_url.rstrip("/")
        if not self.locales:
            raise ConfigurationError("the announcement site needs at least one locale")
        bad = [loc for loc in self.locales if not _LOCALE.match(loc)]
        if bad:
            raise ConfigurationError(f"announcement site locale(s) {', '.join(map(repr, bad))} are not locale tags")
        if len(set(self.locales)) != len(self.locales):
            raise ConfigurationError(f"announcement site locales repeat: {', '.join(self.locales)}")
        if not re.match(r"^https?://[^/\s?#]+(?:/[^\s?#]*)?$", self.base_url):
            raise ConfigurationError(
                f"the announcement site's base URL must be an absolute http(s) URL, not {base_url!r}"
            )
        needed = renderer.site_template_files(None) + [
            path for loc in self.locales for path in renderer.site_template_files(loc)
        ]
        missing = [path for path in needed if not (renderer.templates_dir / path).is_file()]
        if missing:
            raise ConfigurationError(
                f"{len(missing)} announcement site template(s) missing under {renderer.templates_dir}: "
                f"{', '.join(missing)}"
            )

    def check(self) -> None:
        """Fail at start-up, not at the first publication, if a template the site needs is
        broken: renders a sample incident's announcement and builds its site in every locale.

        Raises:
            ConfigurationError: a template fails to render, naming it and the error.
        """
        event = sample_event("security_incident")
        moment = event.occurred_at
        try:
            content = {locale: self.renderer.render(event, "announcement", locale) for locale in self.locales}
        except jinja2.TemplateError as exc:
            raise _template_failed("an announcement template", exc) from exc
        entry = TimelineEntry(event.event_id, "investigating", moment, content)
        self.build([AnnouncementView("sample", event.type, moment, moment, 1, (entry,))], generated_at=moment)

    # --- URLs ---------------------------------------------------------------------------

    def page_url(self, slug: str, locale: str | None = None) -> str:
        """The public URL of an announcement's page; the primary locale's unless told."""
        return f"{self.base_url}/{page_path(slug, locale or self.locales[0])}"

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    # --- the site -----------------------------------------------------------------------

    def build(self, announcements: Sequence[AnnouncementView], *, generated_at: datetime) -> dict[str, bytes]:
        """Every file of the site, relative path → bytes: pages, then feeds, then indexes.

        ``generated_at`` is the feeds' ``updated`` time only when there are no announcements;
        otherwise that is the latest ``updated_at``, so unchanged data gives unchanged bytes.

        Raises:
            ValueError: an announcement id that is not a slug, a repeated id, an announcement
                without entries, or an entry without any rendered content.
            ConfigurationError: a chrome template fails to render (``check()`` finds this first).
        """
        seen: set[str] = set()
        for view in announcements:
            _check_view(view)
            if view.id in seen:
                raise ValueError(f"announcement id {view.id!r} appears twice")
            seen.add(view.id)
        return self._assemble({view.id: (view, self._pages(view)) for view in announcements}, generated_at)

    def build_each(self, announcements: Sequence[AnnouncementView], *, generated_at: datetime) -> SiteBuild:
        """The site, each announcement's pages built on their own: one whose pages (or whose
        place in the indexes and feeds) cannot be built is left out, with why, and the indexes
        and feeds list the others. Of a repeated id, the first is kept.

        Raises:
            ConfigurationError: the indexes or feeds fail even with every announcement that
                fails on its own left out (a chrome template broken for all; ``check()``
                finds this first).
        """
        left_out: dict[str, str] = {}
        built: dict[str, tuple[AnnouncementView, dict[str, tuple[_Page, bytes]]]] = {}
        for view in announcements:
            if view.id in built or view.id in left_out:
                continue
            try:
                _check_view(view)
                built[view.id] = (view, self._pages(view))
            except Exception as exc:  # anything one announcement's data can set off
                left_out[view.id] = failure_line(exc)
        try:
            files = self._assemble(built, generated_at)
        except Exception:
            # Find the announcements the indexes or feeds cannot show, each on its own.
            for announcement_id, one in list(built.items()):
                try:
                    self._assemble({announcement_id: one}, generated_at)
                except Exception as exc:
                    left_out[announcement_id] = failure_line(exc)
                    del built[announcement_id]
            files = self._assemble(built, generated_at)
        return SiteBuild(files=files, left_out=left_out)

    def _pages(self, view: AnnouncementView) -> dict[str, tuple[_Page, bytes]]:
        """One announcement in every locale: what the indexes and feeds show, and its page."""
        pages: dict[str, tuple[_Page, bytes]] = {}
        for locale in self.locales:
            page = self._page(view, locale)
            pages[locale] = (page, self._render_page(page, locale))
        return pages

    def _assemble(
        self, built: Mapping[str, tuple[AnnouncementView, Mapping[str, tuple[_Page, bytes]]]], generated_at: datetime
    ) -> dict[str, bytes]:
        """The built pages, and the feeds and indexes that list them."""
        views = [view for view, _pages in built.values()]
        ordered = sorted(views, key=lambda v: (as_utc(v.updated_at), v.id), reverse=True)
        updated = max((as_utc(v.updated_at) for v in ordered), default=as_utc(generated_at))

        pages: dict[str, bytes] = {}
        feeds: dict[str, bytes] = {}
        indexes: dict[str, bytes] = {}
        for locale in self.locales:
            rendered = [built[view.id][1][locale][0] for view in ordered]
            for view in ordered:
                page, html = built[view.id][1][locale]
                pages[page_path(page.slug, locale)] = html
            feeds[f"{locale}/feed.atom"] = self._atom(rendered, locale, updated)
            feeds[f"{locale}/feed.json"] = self._json_feed(rendered, locale)
            indexes[f"{locale}/index.html"] = self._render_index(rendered, locale, updated)
        indexes["index.html"] = self._render_root()
        return {**pages, **feeds, **indexes}

    def _page(self, view: AnnouncementView, locale: str) -> _Page:
        words = _words(locale)
        numbered = sorted(enumerate(view.entries), key=lambda pair: (as_utc(pair[1].posted_at), pair[0]), reverse=True)
        entries = tuple(self._entry(entry, position, locale, words) for position, entry in numbered)
        newest_content = _content_for(numbered[0][1], locale, self.locales)
        newest = entries[0]
        path = page_path(view.id, locale)
        return _Page(
            slug=view.id,
            event_type=view.event_type,
            href=f"{view.id}.html",
            url=self._url(path),
            title=newest_content.subject,
            status=newest.status,
            status_label=newest.status_label,
            first_public_at=as_utc(view.first_public_at),
            first_public_iso=rfc3339(view.first_public_at),
            updated_at=as_utc(view.updated_at),
            updated_iso=rfc3339(view.updated_at),
            entries=entries,
        )

    def _entry(self, entry: TimelineEntry, position: int, locale: str, words: SiteWords) -> _Entry:
        content = _content_for(entry, locale, self.locales)
        if content.html is not None:
            html = Markup(content.html)  # rendered with autoescape by the announcement template
        else:
            html = Markup('<p style="white-space:pre-line;">{}</p>').format(content.text.strip())
        return _Entry(
            anchor=f"update-{position + 1}",  # counted oldest first, so an anchor never moves
            status=entry.status,
            status_label=words.statuses.get(entry.status, entry.status) if entry.status else None,
            posted_at=as_utc(entry.posted_at),
            posted_iso=rfc3339(entry.posted_at),
            lang=content.locale,
            html=html,
            text=content.text,
        )

    def _languages(self, current: str, href: str) -> list[_Language]:
        """The site's languages, each linking to ``href`` (with ``{locale}``) from ``current``'s folder."""
        return [
            _Language(
                locale=loc,
                name=SITE_WORDS[loc].language if loc in SITE_WORDS else loc,
                href=href.format(locale=loc),
                current=loc == current,
            )
            for loc in self.locales
        ]

    # --- HTML ---------------------------------------------------------------------------

    def _render(self, name: str, **context: Any) -> bytes:
        path = f"{SITE_TEMPLATES}/{name}"
        try:
            html = self.renderer.env.get_template(path).render(**context)
        except jinja2.TemplateError as exc:
            raise _template_failed(path, exc) from exc
        # A lone surrogate cannot be UTF-8; should one get past validation, it must not stop the site.
        return (html.rstrip("\n") + "\n").encode("utf-8", "replace")

    def _render_page(self, page: _Page, locale: str) -> bytes:
        words = _words(locale)
        return self._render(
            f"{locale}/page.html",
            lang=locale,
            site_title=words.title,
            page=page,
            canonical_url=page.url,
            feed_url=self._url(f"{locale}/feed.atom"),
            json_feed_url=self._url(f"{locale}/feed.json"),
            languages=self._languages(locale, "../{locale}/" + page.href),
        )

    def _render_index(self, pages: list[_Page], locale: str, updated: datetime) -> bytes:
        words = _words(locale)
        return self._render(
            f"{locale}/index.html",
            lang=locale,
            site_title=words.title,
            announcements=pages,
            updated_at=updated,
            updated_iso=rfc3339(updated),
            canonical_url=self._url(f"{locale}/index.html"),
            feed_url=self._url(f"{locale}/feed.atom"),
            json_feed_url=self._url(f"{locale}/feed.json"),
            languages=self._languages(locale, "../{locale}/index.html"),
        )

    def _render_root(self) -> bytes:
        primary = self.locales[0]
        return self._render(
            "index.html",
            lang=primary,
            site_title=" · ".join(dict.fromkeys(_words(loc).title for loc in self.locales)),
            languages=self._languages(primary, "{locale}/index.html"),
            canonical_url=self._url("index.html"),
            feed_url=self._url(f"{primary}/feed.atom"),
        )

    # --- feeds --------------------------------------------------------------------------

    def _atom(self, pages: list[_Page], locale: str, updated: datetime) -> bytes:
        """An Atom 1.0 feed (RFC 4287): one entry per announcement, its newest words as content."""
        words = _words(locale)
        feed_url = self._url(f"{locale}/feed.atom")
        feed = ET.Element("feed", {"xmlns": ATOM_NS, _XML_LANG: locale})
        _text(feed, "id", feed_url)
        _text(feed, "title", words.title)
        _text(feed, "updated", rfc3339(updated))
        author = ET.SubElement(feed, "author")
        _text(author, "name", words.title)
        ET.SubElement(feed, "link", {"rel": "self", "type": "application/atom+xml", "href": feed_url})
        ET.SubElement(
            feed, "link", {"rel": "alternate", "type": "text/html", "href": self._url(f"{locale}/index.html")}
        )
        _text(feed, "generator", "herald")
        for page in pages:
            entry = ET.SubElement(feed, "entry")
            _text(entry, "id", page.url)
            _text(entry, "title", page.title)
            _text(entry, "updated", page.updated_iso)
            _text(entry, "published", page.first_public_iso)
            ET.SubElement(entry, "link", {"rel": "alternate", "type": "text/html", "href": page.url})
            if page.status is not None:
                ET.SubElement(entry, "category", {"term": page.status, "label": page.status_label or page.status})
            content = _text(entry, "content", str(page.newest.html))
            content.set("type", "html")
            if page.newest.lang != locale:
                content.set(_XML_LANG, page.newest.lang)
        ET.indent(feed)
        xml: bytes = ET.tostring(feed, encoding="utf-8", xml_declaration=True)
        return xml + b"\n"

    def _json_feed(self, pages: list[_Page], locale: str) -> bytes:
        """A JSON Feed 1.1: the same items as the Atom feed."""
        words = _words(locale)
        items: list[dict[str, Any]] = []
        for page in pages:
            item: dict[str, Any] = {
                "id": page.url,
                "url": page.url,
                "title": page.title,
                "content_html": str(page.newest.html),
                "content_text": page.newest.text,
                "date_published": page.first_public_iso,
                "date_modified": page.updated_iso,
            }
            if page.status is not None:
                item["tags"] = [page.status]
            if page.newest.lang != locale:
                item["language"] = page.newest.lang
            items.append(item)
        feed = {
            "version": JSON_FEED_VERSION,
            "title": words.title,
            "home_page_url": self._url(f"{locale}/index.html"),
            "feed_url": self._url(f"{locale}/feed.json"),
            "language": locale,
            "authors": [{"name": words.title}],
            "items": items,
        }
        return (json.dumps(feed, ensure_ascii=False, indent=2) + "\n").encode("utf-8", "replace")


def _check_view(view: AnnouncementView) -> None:
    """Refuse an announcement no page can be built from.

    Raises:
        ValueError: the id is not a slug, or the announcement has no entries.
    """
    if not _SLUG.match(view.id) or len(view.id) > MAX_SLUG_CHARS:
        raise ValueError(f"announcement id {view.id!r} is not a slug (see announcement_slug)")
    if not view.entries:
        raise ValueError(f"announcement {view.id!r} has no timeline entries")


def _words(locale: str) -> SiteWords:
    return SITE_WORDS.get(locale) or SITE_WORDS[FALLBACK_LOCALE]


def _content_for(entry: TimelineEntry, locale: str, locales: Sequence[str]) -> Content:
    """The entry's words in ``locale``; else English; else the first site locale that has some.

    Raises:
        ValueError: the entry has no content at all.
    """
    for candidate in (locale, FALLBACK_LOCALE, *locales):
        content = entry.content.get(candidate)
        if content is not None:
            return content
    for content in entry.content.values():
        return content
    raise ValueError(f"timeline entry {entry.event_id!r} has no rendered content")


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = _NOT_XML.sub("", text)
    return element


def _template_failed(name: str, exc: jinja2.TemplateError) -> ConfigurationError:
    line = ""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        # The error may be in a template this one extends (the layout): name the one it is in.
        name = exc.name or name
        line = f" line {exc.lineno}"
    message = " ".join(str(exc).split())
    return ConfigurationError(f"template {name}{line} fails: {type(exc).__name__}: {message}")
