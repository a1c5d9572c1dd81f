"""SMS and phone wording: short enough for the carrier, plain enough to read aloud.

The SMS must fit ``sms_max_segments`` (3 by default) for every sample, and is cut with a link
when a real event is longer; the phone text is plain sentences with no markup or links.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from channels.sms_text import segments
from channels.voice import voice_for
from worker.config import DEFAULT_TEMPLATES_DIR
from worker.core.errors import ConfigurationError
from worker.delivery.rendering import CHANNEL_EVENT_TYPES, CHANNEL_TEMPLATES, Renderer
from worker.intake.events import EVENT_TYPES, Event, validate_event
from worker.intake.samples import sample_event

LOCALES = ("en", "zh-CN")
SMS_TYPES = ("security_incident", "account_notice", "service_notice")
LINK = "https://herald.example.com/inbox"
CJK = re.compile(r"[\u4e00-\u9fff]")
URL = re.compile(r"https?://|www\.|\.com\b", re.IGNORECASE)
POINTER = {"en": "check your email or site inbox", "zh-CN": "邮件或站内信"}


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(DEFAULT_TEMPLATES_DIR, details_url=LINK)


def event_with(event_type: str, **data: Any) -> Event:
    obj = sample_event(event_type).model_dump(mode="json")
    obj["data"].update(data)
    return validate_event(obj)


def copy_templates(tmp_path: Path) -> Path:
    target = tmp_path / "templates"
    shutil.copytree(DEFAULT_TEMPLATES_DIR, target)
    return target


VARIANTS = [
    ("security_incident", {}),
    ("security_incident", {"severity": "critical"}),
    ("security_incident", {"severity": "low"}),
    ("account_notice", {}),
    ("account_notice", {"action": "cancelled"}),
    ("account_notice", {"action": "restored"}),
    ("service_notice", {}),
    ("service_notice", {"kind": "outage", "description": None}),
]


def test_calls_cover_the_three_urgent_event_types_and_sms_every_type() -> None:
    assert CHANNEL_TEMPLATES["sms"].text == "sms.txt" and CHANNEL_TEMPLATES["sms"].subject is None
    assert CHANNEL_TEMPLATES["phone"].text == "phone.txt" and CHANNEL_TEMPLATES["phone"].html is None
    assert CHANNEL_EVENT_TYPES["phone"] == frozenset(SMS_TYPES)
    assert "sms" not in CHANNEL_EVENT_TYPES  # policy changes have SMS templates too


# --- SMS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize(("event_type", "data"), VARIANTS)
def test_each_sms_fits_three_segments_without_being_cut(
    renderer: Renderer, event_type: str, data: dict[str, Any], locale: str
) -> None:
    content = renderer.render(event_with(event_type, **data), "sms", locale)

    info = segments(content.text)
    assert info.segments <= 3, info
    assert LINK not in content.text and not content.text.endswith(("...", "…")), "the sample was cut"
    assert content.subject == "" and content.html is None
    assert content.text == content.text.strip()
    assert POINTER[locale] in content.text
    if locale == "en":
        assert info.encoding == "GSM-7", "English SMS should not need UCS-2"
        assert not CJK.search(content.text)
    else:
        assert CJK.search(content.text)


def test_the_sms_names_the_key_facts(renderer: Renderer) -> None:
    incident = renderer.render(sample_event("security_incident"), "sms", "en").text
    assert "INC-2026-0042" in incident and "High" in incident and "2026-11-23 11:05 UTC" in incident
    assert "Unauthorised access to a customer support database" in incident

    account = renderer.render(sample_event("account_notice"), "sms", "zh-CN").text
    assert "u-1001" in account and "暂停使用" in account and "section 4" in account

    service = renderer.render(sample_event("service_notice"), "sms", "en").text
    assert "Console, Public API" in service and "2026-11-26 16:05 UTC" in service


@pytest.mark.parametrize(
    ("locale", "title", "ending"),
    [
        # one curly apostrophe makes the whole SMS UCS-2: 201 units in three segments
        ("en", ("The attacker’s access to a customer support database " * 6)[:300], "… "),
        ("zh-CN", ("客服数据库遭到未经授权的访问" * 22)[:300], "… "),
    ],
)
def test_an_sms_with_a_very_long_title_is_cut_with_the_link(
    renderer: Renderer, locale: str, title: str, ending: str
) -> None:
    event = event_with("security_incident", title=title)

    text = renderer.render(event, "sms", locale).text

    info = segments(text)
    assert info.encoding == "UCS-2" and info.segments == 3
    assert text.endswith(ending + LINK)
    assert text.startswith("Security incident INC-2026-0042" if locale == "en" else "【安全事件通知】客服数据库")


def test_a_long_english_sms_stays_gsm_7_when_cut(renderer: Renderer) -> None:
    event = event_with("account_notice", reason="Repeated violations of the terms. " * 200)

    text = renderer.render(event, "sms", "en").text

    assert segments(text).encoding == "GSM-7" and segments(text).segments == 3
    assert text.endswith(f"... {LINK}") and "Reason: Repeated violations" in text


def test_without_a_details_url_a_long_sms_ends_with_an_ellipsis(tmp_path: Path) -> None:
    event = event_with("account_notice", reason="Repeated violations of the terms. " * 200)

    text = Renderer(DEFAULT_TEMPLATES_DIR).render(event, "sms", "en").text

    assert text.endswith("...") and segments(text).segments == 3


def test_the_sms_limit_follows_the_setting() -> None:
    one = Renderer(DEFAULT_TEMPLATES_DIR, sms_max_segments=1, details_url=LINK)

    text = one.render(sample_event("security_incident"), "sms", "en").text

    assert segments(text).segments == 1 and text.endswith(f"... {LINK}")
    with pytest.raises(ConfigurationError, match="sms_max_segments"):
        Renderer(DEFAULT_TEMPLATES_DIR, sms_max_segments=0)


def test_template_code_in_a_field_is_printed_in_an_sms(renderer: Renderer) -> None:
    event = event_with("service_notice", title="Upgrade {{ 7*7 }}")
    assert "Upgrade {{ 7*7 }}" in renderer.render(event, "sms", "en").text


def test_an_sms_is_rendered_once_for_every_recipient(renderer: Renderer) -> None:
    event = sample_event("security_incident")
    assert renderer.render(event, "sms", "en") is renderer.render(event, "sms", "en-GB")


# --- phone ----------------------------------------------------------------------------------


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize(("event_type", "data"), VARIANTS)
def test_each_phone_text_is_plain_short_speech(
    renderer: Renderer, event_type: str, data: dict[str, Any], locale: str
) -> None:
    content = renderer.render(event_with(event_type, **data), "phone", locale)

    text = content.text
    assert text and text == text.strip() and content.subject == "" and content.html is None
    assert "<" not in text and ">" not in text and "&" not in text, "markup in speech"
    assert not URL.search(text), "a link cannot be read aloud"
    assert len(text) < 600
    if locale == "en":
        assert not CJK.search(text) and "email" in text
        assert not re.search(r"\d{4}-\d{2}-\d{2}", text), "dates should be spoken, not ISO"
    else:
        assert CJK.search(text) and "邮件" in text and "年" in text and "月" in text


def test_phone_times_are_spoken(renderer: Renderer) -> None:
    en = renderer.render(sample_event("account_notice"), "phone", "en").text
    zh = renderer.render(sample_event("account_notice"), "phone", "zh-CN").text

    assert "November 23, 2026, at 14:05 UTC" in en
    assert "2026年11月23日14点05分" in zh


def test_a_very_long_field_is_clipped_in_a_call(renderer: Renderer) -> None:
    event = event_with("security_incident", advice="Change your password now. " * 500)

    text = renderer.render(event, "phone", "en").text

    assert len(text) < 900 and "…" in text


@pytest.mark.parametrize(
    ("locale", "voice"),
    [
        ("en", ("Polly.Joanna", "en-US")),
        ("en-GB", ("Polly.Joanna", "en-US")),
        ("zh-CN", ("Polly.Zhiyu", "cmn-CN")),
        ("zh_cn", ("Polly.Zhiyu", "cmn-CN")),
        ("zh", ("Polly.Zhiyu", "cmn-CN")),
        ("zh-TW", ("Polly.Zhiyu", "cmn-CN")),
        ("fr", ("Polly.Joanna", "en-US")),
        ("", ("Polly.Joanna", "en-US")),
    ],
)
def test_each_locale_has_a_voice(locale: str, voice: tuple[str, str]) -> None:
    assert voice_for(locale) == voice


# --- which event types, and the start-up check -------------------------------------------------


def test_a_policy_change_has_no_call_script(renderer: Renderer) -> None:
    with pytest.raises(ConfigurationError, match="no phone template for policy_change"):
        renderer.render(sample_event("policy_change"), "phone", "en")


@pytest.mark.parametrize("locale", LOCALES)
def test_a_policy_change_sms_names_the_document_the_date_and_the_link(renderer: Renderer, locale: str) -> None:
    event = sample_event("policy_change")
    text = renderer.render(event, "sms", locale, "Asia/Shanghai").text
    assert ("Privacy Policy" if locale == "en" else "《隐私政策》") in text
    assert "Asia/Shanghai" in text and event.data.url in text  # type: ignore[union-attr]
    assert segments(text).segments <= 3


def test_the_shipped_templates_pass_the_check_on_every_channel(renderer: Renderer) -> None:
    renderer.check(EVENT_TYPES, ["email", "insite", "sms", "phone"], LOCALES)


def test_the_check_names_a_missing_phone_template_but_not_policy_change(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    (templates / "service_notice" / "zh-CN" / "phone.txt").unlink()

    with pytest.raises(ConfigurationError) as info:
        Renderer(templates).check(EVENT_TYPES, ["sms", "phone"], LOCALES)

    message = str(info.value)
    assert "service_notice/zh-CN/phone.txt" in message and "1 template file(s) missing" in message
    assert "policy_change" not in message


def test_the_check_refuses_an_sms_template_that_renders_too_long(tmp_path: Path) -> None:
    templates = copy_templates(tmp_path)
    (templates / "account_notice" / "zh-CN" / "sms.txt").write_text(
        "【账号通知】原因：{{ data.reason }} {{ data.reason }} {{ data.reason }}\n", encoding="utf-8"
    )

    with pytest.raises(ConfigurationError) as info:
        Renderer(templates).check(EVENT_TYPES, ["sms"], LOCALES)

    message = str(info.value)
    assert "account_notice/zh-CN/sms.txt" in message and "locale zh-CN" in message
    assert "4 segments" in message and "most allowed is 3" in message
    assert "\n" not in message


def test_the_check_uses_the_configured_segment_limit() -> None:
    with pytest.raises(ConfigurationError, match=r"security_incident/en/sms\.txt .*2 segments .*most allowed is 1"):
        Renderer(DEFAULT_TEMPLATES_DIR, sms_max_segments=1).check(["security_incident"], ["sms"], ["en"])
