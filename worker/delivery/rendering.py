"""Turn an event into the words a channel sends: ``Renderer.render(event, channel, locale)``.

Templates live in ``templates/<event_type>/<locale>/<name>``; each channel uses a fixed set
of names (``CHANNEL_TEMPLATES``). Three things matter here:

* **Safety.** Templates run in Jinja2's immutable sandbox with ``StrictUndefined``; event
  fields reach them only as variables, never as template source, so ``{{ 7*7 }}`` in a title
  is printed as typed. HTML templates autoescape; subjects are forced onto one line, so a
  field cannot inject a mail header.
* **Cost.** Every recipient of one event in one locale gets the same ``Content``, so the
  result is cached per (event, channel, locale): a fan-out to thousands renders once.
* **Start-up checks.** ``check()`` names every missing template and renders every template
  against a sample event, so a broken template stops the worker before the first incident.
  ``check_pairs()`` does the same for exactly the (event type, channel) pairs a routing
  policy uses, and ``template_files()`` names the files one pair needs in one locale.

SMS and phone are text only. An SMS is cut to ``sms_max_segments`` with ``channels.sms_text.fit``
(a link to the full notice replaces what is cut), and ``check()`` refuses an SMS template
whose sample rendering is already longer than that. Only the event types in
``CHANNEL_EVENT_TYPES`` have phone templates. Besides ``datetime`` and ``date``,
templates get the filters ``squash`` (one line), ``clip(n)`` (cut between whole characters),
``sentence`` (end with a full stop) and ``spoken_datetime(locale)`` (a time read aloud).
"""

from __future__ import annotations

import hashlib
import re
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from channels.sms_text import clusters, fit, segments
from worker.core.clock import as_utc, in_zone, utc_label, ymd_hm
from worker.core.errors import ConfigurationError
from worker.core.messages import Content
from worker.intake.events import EVENT_TYPES, Event
from worker.intake.samples import sample_event

#: The locale every event type must have; the last resort of locale resolution.
FALLBACK_LOCALE = "en"

#: Longest subject a channel will be given, in characters (the ellipsis included).
MAX_SUBJECT_CHARS = 200


class ChannelTemplates(NamedTuple):
    """Template file names a channel renders: maybe a subject, a plain text body, maybe HTML.

    A channel without a subject template (SMS, phone) gets an empty ``Content.subject``.
    """

    subject: str | None
    text: str
    html: str | None = None


#: Which templates each channel renders; a channel missing here cannot be rendered.
CHANNEL_TEMPLATES: dict[str, ChannelTemplates] = {
    "email": ChannelTemplates("email_subject.txt", "email.txt", "email.html"),
    "insite": ChannelTemplates("insite_subject.txt", "insite.txt"),
    "sms": ChannelTemplates(None, "sms.txt"),
    "phone": ChannelTemplates(None, "phone.txt"),
    # The public announcement: a title, a plain-text entry (feeds, the webhook) and an HTML
    # fragment for the entry on the announcement's page (autoescaped).
    "announcement": ChannelTemplates("announcement_subject.txt", "announcement.txt", "announcement.html"),
}

#: The event types a channel has templates for, for channels that do not cover them all.
#: ``check()`` skips every other (event type, channel) pair, and ``render()`` refuses it
#: with a ``ConfigurationError``. A channel missing here covers every event type.
CHANNEL_EVENT_TYPES: dict[str, frozenset[str]] = {
    # A policy change is read, not heard: it has SMS templates but no call script.
    "phone": frozenset({"security_incident", "account_notice", "service_notice"}),
}

#: The public announcement site's chrome (``worker.announce.site``): ``_site/index.html``, its root
#: page, and in ``_site/<locale>/`` an index and a page per announcement for each locale;
#: all of them extend ``_site/layout.html``, the markup and CSS they share.
SITE_FOLDER = "_site"
SITE_ROOT_TEMPLATE = "index.html"
SITE_LAYOUT_TEMPLATE = "layout.html"
SITE_LOCALE_TEMPLATES = ("index.html", "page.html")

#: Default most segments an SMS may take (``HERALD_SMS_MAX_SEGMENTS``).
DEFAULT_SMS_MAX_SEGMENTS = 3

_CACHE_SIZE = 256
_DIGEST_CACHE_SIZE = 64
_RESOLVED_CACHE_SIZE = 1024


def format_datetime(value: datetime | date) -> str:
    """``2026-11-23 14:05 UTC``: one unambiguous form for every locale and reader's time zone.

    A moment UTC cannot hold (year 1 east of Greenwich) is shown in its own offset instead:
    ``0001-01-01 00:00 UTC+01:00``.
    """
    if isinstance(value, datetime):
        moment = as_utc(value)
        return f"{ymd_hm(moment)} {utc_label(moment)}"
    return value.isoformat()


def format_date(value: datetime | date) -> str:
    """``2026-11-23`` (the UTC date, or the moment's own where UTC cannot hold it): for days
    such as the one a policy takes effect."""
    if isinstance(value, datetime):
        return as_utc(value).date().isoformat()
    return value.isoformat()


_WHITESPACE = re.compile(r"\s+")

_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_SENTENCE_ENDS = ".!?。！？…"


def spoken_datetime(value: datetime | date, locale: str = FALLBACK_LOCALE) -> str:
    """A UTC time as it reads aloud: ``November 23, 2026, at 14:05 UTC`` or
    ``协调世界时2026年11月23日14点05分`` (``zh*`` locales); a moment UTC cannot hold is read in
    its own offset (``at 00:00 UTC+01:00``, ``UTC+01:00时间…``)."""
    moment = as_utc(value) if isinstance(value, datetime) else None
    day = moment.date() if moment is not None else value
    zone = utc_label(moment) if moment is not None else "UTC"
    if _locale_key(locale).startswith("zh"):
        spoken = f"{day.year}年{day.month}月{day.day}日"
        if moment is None:
            return spoken
        said = "协调世界时" if zone == "UTC" else f"{zone}时间"
        return f"{said}{spoken}{moment.hour}点{moment.minute:02d}分"
    spoken = f"{_MONTHS[day.month - 1]} {day.day}, {day.year}"
    return f"{spoken}, at {moment.hour:02d}:{moment.minute:02d} {zone}" if moment is not None else spoken


def squash(value: str) -> str:
    """All whitespace, line breaks included, collapsed into single spaces: for SMS and speech."""
    return _WHITESPACE.sub(" ", str(value)).strip()


def clip(value: str, limit: int) -> str:
    """``value`` cut to at most ``limit`` characters with an ellipsis, between whole characters
    (never splitting a base character from its combining marks) and at a space if one is near."""
    text = str(value)
    if len(text) <= limit:
        return text
    kept: list[str] = []
    length = 0
    for part in clusters(text):
        if length + len(part) > limit - 1:
            break
        kept.append(part)
        length += len(part)
    body = "".join(kept)
    space = body.rfind(" ", max(len(body) - 15, 0))
    if space > 0:
        body = body[:space]
    return body.rstrip(" ,;:，、；：") + "…"


def sentence(value: str, end: str = ".") -> str:
    """``value`` ending with sentence punctuation, adding ``end`` if it has none."""
    text = str(value).rstrip()
    return text if not text or text[-1] in _SENTENCE_ENDS else text + end


def one_line(value: str, limit: int = MAX_SUBJECT_CHARS) -> str:
    """Make ``value`` safe as a subject: one line, no control characters, at most ``limit`` chars.

    Mail headers end at CR/LF, so a line break that survived into a subject could inject a
    header; every control or separator character becomes a space, runs of spaces collapse.
    """
    cleaned = "".join(" " if unicodedata.category(ch) in ("Cc", "Zl", "Zp") else ch for ch in value)
    cleaned = _WHITESPACE.sub(" ", cleaned).strip()
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned


def _context(event: Event, time_zone: str = "UTC") -> dict[str, Any]:
    """What a template sees: the envelope and its data, as variables only, never as source,
    and ``reader`` (the reader's time zone) for templates that show local times."""
    return {"event": event, "data": event.data, "reader": {"time_zone": time_zone}}


def zone_or_utc(name: str | None) -> str:
    """``name`` if it is an IANA time zone this machine knows, else ``UTC``."""
    if not name:
        return "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder such as "America"
        return "UTC"
    return name


def format_local_date(value: datetime, time_zone: str = "UTC") -> str:
    """The day a moment falls on in the reader's zone, ``2027-03-14`` (in its own offset
    where the reader's zone cannot hold it)."""
    moment = as_utc(value)
    return (in_zone(moment, ZoneInfo(zone_or_utc(time_zone))) or moment).date().isoformat()


def format_local(value: datetime, time_zone: str = "UTC") -> str:
    """A moment in the reader's zone, unambiguous in any language:
    ``2027-03-14 06:00 (UTC-04:00, America/New_York)``; daylight saving shows in the offset.
    A moment that cannot be converted is shown in its own offset: ``0001-01-01 00:00 (UTC+01:00)``."""
    zone = zone_or_utc(time_zone)
    if zone == "UTC":
        return format_datetime(value)
    moment = as_utc(value)
    local = in_zone(moment, ZoneInfo(zone))
    if local is not None:
        return f"{ymd_hm(local)} ({utc_label(local)}, {zone})"
    if moment.utcoffset() == timedelta(0):
        return format_datetime(moment)
    return f"{ymd_hm(moment)} ({utc_label(moment)})"


def _locale_key(locale: str) -> str:
    return locale.strip().replace("_", "-").lower()


def channel_covers(channel: str, event_type: str) -> bool:
    """Whether ``channel`` has templates for ``event_type`` (see ``CHANNEL_EVENT_TYPES``)."""
    covered = CHANNEL_EVENT_TYPES.get(channel)
    return covered is None or event_type in covered


class Renderer:
    """Renders events with the templates in one directory, caching what every recipient shares.

    Thread-safe: one renderer serves every worker thread of a process.

    Args:
        templates_dir: the folder of ``<event_type>/<locale>/<name>`` templates.
        sms_max_segments: the most segments an SMS may take; a longer one is cut to fit.
        details_url: where the full notice is (e.g. the site inbox); it ends an SMS that had
            to be cut. ``None`` cuts with an ellipsis only.
    """

    def __init__(
        self,
        templates_dir: Path,
        *,
        sms_max_segments: int = DEFAULT_SMS_MAX_SEGMENTS,
        details_url: str | None = None,
    ) -> None:
        if sms_max_segments < 1:
            raise ConfigurationError(f"sms_max_segments must be at least 1, not {sms_max_segments}")
        self.templates_dir = Path(templates_dir)
        self.sms_max_segments = sms_max_segments
        self.details_url = details_url or None
        self.env = ImmutableSandboxedEnvironment(
            loader=jinja2.FileSystemLoader(self.templates_dir),
            undefined=jinja2.StrictUndefined,
            autoescape=jinja2.select_autoescape(["html"], default_for_string=False, default=False),
            trim_blocks=True,
            lstrip_blocks=True,
            # Templates are deployed with the code; a restart picks up changes, and no
            # render has to stat the file first.
            auto_reload=False,
        )
        self.env.filters["datetime"] = format_datetime
        self.env.filters["local"] = format_local
        self.env.filters["local_date"] = format_local_date
        self.env.filters["date"] = format_date
        self.env.filters["spoken_datetime"] = spoken_datetime
        self.env.filters["squash"] = squash
        self.env.filters["clip"] = clip
        self.env.filters["sentence"] = sentence
        self._lock = threading.Lock()
        self._contents: OrderedDict[tuple[str, str, str, str, str], Content] = OrderedDict()
        self._digests: OrderedDict[int, tuple[Event, str]] = OrderedDict()
        self._locales: dict[str, list[str]] = {}
        self._resolved: dict[tuple[str, str], str] = {}
        self._readers: dict[tuple[str, str, ChannelTemplates], bool] = {}

    # --- locales -----------------------------------------------------------------------

    def available_locales(self, event_type: str) -> list[str]:
        """The locales with a template folder for ``event_type``, sorted; empty if none."""
        with self._lock:
            cached = self._locales.get(event_type)
        if cached is not None:
            return list(cached)
        folder = self.templates_dir / event_type
        found = (
            sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
            if folder.is_dir()
            else []
        )
        with self._lock:
            self._locales[event_type] = found
        return list(found)

    def resolve_locale(self, event_type: str, locale: str) -> str:
        """The locale folder to use for a reader who asked for ``locale``.

        Exact match first (case-insensitive, ``_`` as ``-``); then the same language (``zh``
        or ``zh-TW`` → ``zh-CN``, ``en-GB`` → ``en``), preferring a bare-language folder;
        then English.

        Raises:
            ConfigurationError: nothing matches and there is no ``en`` folder either.
        """
        memo = (event_type, locale)
        with self._lock:
            hit = self._resolved.get(memo)
        if hit is not None:
            return hit
        resolved = self._resolve(event_type, locale)
        with self._lock:
            if len(self._resolved) >= _RESOLVED_CACHE_SIZE:  # locales come from users: stay bounded
                self._resolved.clear()
            self._resolved[memo] = resolved
        return resolved

    def _resolve(self, event_type: str, locale: str) -> str:
        available = self.available_locales(event_type)
        by_key = {_locale_key(name): name for name in available}
        wanted = _locale_key(locale or "")
        if wanted in by_key:
            return by_key[wanted]
        language = wanted.split("-", 1)[0]
        if language in by_key:
            return by_key[language]
        same_language = [name for key, name in sorted(by_key.items()) if key.split("-", 1)[0] == language]
        if same_language:
            return same_language[0]
        if FALLBACK_LOCALE in by_key:
            return by_key[FALLBACK_LOCALE]
        raise ConfigurationError(
            f"no templates for event type {event_type!r} in locale {locale!r} and no "
            f"{FALLBACK_LOCALE!r} fallback under {self.templates_dir}"
        )

    # --- rendering ---------------------------------------------------------------------

    def render(self, event: Event, channel: str, locale: str, time_zone: str | None = None) -> Content:
        """What ``event`` says on ``channel`` to readers of ``locale``; shared by all of them.

        ``time_zone`` matters only to templates that show times in the reader's zone (they
        use ``reader.time_zone``): their words are cached per zone, the others' per locale.

        An SMS is cut to ``sms_max_segments`` (``channels.sms_text.fit``); its subject is empty, as
        is a phone call's, whose text is what is read aloud.

        Raises:
            ConfigurationError: the channel has no templates (at all, or for this event type),
                or no locale folder fits.
            jinja2.TemplateError: a template is missing or broken (``check()`` finds these at
                start-up); ``jinja2.exceptions.SecurityError`` if it touches what the sandbox forbids.
        """
        names = self._templates_for(channel)
        if not channel_covers(channel, event.type):
            covered = ", ".join(sorted(CHANNEL_EVENT_TYPES[channel]))
            raise ConfigurationError(f"no {channel} template for {event.type}; {channel} covers {covered}")
        resolved = self.resolve_locale(event.type, locale)
        zone = zone_or_utc(time_zone) if self._reads_reader(event.type, resolved, names) else "UTC"
        key = (event.event_id, self._digest(event), channel, resolved, zone)
        with self._lock:
            cached = self._contents.get(key)
            if cached is not None:
                self._contents.move_to_end(key)
                return cached
        # Rendering happens outside the lock: two threads may render the same content at
        # once, which costs a little time and is otherwise harmless.
        content = self._render(event, names, channel, resolved, zone)
        with self._lock:
            self._contents[key] = content
            self._contents.move_to_end(key)
            while len(self._contents) > _CACHE_SIZE:
                self._contents.popitem(last=False)
        return content

    def _render(self, event: Event, names: ChannelTemplates, channel: str, locale: str, zone: str) -> Content:
        context = _context(event, zone)
        folder = f"{event.type}/{locale}"
        subject = ""
        if names.subject is not None:
            subject = one_line(self.env.get_template(f"{folder}/{names.subject}").render(context))
        text = self.env.get_template(f"{folder}/{names.text}").render(context).strip()
        if channel == "sms":
            # No trailing newline: it would cost a character and could cost a segment.
            text = fit(text, self.sms_max_segments, self.details_url)
        elif channel != "phone":
            text += "\n"
        html = None
        if names.html is not None:
            html = self.env.get_template(f"{folder}/{names.html}").render(context)
        return Content(
            cache_key=f"{event.event_id}:{channel}:{locale}" + (f":{zone}" if zone != "UTC" else ""),
            locale=locale,
            subject=subject,
            text=text,
            html=html,
        )

    def _reads_reader(self, event_type: str, locale: str, names: ChannelTemplates) -> bool:
        """Whether these templates (or those they include or import) show anything in the
        reader's own zone; found once per set, by parsing, not by rendering."""
        memo = (event_type, locale, names)
        with self._lock:
            known = self._readers.get(memo)
        if known is not None:
            return known
        todo = [f"{event_type}/{locale}/{name}" for name in names if name]
        seen: set[str] = set()
        reads = False
        while todo and not reads:
            path = todo.pop()
            if path in seen:
                continue
            seen.add(path)
            try:
                source, _, _ = self.env.loader.get_source(self.env, path)  # type: ignore[union-attr]
            except jinja2.TemplateNotFound:
                continue
            tree = self.env.parse(source)
            reads = "reader" in jinja2.meta.find_undeclared_variables(tree)
            todo += [name for name in jinja2.meta.find_referenced_templates(tree) if name]
        with self._lock:
            self._readers[memo] = reads
        return reads

    def _digest(self, event: Event) -> str:
        """A digest of what the templates can see, so a reused event_id never gets stale words.

        The audience is left out: templates are not personalised, and an inline audience can
        be large. The digest is remembered per event object (held, so its id is not reused).
        """
        ident = id(event)
        with self._lock:
            entry = self._digests.get(ident)
            if entry is not None and entry[0] is event:
                self._digests.move_to_end(ident)
                return entry[1]
        dumped = event.model_dump_json(exclude={"data": {"audience"}})
        digest = hashlib.sha256(dumped.encode()).hexdigest()
        with self._lock:
            self._digests[ident] = (event, digest)
            self._digests.move_to_end(ident)
            while len(self._digests) > _DIGEST_CACHE_SIZE:
                self._digests.popitem(last=False)
        return digest

    @staticmethod
    def _templates_for(channel: str) -> ChannelTemplates:
        try:
            return CHANNEL_TEMPLATES[channel]
        except KeyError:
            raise ConfigurationError(
                f"no templates for channel {channel!r}; rendered channels: {', '.join(CHANNEL_TEMPLATES)}"
            ) from None

    # --- start-up check ----------------------------------------------------------------

    def template_files(self, event_type: str, channel: str, locale: str) -> list[str]:
        """The files ``channel`` needs for ``event_type`` in exactly ``locale``, so a check can name what is missing.

        Paths are relative to ``templates_dir``. The locale folder is matched exactly (ignoring
        case, ``_`` as ``-``), never by language or English fallback: a fallback would hide a
        missing translation.

        Raises:
            ConfigurationError: an unknown event type or channel, or a channel that has no
                templates for the event type (``CHANNEL_EVENT_TYPES``).
        """
        names = self._templates_for(channel)
        if event_type not in EVENT_TYPES:
            raise ConfigurationError(f"unknown event type {event_type!r}; known: {', '.join(EVENT_TYPES)}")
        if not channel_covers(channel, event_type):
            covered = ", ".join(sorted(CHANNEL_EVENT_TYPES[channel]))
            raise ConfigurationError(f"no {channel} template for {event_type}; {channel} covers {covered}")
        folder = self._exact_folder(event_type, locale)
        return [f"{event_type}/{folder}/{name}" for name in filter(None, names)]

    def site_template_files(self, locale: str | None = None) -> list[str]:
        """The announcement site's templates for ``locale`` (``None``: its root page and the
        layout every page extends), for policies that announce."""
        if locale is None:
            return [f"{SITE_FOLDER}/{SITE_ROOT_TEMPLATE}", f"{SITE_FOLDER}/{SITE_LAYOUT_TEMPLATE}"]
        # The site builder opens ``_site/<locale>/`` as spelled, so no case-folding here.
        return [f"{SITE_FOLDER}/{locale}/{name}" for name in SITE_LOCALE_TEMPLATES]

    def check_pairs(self, pairs: Iterable[tuple[str, str]], locales: Iterable[str]) -> None:
        """Fail now, not mid-incident, if a template of exactly these pairs is missing or broken.

        The same test as ``check()``, for the given (event type, channel) pairs in each of
        ``locales`` (exact locale folders, no English added): what a routing policy uses.

        Raises:
            ConfigurationError: one line naming an unknown event type or channel, a pair the
                channel has no templates for, every missing template file, the first template
                that fails to render, or the first SMS template whose sample is too long.
        """
        wanted = list(dict.fromkeys(pairs))
        locs = list(dict.fromkeys(locales))
        for event_type, channel in wanted:
            self.template_files(event_type, channel, FALLBACK_LOCALE)  # raises for a pair it cannot render
        self._check_templates(wanted, locs)

    def check(self, event_types: Iterable[str], channels: Iterable[str], locales: Iterable[str]) -> None:
        """Fail now, not mid-incident, if a template is missing or broken.

        Every (event type, locale, channel) needs its templates, each of which must render a
        sample event of its type; pairs of event type and channel that ``CHANNEL_EVENT_TYPES``
        leaves out (no SMS for a policy change) are skipped. An SMS template must render its
        sample within ``sms_max_segments`` before any cutting: a notice that is always cut
        would always lose its end.

        Raises:
            ConfigurationError: one line naming every missing template file, an unknown
                event type or channel, the first template that fails to render, or the first
                SMS template whose sample is too long.
        """
        types = list(dict.fromkeys(event_types))
        chans = list(dict.fromkeys(channels))
        locs = list(dict.fromkeys(locales))
        unknown_types = [t for t in types if t not in EVENT_TYPES]
        if unknown_types:
            raise ConfigurationError(
                f"unknown event type(s) {', '.join(map(repr, unknown_types))}; known: {', '.join(EVENT_TYPES)}"
            )
        unknown_channels = [c for c in chans if c not in CHANNEL_TEMPLATES]
        if unknown_channels:
            raise ConfigurationError(
                f"no templates for channel(s) {', '.join(map(repr, unknown_channels))}; "
                f"rendered channels: {', '.join(CHANNEL_TEMPLATES)}"
            )
        pairs = [(t, c) for t in types for c in chans if channel_covers(c, t)]
        self._check_templates(pairs, [*locs, FALLBACK_LOCALE])

    def _exact_folder(self, kind: str, locale: str) -> str:
        """The folder of ``kind`` whose name is ``locale`` (case-insensitive), else ``locale`` itself."""
        by_key = {_locale_key(name): name for name in self.available_locales(kind)}
        return by_key.get(_locale_key(locale), locale)

    def _check_templates(self, pairs: list[tuple[str, str]], locales: list[str]) -> None:
        """Require and sample-render the templates of known, covered (event type, channel) pairs."""
        by_type: dict[str, list[str]] = {}
        for event_type, channel in pairs:
            by_type.setdefault(event_type, []).append(channel)
        missing: list[str] = []
        present: list[tuple[str, str]] = []
        sms_paths: set[str] = set()
        for event_type, chans in by_type.items():
            for locale in locales:
                folder = self._exact_folder(event_type, locale)
                for channel in chans:
                    for name in filter(None, CHANNEL_TEMPLATES[channel]):
                        path = f"{event_type}/{folder}/{name}"
                        if not (self.templates_dir / path).is_file():
                            missing.append(path)
                        present.append((event_type, path))
                        if channel == "sms" and name == CHANNEL_TEMPLATES["sms"].text:
                            sms_paths.add(path)
        if missing:
            unique = list(dict.fromkeys(missing))
            raise ConfigurationError(
                f"{len(unique)} template file(s) missing under {self.templates_dir}: {', '.join(unique)}"
            )

        samples: dict[str, Event] = {}
        for event_type, path in dict.fromkeys(present):
            if event_type not in samples:
                samples[event_type] = sample_event(event_type)
            try:
                rendered = self.env.get_template(path).render(_context(samples[event_type]))
            except jinja2.TemplateError as exc:
                line = f" line {exc.lineno}" if isinstance(exc, jinja2.TemplateSyntaxError) else ""
                message = " ".join(str(exc).split())
                raise ConfigurationError(
                    f"template {path}{line} fails on a sample {event_type} event: {type(exc).__name__}: {message}"
                ) from exc
            if path in sms_paths:
                info = segments(rendered.strip())
                if info.segments > self.sms_max_segments:
                    locale = path.split("/")[1]
                    raise ConfigurationError(
                        f"SMS template {path} (locale {locale}) renders a sample {event_type} event in "
                        f"{info.segments} segments ({info.units} {info.encoding} "
                        f"{'septets' if info.encoding == 'GSM-7' else 'UTF-16 units'}); "
                        f"the most allowed is {self.sms_max_segments} (HERALD_SMS_MAX_SEGMENTS)"
                    )
