"""Rendering: every notice reads well in each locale, and no event field can break out.

Events come from ``worker.intake.samples`` and are varied through the same validation producers go
through; where a test needs a value validation would already have cleaned (a CR/LF in a
title), it bypasses validation with ``model_copy`` to prove the renderer defends itself too.
"""

from __future__ import annotations

import re
import shutil
import unicodedata
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from jinja2.exceptions import SecurityError

from worker.config import DEFAULT_TEMPLATES_DIR
from worker.core.clock import utcnow
from worker.core.errors import ConfigurationError
from worker.core.messages import Content
from worker.delivery.rendering import CHANNEL_TEMPLATES, MAX_SUBJECT_CHARS, Renderer
from worker.intake.events import (
    EVENT_TYPES,
    INCIDENT_PARTS,
    AccountNotice,
    Event,
    InlineAudience,
    PolicyChange,
    SecurityIncident,
    ServiceNotice,
    validate_event,
)
from worker.intake.samples import sample_event

LOCALES = ("en", "zh-CN")
CHANNELS = ("email", "insite")
CJK = re.compile(r"[\u4e00-\u9fff]")


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(DEFAULT_TEMPLATES_DIR)


def event_with(event_type: str, **data: Any) -> Event:
    """A sample event with some ``data`` fields replaced, validated like a real one."""
    obj = sample_event(event_type).model_dump(mode="json")
    obj["data"].update(data)
    return validate_event(obj)


def unvalidated(event: Event, **data: Any) -> Event:
    """The event with ``data`` fields replaced *without* validation: a hostile value as-is."""
    return event.model_copy(update={"data": event.data.model_copy(update=data)})


def all_texts(content: Content) -> str:
    return "\n".join(part for part in (content.subject, content.text, content.html) if part)


def copy_templates(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(DEFAULT_TEMPLATES_DIR, target)
    return target


# --- every event type, every locale, every channel ------------------------------------------


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_each_event_type_renders_in_english_and_chinese(renderer: Renderer, event_type: str, channel: str) -> None:
    event = sample_event(event_type)

    en = renderer.render(event, channel, "en")
    zh = renderer.render(event, channel, "zh-CN")

    assert (en.locale, zh.locale) == ("en", "zh-CN")
    assert en.cache_key == f"{event.event_id}:{channel}:en"
    assert zh.cache_key == f"{event.event_id}:{channel}:zh-CN"
    assert en.subject and en.text.strip() and zh.subject and zh.text.strip()
    assert not CJK.search(all_texts(en)), "English rendering contains Chinese"
    assert CJK.search(zh.subject) and CJK.search(zh.text)
    assert re.search(r"\b(we|you|your|our)\b", en.text, re.IGNORECASE)
    assert "您" in zh.text or "我们" in zh.text
    if channel == "email":
        assert en.html is not None and en.html.lstrip().startswith("<!DOCTYPE html>")
        assert zh.html is not None and 'lang="zh-CN"' in zh.html and CJK.search(zh.html)
        for html in (en.html, zh.html):
            assert not re.search(r"\bsrc=|<link|<script|<img|url\(|@import", html), "external resource"
    else:
        assert en.html is None and zh.html is None


def test_available_locales_lists_both_locales_for_every_event_type(renderer: Renderer) -> None:
    for event_type in EVENT_TYPES:
        assert renderer.available_locales(event_type) == ["en", "zh-CN"]
    assert renderer.available_locales("no_such_type") == []


@pytest.mark.parametrize(
    ("event_type", "data", "expected_en", "expected_zh"),
    [
        ("account_notice", {"action": "suspended"}, "suspended", "暂停"),
        ("account_notice", {"action": "cancelled"}, "cancelled", "注销"),
        ("account_notice", {"action": "restored"}, "restored", "恢复"),
        ("service_notice", {"kind": "maintenance"}, "maintenance", "维护"),
        ("service_notice", {"kind": "outage", "description": None}, "disrupt", "故障"),
        ("policy_change", {"substantial": True}, "substantial change", "重大变更"),
        ("policy_change", {"substantial": False}, "does not substantially", "不属于重大变更"),
        ("security_incident", {"severity": "critical"}, "Critical", "严重"),
    ],
)
def test_each_variant_of_an_event_says_what_it_is(
    renderer: Renderer, event_type: str, data: dict[str, Any], expected_en: str, expected_zh: str
) -> None:
    if data.get("substantial") is False:
        data = {**data, "effective_at": (utcnow() + timedelta(days=2)).isoformat()}
    event = event_with(event_type, **data)
    for channel in CHANNELS:
        en = renderer.render(event, channel, "en")
        zh = renderer.render(event, channel, "zh-CN")
        assert expected_en.lower() in (en.subject + en.text).lower()
        assert expected_zh in zh.subject + zh.text
        if en.html is not None and zh.html is not None:
            assert expected_en.lower() in en.html.lower()
            assert expected_zh in zh.html


def test_notices_show_their_key_facts(renderer: Renderer) -> None:
    policy = sample_event("policy_change")
    assert isinstance(policy, PolicyChange)
    text = renderer.render(policy, "email", "en").text
    assert "Privacy Policy" in text and policy.data.version in text and policy.data.url in text
    assert policy.data.title in text and policy.data.summary_of_changes in text
    assert policy.data.effective_at.strftime("%Y-%m-%d %H:%M UTC") in text
    assert "《隐私政策》" in renderer.render(policy, "email", "zh-CN").text

    service = sample_event("service_notice")
    assert isinstance(service, ServiceNotice)
    text = renderer.render(service, "email", "zh-CN").text
    for service_name in service.data.services:
        assert f"- {service_name}" in text
    assert "2026-11-26 14:05 UTC" in text and "2026-11-26 16:05 UTC" in text

    account = sample_event("account_notice")
    assert isinstance(account, AccountNotice)
    text = renderer.render(account, "insite", "en").text
    assert account.data.reason in text and "2026-11-23 14:05 UTC" in text


def test_datetimes_are_shown_in_utc_whatever_zone_the_event_used(renderer: Renderer) -> None:
    event = event_with("security_incident", detected_at="2026-11-23T22:05:00+08:00")

    content = renderer.render(event, "email", "en")

    assert "Detected at: 2026-11-23 14:05 UTC" in content.text


# --- the five promised parts --------------------------------------------------------------

HEADINGS = {
    "en": {
        "situation": "What happened",
        "impact": "Possible impact",
        "measures": "What we have done and will do",
        "advice": "What you can do",
        "remedies": "Remedies available to you",
    },
    "zh-CN": {
        "situation": "事件基本情况",
        "impact": "可能造成的影响",
        "measures": "处置措施",
        "advice": "建议",
        "remedies": "补救措施",
    },
}


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("channel", CHANNELS)
def test_an_incident_notice_presents_all_five_parts_under_headings(
    renderer: Renderer, channel: str, locale: str
) -> None:
    markers = {part: f"MARKER-{part.upper()}" for part in INCIDENT_PARTS}
    event = event_with("security_incident", **markers)
    assert isinstance(event, SecurityIncident)

    content = renderer.render(event, channel, locale)

    bodies = [content.text] + ([content.html] if content.html is not None else [])
    for body in bodies:
        positions = []
        for part in INCIDENT_PARTS:
            heading, marker = HEADINGS[locale][part], markers[part]
            assert heading in body, f"{part} heading missing"
            assert marker in body, f"{part} text missing"
            assert body.index(heading) < body.index(marker)
            positions.append(body.index(marker))
        assert positions == sorted(positions), "the parts are out of order"
        assert event.data.incident_id in body
        assert event.data.title in body
        assert "2026-11-23 11:05 UTC" in body
        assert ("High" if locale == "en" else "高") in body


# --- locale resolution ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "used"),
    [
        ("en", "en"),
        ("zh-CN", "zh-CN"),
        ("zh_cn", "zh-CN"),
        ("ZH-CN", "zh-CN"),
        ("zh", "zh-CN"),
        ("zh-TW", "zh-CN"),
        ("en-GB", "en"),
        ("en_US", "en"),
        ("fr", "en"),
        ("fr-CA", "en"),
        ("", "en"),
    ],
)
def test_a_reader_gets_the_closest_locale_there_is(renderer: Renderer, asked: str, used: str) -> None:
    event = sample_event("security_incident")

    content = renderer.render(event, "email", asked)

    assert content.locale == used
    assert content.cache_key == f"{event.event_id}:email:{used}"


def test_without_an_english_fallback_an_unknown_locale_is_a_configuration_error(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    shutil.rmtree(templates / "service_notice" / "en")
    renderer = Renderer(templates)

    assert renderer.render(sample_event("service_notice"), "email", "zh").locale == "zh-CN"
    with pytest.raises(ConfigurationError, match="service_notice"):
        renderer.render(sample_event("service_notice"), "email", "fr")


def test_an_unknown_channel_is_a_configuration_error(renderer: Renderer) -> None:
    with pytest.raises(ConfigurationError, match="carrier-pigeon"):
        renderer.render(sample_event("service_notice"), "carrier-pigeon", "en")


# --- injection ------------------------------------------------------------------------------

BREAKS = ["\r\n", "\n", "\r", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x00", "\x1b", "\t\r\n \r\n"]


@pytest.mark.parametrize("channel", CHANNELS)
@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("brk", BREAKS, ids=repr)
def test_a_line_break_in_a_title_never_reaches_the_subject(
    renderer: Renderer, brk: str, locale: str, channel: str
) -> None:
    event = unvalidated(sample_event("security_incident"), title=f"Breach{brk}Bcc: attacker@example.com")

    subject = renderer.render(event, channel, locale).subject

    assert not any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in subject), repr(subject)
    assert "Breach Bcc: attacker@example.com" in subject
    assert subject == subject.strip() and "  " not in subject


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_subjects_are_one_line_for_every_event_type(renderer: Renderer, event_type: str) -> None:
    for locale in LOCALES:
        for channel in CHANNELS:
            subject = renderer.render(sample_event(event_type), channel, locale).subject
            assert "\n" not in subject and "\r" not in subject and subject == subject.strip()


def test_a_long_subject_is_cut_to_the_limit_with_an_ellipsis(renderer: Renderer) -> None:
    event = event_with("security_incident", title="漏洞" * 150)

    subject = renderer.render(event, "email", "zh-CN").subject

    assert len(subject) == MAX_SUBJECT_CHARS
    assert subject.endswith("…") and subject.startswith("【安全事件通知】漏洞")


TEMPLATE_CODE = ["{{ 7*7 }}", "{% for x in range(3) %}{{ x }}{% endfor %}", "{# hidden #}", "${7*7} #{7*7}"]


@pytest.mark.parametrize("code", TEMPLATE_CODE)
@pytest.mark.parametrize("locale", LOCALES)
def test_template_code_in_an_event_field_is_printed_not_run(renderer: Renderer, code: str, locale: str) -> None:
    event = event_with("security_incident", title=f"Title {code}", situation=f"Situation {code}")

    email = renderer.render(event, "email", locale)
    insite = renderer.render(event, "insite", locale)

    for text in (email.subject, email.text, insite.subject, insite.text, email.html or ""):
        assert code in text


def test_markup_in_a_field_is_escaped_in_html_and_left_alone_in_text(renderer: Renderer) -> None:
    script = '<script>alert("x")</script>'
    event = event_with("service_notice", title=f"Title {script}", description=f"Details {script} & more")

    email = renderer.render(event, "email", "en")
    insite = renderer.render(event, "insite", "en")

    assert email.html is not None
    assert "<script>" not in email.html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in email.html
    assert "&amp; more" in email.html
    assert script in email.text and f"{script} & more" in email.text
    assert script in email.subject and script in insite.text


def test_an_attribute_in_a_field_does_not_break_out_of_html(renderer: Renderer) -> None:
    obj = sample_event("policy_change").model_dump(mode="json")
    obj["data"]["url"] = 'https://example.com/"onmouseover="alert(1)'
    event = validate_event(obj)

    html = renderer.render(event, "email", "en").html

    assert html is not None
    assert '"onmouseover="' not in html and "&#34;onmouseover=&#34;" in html


# --- the sandbox ----------------------------------------------------------------------------

FORBIDDEN = [
    "{{ ''.__class__ }}",
    "{{ data.__class__.__mro__ }}",
    "{{ event.__init__.__globals__ }}",
    "{{ data.model_dump.__func__ }}",
]


@pytest.mark.parametrize("expression", FORBIDDEN)
def test_a_template_cannot_reach_python_internals(tmp_path: Path, expression: str) -> None:
    templates = copy_templates(tmp_path)
    (templates / "security_incident" / "en" / "insite.txt").write_text(f"Hello {expression}\n", encoding="utf-8")
    renderer = Renderer(templates)

    with pytest.raises(SecurityError):
        renderer.render(sample_event("security_incident"), "insite", "en")
    with pytest.raises(ConfigurationError, match=r"security_incident/en/insite\.txt") as info:
        renderer.check(["security_incident"], ["insite"], ["en"])
    assert isinstance(info.value.__cause__, SecurityError)


def test_a_template_cannot_change_the_data_it_is_given(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    (templates / "service_notice" / "en" / "insite.txt").write_text(
        "{{ data.services.append('x') }}\n", encoding="utf-8"
    )

    with pytest.raises(SecurityError):
        Renderer(templates).render(sample_event("service_notice"), "insite", "en")


# --- start-up check -------------------------------------------------------------------------


def test_the_shipped_templates_pass_the_start_up_check(renderer: Renderer) -> None:
    renderer.check(EVENT_TYPES, CHANNELS, LOCALES)


def test_the_check_names_every_missing_template(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    (templates / "security_incident" / "zh-CN" / "email.html").unlink()
    (templates / "policy_change" / "en" / "insite_subject.txt").unlink()

    with pytest.raises(ConfigurationError) as info:
        Renderer(templates).check(EVENT_TYPES, CHANNELS, LOCALES)

    message = str(info.value)
    assert "\n" not in message
    assert "security_incident/zh-CN/email.html" in message
    assert "policy_change/en/insite_subject.txt" in message


def test_the_check_names_a_locale_nobody_wrote(renderer: Renderer) -> None:
    with pytest.raises(ConfigurationError, match=r"account_notice/fr/email\.txt"):
        renderer.check(["account_notice"], ["email"], ["en", "fr"])


def test_the_check_only_needs_the_channels_it_is_given(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    (templates / "account_notice" / "en" / "email.html").unlink()

    Renderer(templates).check(EVENT_TYPES, ["insite"], LOCALES)
    with pytest.raises(ConfigurationError, match=r"account_notice/en/email\.html"):
        Renderer(templates).check(EVENT_TYPES, ["email"], LOCALES)


def test_the_check_refuses_unknown_channels_and_event_types(renderer: Renderer) -> None:
    with pytest.raises(ConfigurationError, match="'fax'"):
        renderer.check(EVENT_TYPES, ["email", "fax"], LOCALES)
    with pytest.raises(ConfigurationError, match="'birthday'"):
        renderer.check(["birthday"], CHANNELS, LOCALES)


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("{{ data.no_such_field }}", "UndefinedError"),
        ("{% if %}", "TemplateSyntaxError"),
        ("{{ data.detected_at | no_such_filter }}", "TemplateAssertionError"),
    ],
)
def test_the_check_finds_a_broken_template_at_start_up(tmp_path: Path, source: str, error: str) -> None:
    templates = copy_templates(tmp_path)
    (templates / "security_incident" / "zh-CN" / "email.txt").write_text(source, encoding="utf-8")

    with pytest.raises(ConfigurationError, match=rf"security_incident/zh-CN/email\.txt.*{error}"):
        Renderer(templates).check(EVENT_TYPES, CHANNELS, LOCALES)


# --- one render per event, channel and locale ------------------------------------------------


def test_rendering_for_many_recipients_of_one_locale_renders_once(tmp_path: Path) -> None:
    renderer = Renderer(copy_templates(tmp_path))
    event = sample_event("security_incident")
    calls = 0
    real = renderer._render

    def counting(*args: Any) -> Content:
        nonlocal calls
        calls += 1
        return real(*args)

    renderer._render = counting  # type: ignore[method-assign,assignment]

    contents = [renderer.render(event, "email", locale) for locale in ["en", "en-GB", "fr", "en"] * 500]
    zh = renderer.render(event, "email", "zh")

    assert calls == 2
    assert all(c is contents[0] for c in contents)
    assert zh.locale == "zh-CN"


def test_an_event_with_the_same_id_but_new_words_is_rendered_again(renderer: Renderer) -> None:
    first = sample_event("service_notice")
    second = event_with("service_notice", title="Network upgrade")
    assert first.event_id == second.event_id

    assert "Network upgrade" not in renderer.render(first, "email", "en").subject
    assert "Network upgrade" in renderer.render(second, "email", "en").subject


# --- samples --------------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_each_sample_is_a_valid_event_for_one_inline_recipient(event_type: str) -> None:
    event = sample_event(event_type)

    assert event.type == event_type
    assert validate_event(event.model_dump(mode="json")) == event
    audience = event.data.audience
    assert isinstance(audience, InlineAudience) and len(audience.recipients) == 1


def test_there_is_no_sample_for_an_unknown_type() -> None:
    with pytest.raises(KeyError, match="birthday"):
        sample_event("birthday")


def test_every_channel_the_renderer_knows_has_a_subject_and_a_text_template() -> None:
    for names in CHANNEL_TEMPLATES.values():
        assert (names.subject is None or names.subject.endswith("_subject.txt")) and names.text.endswith(".txt")
