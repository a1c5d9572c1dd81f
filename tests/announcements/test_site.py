"""The public announcement site: every page and feed, in every language, safe and valid.

Events are built through the same validation producers go through and rendered with the
real templates; the site is then checked the way its readers see it: HTML pages, an Atom
feed read by ``feedparser`` and by ``xml.etree``, and a JSON Feed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import feedparser
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import incident, people

from worker.announce.site import (
    MAX_SLUG_CHARS,
    AnnouncementView,
    SiteBuilder,
    TimelineEntry,
    announcement_slug,
    page_path,
)
from worker.config import Settings
from worker.core.errors import ConfigurationError
from worker.delivery.rendering import Renderer
from worker.intake.events import INCIDENT_PARTS, Event, IncidentStatus, validate_event
from worker.intake.samples import sample_event

LOCALES = ("en", "zh-CN")
BASE_URL = "http://127.0.0.1:8080/announcements"
ANNOUNCED_TYPES = ("security_incident", "service_notice", "policy_change")
ATOM = "{http://www.w3.org/2005/Atom}"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
T0 = datetime(2026, 11, 23, 14, 5, tzinfo=UTC)
HOSTILE = "<script>alert(1)</script> {{ 7*7 }}"
JSON_FEED_KEYS = {"version", "title", "home_page_url", "feed_url", "language", "items"}
ITEM_KEYS = {"id", "url", "title", "content_html", "content_text", "date_published", "date_modified"}


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(Settings().templates_dir)


@pytest.fixture(scope="module")
def builder(renderer: Renderer) -> SiteBuilder:
    return SiteBuilder(renderer, locales=LOCALES, base_url=BASE_URL)


def incident_event(status: str, **data: Any) -> Event:
    data.setdefault("incident_id", "INC-2026-0042")
    return validate_event(incident(people(1), status=status, **data))


def entry(renderer: Renderer, event: Event, posted_at: datetime, locales: Iterable[str] = LOCALES) -> TimelineEntry:
    status = getattr(event.data, "status", None)
    return TimelineEntry(
        event_id=event.event_id,
        status=status.value if status is not None else None,
        posted_at=posted_at,
        content={locale: renderer.render(event, "announcement", locale) for locale in locales},
    )


def view(slug: str, event_type: str, entries: list[TimelineEntry]) -> AnnouncementView:
    return AnnouncementView(
        id=slug,
        event_type=event_type,
        first_public_at=entries[0].posted_at,
        updated_at=entries[-1].posted_at,
        revision=len(entries),
        entries=tuple(entries),
    )


def incident_view(renderer: Renderer, **data: Any) -> AnnouncementView:
    """An incident announced while investigating, then updated once its cause was identified."""
    first = incident_event("investigating", **data)
    second = incident_event("identified", **data)
    entries = [entry(renderer, first, T0), entry(renderer, second, T0 + timedelta(hours=2))]
    return view(announcement_slug("incident:INC-2026-0042"), "security_incident", entries)


def sha8(topic: str) -> str:
    return hashlib.sha256(topic.encode()).hexdigest()[:8]


def atom_entries(feed: bytes) -> list[ET.Element]:
    return ET.fromstring(feed).findall(f"{ATOM}entry")


# --- the files of the site ----------------------------------------------------------------


def test_an_incident_gets_a_page_and_feeds_in_every_language(renderer: Renderer, builder: SiteBuilder) -> None:
    files = builder.build([incident_view(renderer)], generated_at=T0 + timedelta(days=1))

    slug = "incident-inc-2026-0042"
    assert set(files) == {
        "index.html",
        *(
            f"{locale}/{name}"
            for locale in LOCALES
            for name in ("index.html", f"{slug}.html", "feed.atom", "feed.json")
        ),
    }
    assert page_path(slug, "zh-CN") == f"zh-CN/{slug}.html"
    assert all(isinstance(data, bytes) and data for data in files.values())
    for locale in LOCALES:
        for name in ("index.html", f"{slug}.html"):
            html = files[f"{locale}/{name}"].decode()
            assert html.startswith("<!DOCTYPE html>")
            assert f'<html lang="{locale}">' in html
            assert '<link rel="alternate" type="application/atom+xml" title="' in html
            assert f'href="{BASE_URL}/{locale}/feed.atom"' in html


def test_the_files_come_pages_first_then_feeds_then_indexes(renderer: Renderer, builder: SiteBuilder) -> None:
    """Given a reader following a link from an index, when the files are written in order,
    then the page it links to is already there."""
    paths = list(builder.build([incident_view(renderer)], generated_at=T0))

    kinds = [
        "index" if p.endswith("index.html") else "feed" if p.endswith((".atom", ".json")) else "page" for p in paths
    ]
    assert kinds == sorted(kinds, key=["page", "feed", "index"].index)
    assert paths[-1] == "index.html"


def test_the_root_lets_the_reader_choose_a_language(renderer: Renderer, builder: SiteBuilder) -> None:
    root = builder.build([incident_view(renderer)], generated_at=T0)["index.html"].decode()

    assert '<a href="en/index.html" hreflang="en" lang="en">English</a>' in root
    assert '<a href="zh-CN/index.html" hreflang="zh-CN" lang="zh-CN">简体中文</a>' in root
    assert '<html lang="en">' in root


def test_the_same_announcements_always_give_the_same_bytes(renderer: Renderer, builder: SiteBuilder) -> None:
    """Publishing again must change nothing, so the build depends only on the announcements."""
    announcement = incident_view(renderer)

    first = builder.build([announcement], generated_at=T0 + timedelta(days=1))
    again = builder.build([announcement], generated_at=T0 + timedelta(days=9))

    assert first == again


def test_every_page_is_self_contained_without_scripts_or_external_assets(
    renderer: Renderer, builder: SiteBuilder
) -> None:
    files = builder.build([incident_view(renderer)], generated_at=T0)

    for path, data in files.items():
        if path.endswith(".html"):
            html = data.decode()
            assert not re.search(r"<script|\bsrc=|<img|@import|url\(", html), path
            assert "<style>" in html, path
            for href in re.findall(r'<link rel="(?:stylesheet|icon)"', html):
                pytest.fail(f"{path} loads {href}")


# --- the Atom feed --------------------------------------------------------------------------


@pytest.mark.parametrize("locale", LOCALES)
def test_the_atom_feed_is_valid_and_points_at_the_page(renderer: Renderer, builder: SiteBuilder, locale: str) -> None:
    files = builder.build([incident_view(renderer)], generated_at=T0)
    page_url = f"{BASE_URL}/{locale}/incident-inc-2026-0042.html"

    parsed = feedparser.parse(files[f"{locale}/feed.atom"])

    assert parsed.bozo == 0, parsed.get("bozo_exception")
    assert parsed.version == "atom10"
    assert parsed.feed.title and parsed.feed.author
    assert parsed.feed.updated == "2026-11-23T16:05:00Z"
    links = {link.rel: link.href for link in parsed.feed.links}
    assert links == {"self": f"{BASE_URL}/{locale}/feed.atom", "alternate": f"{BASE_URL}/{locale}/index.html"}
    (item,) = parsed.entries
    assert item.id == page_url
    assert item.link == page_url
    assert item.updated == "2026-11-23T16:05:00Z"
    assert item.published == "2026-11-23T14:05:00Z"
    expected = "Security incident: " if locale == "en" else "【安全事件公告】"
    assert item.title == expected + "Credential stuffing against the sign-in page"
    assert item.tags[0].term == "identified"
    assert item.content[0].type == "text/html"
    assert "INC-2026-0042" in item.content[0].value


@pytest.mark.parametrize("locale", LOCALES)
def test_the_atom_feed_parses_as_plain_xml_with_its_language(
    renderer: Renderer, builder: SiteBuilder, locale: str
) -> None:
    files = builder.build([incident_view(renderer)], generated_at=T0)

    root = ET.fromstring(files[f"{locale}/feed.atom"])

    assert root.tag == f"{ATOM}feed"
    assert root.get(XML_LANG) == locale
    for required in ("id", "title", "updated", "author"):
        assert root.find(f"{ATOM}{required}") is not None, required
    (item,) = atom_entries(files[f"{locale}/feed.atom"])
    content = item.find(f"{ATOM}content")
    assert content is not None and content.get("type") == "html"
    # The content is the newest entry's fragment, as text, and that fragment is HTML again.
    assert content.text is not None and content.text.startswith("<p><strong>")


# --- the JSON Feed ------------------------------------------------------------------------


@pytest.mark.parametrize("locale", LOCALES)
def test_the_json_feed_has_the_json_feed_keys_and_absolute_urls(
    renderer: Renderer, builder: SiteBuilder, locale: str
) -> None:
    files = builder.build([incident_view(renderer)], generated_at=T0)

    feed = json.loads(files[f"{locale}/feed.json"])

    assert set(feed) >= JSON_FEED_KEYS
    assert feed["version"] == "https://jsonfeed.org/version/1.1"
    assert feed["language"] == locale
    assert feed["home_page_url"] == f"{BASE_URL}/{locale}/index.html"
    assert feed["feed_url"] == f"{BASE_URL}/{locale}/feed.json"
    (item,) = feed["items"]
    assert set(item) >= ITEM_KEYS
    assert item["id"] == item["url"] == f"{BASE_URL}/{locale}/incident-inc-2026-0042.html"
    assert item["date_published"] == "2026-11-23T14:05:00Z"
    assert item["date_modified"] == "2026-11-23T16:05:00Z"
    assert "INC-2026-0042" in item["content_text"] and "<" not in item["content_text"]
    assert item["content_html"].startswith("<p><strong>")
    for url in (feed["home_page_url"], feed["feed_url"], item["url"]):
        assert url.startswith("http://")


# --- the announcement's page ----------------------------------------------------------------


def test_the_page_shows_the_whole_timeline_newest_first(renderer: Renderer, builder: SiteBuilder) -> None:
    """Given an incident first announced while investigating and then updated as identified,
    when its page is built, then both updates show, the newest first, each with its status and time."""
    page = builder.build([incident_view(renderer)], generated_at=T0)["en/incident-inc-2026-0042.html"].decode()

    newest, oldest = page.index('id="update-2"'), page.index('id="update-1"')
    assert newest < oldest
    assert 'Status: <span class="status status-identified">Identified</span>' in page
    assert "<h1>Security incident: Credential stuffing against the sign-in page</h1>" in page
    second, first = page[newest:oldest], page[oldest:]
    assert "Identified" in second and '<time datetime="2026-11-23T16:05:00Z">2026-11-23 16:05 UTC</time>' in second
    assert "Investigating" in first and '<time datetime="2026-11-23T14:05:00Z">2026-11-23 14:05 UTC</time>' in first


def test_the_chinese_page_uses_the_chinese_labels(renderer: Renderer, builder: SiteBuilder) -> None:
    page = builder.build([incident_view(renderer)], generated_at=T0)["zh-CN/incident-inc-2026-0042.html"].decode()

    assert '<html lang="zh-CN">' in page
    for label in ("已查明原因", "调查中", "处理进展", "事件编号", "严重程度", "发现时间", "事件基本情况", "补救措施"):
        assert label in page, label
    assert "Investigating" not in page and "Identified" not in page


CHROME_WORDS = {
    "en": (
        '"Segoe UI"',
        "Skip to the content",
        'aria-label="Site"',
        "All announcements",
        'aria-label="Language"',
        "Subscribe: ",
        "Atom feed",
        "JSON Feed",
    ),
    "zh-CN": (
        '"Noto Sans CJK SC"',
        "跳至正文",
        'aria-label="网站导航"',
        "全部公告",
        'aria-label="语言"',
        "订阅：",
        "Atom 订阅源",
        "JSON Feed 订阅源",
    ),
}


@pytest.mark.parametrize("locale", LOCALES)
def test_every_page_of_a_language_has_the_shared_chrome_in_its_words(
    renderer: Renderer, builder: SiteBuilder, locale: str
) -> None:
    """The layout holds the chrome; each language's index fills in its words, and its pages reuse them."""
    files = builder.build([incident_view(renderer)], generated_at=T0)

    for path in (f"{locale}/index.html", f"{locale}/incident-inc-2026-0042.html"):
        html = files[path].decode()
        assert f'<html lang="{locale}">' in html, path
        for words in CHROME_WORDS[locale]:
            assert words in html, (path, words)
        other = next(loc for loc in LOCALES if loc != locale)
        assert CHROME_WORDS[other][1] not in html, path
        assert 'aria-label=""' not in html and '<a class="skip" href="#main"></a>' not in html, path
        assert '<a href="../index.html">' in html and '<a href="feed.atom" type="application/atom+xml">' in html, path
        assert html.count('<link rel="alternate"') == 3, path  # Atom, JSON Feed, the other language


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("status", list(IncidentStatus))
def test_an_incident_entry_states_its_status_and_all_five_parts(
    renderer: Renderer, status: IncidentStatus, locale: str
) -> None:
    labels = {
        "en": {"investigating": "Investigating", "identified": "Identified", "monitoring": "Monitoring"},
        "zh-CN": {"investigating": "调查中", "identified": "已查明原因", "monitoring": "持续监控"},
    }
    labels["en"]["resolved"], labels["zh-CN"]["resolved"] = "Resolved", "已解决"
    markers = {part: f"MARKER-{part.upper()}" for part in INCIDENT_PARTS}
    event = incident_event(status.value, severity="critical", **markers)

    content = renderer.render(event, "announcement", locale)

    for body in (content.text, content.html or ""):
        assert labels[locale][status.value] in body
        assert "INC-2026-0042" in body and ("Critical" if locale == "en" else "严重") in body
        assert all(marker in body for marker in markers.values())
        assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", body), "detected_at"


def test_a_language_without_its_own_words_falls_back_to_english(renderer: Renderer, builder: SiteBuilder) -> None:
    """Given an update rendered only in English, then the Chinese page shows the English words,
    marked as English, and the Chinese chrome around them."""
    event = incident_event("investigating")
    announcement = view("incident-inc-2026-0042", "security_incident", [entry(renderer, event, T0, ["en"])])

    files = builder.build([announcement], generated_at=T0)

    page = files["zh-CN/incident-inc-2026-0042.html"].decode()
    assert "<h1>Security incident: Credential stuffing against the sign-in page</h1>" in page
    assert '<div lang="en">' in page and "处理进展" in page
    assert json.loads(files["zh-CN/feed.json"])["items"][0]["language"] == "en"
    assert feedparser.parse(files["zh-CN/feed.atom"]).bozo == 0


# --- the index ------------------------------------------------------------------------------


def test_the_index_lists_announcements_most_recently_updated_first(renderer: Renderer, builder: SiteBuilder) -> None:
    """Given an incident, a maintenance window and a policy change updated at different times,
    then each language's index and feeds list them latest first, with the incident's status."""
    maintenance = sample_event("service_notice")
    policy = sample_event("policy_change")
    announcements = [
        incident_view(renderer),  # updated T0 + 2 h
        view("event-maintenance", "service_notice", [entry(renderer, maintenance, T0 + timedelta(hours=5))]),
        view("policy-privacy-policy-2026-12", "policy_change", [entry(renderer, policy, T0 + timedelta(hours=1))]),
    ]

    files = builder.build(announcements, generated_at=T0)

    order = ["event-maintenance", "incident-inc-2026-0042", "policy-privacy-policy-2026-12"]
    for locale in LOCALES:
        index = files[f"{locale}/index.html"].decode()
        positions = [index.index(f'href="{slug}.html"') for slug in order]
        assert positions == sorted(positions)
        assert files[f"{locale}/{order[0]}.html"]
        feed_ids = [item.id for item in feedparser.parse(files[f"{locale}/feed.atom"]).entries]
        assert feed_ids == [f"{BASE_URL}/{locale}/{slug}.html" for slug in order]
        assert [i["id"] for i in json.loads(files[f"{locale}/feed.json"])["items"]] == feed_ids
    index = files["en/index.html"].decode()
    assert '<span class="status status-identified">Identified</span>' in index
    assert "Scheduled maintenance: Database upgrade" in index
    assert "Shorter retention of support tickets (Privacy Policy, version 2026-12)" in index
    assert "数据库" not in index and "维护" in files["zh-CN/index.html"].decode()


def test_an_empty_site_builds_an_empty_index_and_valid_empty_feeds(builder: SiteBuilder) -> None:
    files = builder.build([], generated_at=T0)

    assert set(files) == {
        "index.html",
        *(f"{loc}/{n}" for loc in LOCALES for n in ("index.html", "feed.atom", "feed.json")),
    }
    assert "There are no announcements." in files["en/index.html"].decode()
    assert "目前没有公告。" in files["zh-CN/index.html"].decode()
    for locale in LOCALES:
        parsed = feedparser.parse(files[f"{locale}/feed.atom"])
        assert parsed.bozo == 0 and parsed.entries == []
        assert parsed.feed.updated == "2026-11-23T14:05:00Z"
        assert atom_entries(files[f"{locale}/feed.atom"]) == []
        feed = json.loads(files[f"{locale}/feed.json"])
        assert set(feed) >= JSON_FEED_KEYS and feed["items"] == []


# --- nothing breaks out ---------------------------------------------------------------------


def test_a_hostile_title_stays_text_in_pages_and_feeds(renderer: Renderer, builder: SiteBuilder) -> None:
    """Given an incident titled with markup and template code, then every page shows it as typed,
    escaped, and no feed lets it become markup."""
    files = builder.build([incident_view(renderer, title=HOSTILE)], generated_at=T0)
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt; {{ 7*7 }}"

    for path in ("en/incident-inc-2026-0042.html", "en/index.html", "zh-CN/incident-inc-2026-0042.html"):
        html = files[path].decode()
        assert escaped in html, path
        assert "<script>" not in html, path

    parsed = feedparser.parse(files["en/feed.atom"])
    assert parsed.bozo == 0
    assert parsed.entries[0].title == f"Security incident: {HOSTILE}"
    atom_item = atom_entries(files["en/feed.atom"])[0]
    assert atom_item.findtext(f"{ATOM}title") == f"Security incident: {HOSTILE}"
    content = atom_item.findtext(f"{ATOM}content") or ""
    assert escaped in content and "<script>" not in content  # the HTML, once unwrapped, shows the text

    item = json.loads(files["en/feed.json"])["items"][0]
    assert item["title"] == f"Security incident: {HOSTILE}"  # a JSON Feed title is plain text
    assert escaped in item["content_html"] and "<script>" not in item["content_html"]
    assert HOSTILE in item["content_text"]


def test_an_announcement_id_that_is_not_a_slug_is_refused(renderer: Renderer, builder: SiteBuilder) -> None:
    good = incident_view(renderer)
    for bad in ("../../etc/passwd", "a/b", "Upper", "", "x" * (MAX_SLUG_CHARS + 1)):
        with pytest.raises(ValueError, match="not a slug"):
            builder.build([view(bad, "security_incident", list(good.entries))], generated_at=T0)
    with pytest.raises(ValueError, match="twice"):
        builder.build([good, good], generated_at=T0)
    with pytest.raises(ValueError, match="no timeline entries"):
        builder.build([AnnouncementView("x", "security_incident", T0, T0, 1, ())], generated_at=T0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"locales": ()}, "at least one locale"),
        ({"locales": ("en", "../x")}, "not locale tags"),
        ({"locales": ("en", "en")}, "repeat"),
        ({"locales": ("en", "fr")}, r"_site/fr/index\.html, _site/fr/page\.html"),
        ({"base_url": "/announcements"}, "absolute http"),
        ({"base_url": "javascript:alert(1)"}, "absolute http"),
    ],
)
def test_a_misconfigured_site_fails_at_start_up(renderer: Renderer, kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"locales": LOCALES, "base_url": BASE_URL, **kwargs}
    with pytest.raises(ConfigurationError, match=message):
        SiteBuilder(renderer, **arguments)


def test_a_trailing_slash_on_the_base_url_does_not_double_up(renderer: Renderer) -> None:
    site = SiteBuilder(renderer, locales=LOCALES, base_url=BASE_URL + "/")

    assert site.page_url("incident-inc-1") == f"{BASE_URL}/en/incident-inc-1.html"
    assert site.page_url("incident-inc-1", "zh-CN") == f"{BASE_URL}/zh-CN/incident-inc-1.html"


# --- slugs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "slug"),
    [
        ("incident:INC-2026-0042", "incident-inc-2026-0042"),
        ("incident:INC-2026-0042", "incident-inc-2026-0042"),  # the same topic, the same slug
        ("policy:Privacy Policy:2026-12", "policy-privacy-policy-2026-12"),
        ("event:evt-0f3a9c", "event-evt-0f3a9c"),
        ("--Weird::__topic--", "weird-topic"),
        ("a/../../b", "a-b"),
        # Characters a slug cannot show: the topic's hash keeps such topics apart.
        ("policy:隐私政策:2026-12", "policy-2026-12-" + sha8("policy:隐私政策:2026-12")),
        ("policy:用户协议:2026-12", "policy-2026-12-" + sha8("policy:用户协议:2026-12")),
        ("隐私政策", "announcement-" + sha8("隐私政策")),
        ("", "announcement-" + sha8("")),
    ],
)
def test_a_topic_becomes_a_stable_safe_slug(topic: str, slug: str) -> None:
    assert announcement_slug(topic) == slug


def test_a_long_topic_is_cut_and_ends_with_its_hash() -> None:
    first = "incident:" + "very-long-incident-name-" * 5 + "A"
    second = "incident:" + "very-long-incident-name-" * 5 + "B"

    slugs = announcement_slug(first), announcement_slug(second)

    assert slugs[0] != slugs[1]
    for slug in slugs:
        assert len(slug) <= MAX_SLUG_CHARS
        assert re.fullmatch(r"incident-very-long-incident-name-[a-z0-9-]+-[0-9a-f]{8}", slug)
    assert announcement_slug("x" * 80) == "x" * 80
    assert announcement_slug("x" * 81) == "x" * 71 + "-" + announcement_slug("x" * 81)[-8:]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_topic_gives_a_path_safe_slug(topic: str) -> None:
    slug = announcement_slug(topic)

    assert re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", slug)
    assert len(slug) <= MAX_SLUG_CHARS
    assert announcement_slug(topic) == slug


# --- the templates --------------------------------------------------------------------------


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("event_type", ANNOUNCED_TYPES)
def test_every_announcement_template_renders_its_sample(renderer: Renderer, event_type: str, locale: str) -> None:
    event = sample_event(event_type)

    content = renderer.render(event, "announcement", locale)

    assert content.locale == locale
    assert content.subject and "\n" not in content.subject
    assert content.text.strip() and content.html and content.html.lstrip().startswith("<p><strong>")
    assert "<html" not in content.html and "<!DOCTYPE" not in content.html  # a fragment
    cjk = re.compile(r"[\u4e00-\u9fff]")
    assert bool(cjk.search(content.subject + content.text)) == (locale == "zh-CN")
    # No personal data from the sample's recipient ever reaches the public.
    for value in ("sample.user@example.com", "+15005550006", "Sample User", "u-1001"):
        assert value not in content.subject + content.text + content.html


def test_the_start_up_check_covers_the_announcement_templates(renderer: Renderer) -> None:
    renderer.check(ANNOUNCED_TYPES, ["announcement"], LOCALES)


def test_account_notices_have_no_announcement_templates() -> None:
    folder = Path(Settings().templates_dir) / "account_notice"
    assert not list(folder.glob("*/announcement*"))


def test_a_service_notice_entry_states_its_window_services_and_details(renderer: Renderer) -> None:
    event = sample_event("service_notice")

    for locale in LOCALES:
        content = renderer.render(event, "announcement", locale)
        for body in (content.text, content.html or ""):
            assert "2026-11-26 14:05 UTC" in body and "2026-11-26 16:05 UTC" in body
            assert "Console" in body and "Public API" in body
            assert "read-only" in body


def test_a_policy_change_entry_states_its_document_version_and_link(renderer: Renderer) -> None:
    event = sample_event("policy_change")

    for locale in LOCALES:
        content = renderer.render(event, "announcement", locale)
        assert '<a href="https://www.example.com/legal/privacy">' in (content.html or "")
        for body in (content.text, content.html or ""):
            name = "Privacy Policy" if locale == "en" else "《隐私政策》"
            assert name in body and "2026-12" in body and "support tickets" in body
            assert ("substantial" if locale == "en" else "重大变更") in body


def test_the_start_up_check_builds_a_sample_site(builder: SiteBuilder) -> None:
    builder.check()


def test_a_broken_site_template_fails_the_start_up_check_by_name(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(Settings().templates_dir, templates)
    page = templates / "_site" / "zh-CN" / "page.html"
    page.write_text(page.read_text(encoding="utf-8").replace("{{ page.title }}", "{{ page.no_such_field }}"))
    site = SiteBuilder(Renderer(templates), locales=LOCALES, base_url=BASE_URL)

    with pytest.raises(ConfigurationError, match=r"template _site/zh-CN/page\.html fails: UndefinedError"):
        site.check()


def test_a_site_without_its_layout_fails_at_start_up(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(Settings().templates_dir, templates)
    (templates / "_site" / "layout.html").unlink()

    with pytest.raises(ConfigurationError, match=r"1 announcement site template\(s\) missing .*: _site/layout\.html$"):
        SiteBuilder(Renderer(templates), locales=LOCALES, base_url=BASE_URL)


def test_a_broken_layout_fails_the_start_up_check_naming_the_layout(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(Settings().templates_dir, templates)
    layout = templates / "_site" / "layout.html"
    layout.write_text(layout.read_text(encoding="utf-8").replace("{% endblock %}", "{% endblok %}", 1))
    site = SiteBuilder(Renderer(templates), locales=LOCALES, base_url=BASE_URL)

    with pytest.raises(ConfigurationError, match=r"template _site/layout\.html line \d+ fails: TemplateSyntaxError"):
        site.check()


def test_a_lone_surrogate_in_a_title_does_not_stop_the_site(renderer: Renderer, builder: SiteBuilder) -> None:
    """Validation refuses a lone surrogate (it cannot be UTF-8); should content carry one
    anyway, the site still builds, with a replacement in its place."""
    rendered = entry(renderer, incident_event("investigating"), T0)
    content = {loc: dataclasses.replace(c, subject="Broken \ud800 title") for loc, c in rendered.content.items()}
    announcement = view("incident-inc-2026-0042", "security_incident", [dataclasses.replace(rendered, content=content)])

    files = builder.build([announcement], generated_at=T0)

    assert "Broken ? title" in files["en/incident-inc-2026-0042.html"].decode()
    assert feedparser.parse(files["en/feed.atom"]).bozo == 0
    assert json.loads(files["en/feed.json"])["items"][0]["title"] == "Broken ? title"


# --- one announcement never stops the others --------------------------------------------------


def test_an_announcement_whose_page_fails_is_left_out_and_the_others_are_built(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(Settings().templates_dir, templates)
    page = templates / "_site" / "zh-CN" / "page.html"
    fault = '{% if page.slug == "broken" %}{{ page.no_such_field }}{% endif %}'
    page.write_text(page.read_text(encoding="utf-8").replace("{% block content %}", "{% block content %}" + fault))
    renderer = Renderer(templates)
    site = SiteBuilder(renderer, locales=LOCALES, base_url=BASE_URL)
    good = incident_view(renderer)
    broken = dataclasses.replace(good, id="broken")
    empty = AnnouncementView("empty", "security_incident", T0, T0, 1, ())

    built = site.build_each([broken, good, empty, good], generated_at=T0)

    assert set(built.left_out) == {"broken", "empty"}
    assert "UndefinedError" in built.left_out["broken"] and "no timeline entries" in built.left_out["empty"]
    assert not any("broken" in path or "empty" in path for path in built.files)
    assert built.files == site.build([good], generated_at=T0)


def test_an_announcement_the_index_cannot_show_is_left_out_of_every_index_and_feed(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(Settings().templates_dir, templates)
    index = templates / "_site" / "en" / "index.html"
    source = index.read_text(encoding="utf-8")
    assert "{% for item in announcements %}" in source
    fault = '{% if item.slug == "broken" %}{{ item.no_such_field }}{% endif %}'
    index.write_text(source.replace("{% for item in announcements %}", "{% for item in announcements %}" + fault))
    renderer = Renderer(templates)
    site = SiteBuilder(renderer, locales=LOCALES, base_url=BASE_URL)
    good = incident_view(renderer)
    broken = dataclasses.replace(good, id="broken")

    built = site.build_each([broken, good], generated_at=T0)

    assert set(built.left_out) == {"broken"} and "UndefinedError" in built.left_out["broken"]
    assert built.files == site.build([good], generated_at=T0)
