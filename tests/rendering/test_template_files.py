"""The renderer names the templates a (event type, channel) pair needs, and checks exactly those pairs.

A routing policy uses these at start-up: ``template_files`` and ``site_template_files`` say
which files must exist for one exact locale, and ``check_pairs`` renders them against the
sample events with the same test ``check()`` applies.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from worker.config import DEFAULT_TEMPLATES_DIR
from worker.core.errors import ConfigurationError
from worker.delivery.rendering import CHANNEL_TEMPLATES, Renderer
from worker.intake.events import EVENT_TYPES

LOCALES = ("en", "zh-CN")


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """A copy of the shipped templates, with a minimal announcement wherever none is shipped yet."""
    target = tmp_path / "templates"
    shutil.copytree(DEFAULT_TEMPLATES_DIR, target)
    for event_type in EVENT_TYPES:
        for locale in LOCALES:
            for name in filter(None, CHANNEL_TEMPLATES["announcement"]):
                path = target / event_type / locale / name
                if not path.exists():
                    path.write_text("{{ event.event_id }}\n", encoding="utf-8")
    return target


@pytest.mark.parametrize(
    ("event_type", "channel", "locale", "files"),
    [
        (
            "security_incident",
            "email",
            "zh-CN",
            [
                "security_incident/zh-CN/email_subject.txt",
                "security_incident/zh-CN/email.txt",
                "security_incident/zh-CN/email.html",
            ],
        ),
        ("account_notice", "sms", "en", ["account_notice/en/sms.txt"]),
        (
            "service_notice",
            "announcement",
            "en",
            [
                "service_notice/en/announcement_subject.txt",
                "service_notice/en/announcement.txt",
                "service_notice/en/announcement.html",
            ],
        ),
        # The folder as it is spelled on disk, matched without regard to case or _ vs -.
        (
            "policy_change",
            "insite",
            "zh_cn",
            ["policy_change/zh-CN/insite_subject.txt", "policy_change/zh-CN/insite.txt"],
        ),
        # No fallback to English or to the language: a missing translation must show.
        ("account_notice", "phone", "fr", ["account_notice/fr/phone.txt"]),
        ("account_notice", "phone", "zh-TW", ["account_notice/zh-TW/phone.txt"]),
    ],
)
def test_template_files_names_what_one_pair_needs_in_one_exact_locale(
    event_type: str, channel: str, locale: str, files: list[str]
) -> None:
    assert Renderer(DEFAULT_TEMPLATES_DIR).template_files(event_type, channel, locale) == files


@pytest.mark.parametrize(
    ("event_type", "channel", "error"),
    [
        ("policy_change", "phone", "no phone template for policy_change; phone covers"),
        ("account_notice", "fax", "no templates for channel 'fax'"),
        ("birthday", "email", "unknown event type 'birthday'"),
    ],
)
def test_template_files_refuses_a_pair_that_cannot_be_rendered(event_type: str, channel: str, error: str) -> None:
    with pytest.raises(ConfigurationError, match=error):
        Renderer(DEFAULT_TEMPLATES_DIR).template_files(event_type, channel, "en")


def test_the_announcement_site_needs_a_root_page_a_layout_and_two_pages_per_locale() -> None:
    renderer = Renderer(DEFAULT_TEMPLATES_DIR)

    assert renderer.site_template_files() == ["_site/index.html", "_site/layout.html"]
    assert renderer.site_template_files("zh-CN") == ["_site/zh-CN/index.html", "_site/zh-CN/page.html"]


def test_check_pairs_passes_on_complete_templates(templates: Path) -> None:
    Renderer(templates).check_pairs(
        [("security_incident", "sms"), ("security_incident", "announcement"), ("policy_change", "email")], LOCALES
    )


def test_check_pairs_needs_only_the_pairs_it_is_given(templates: Path) -> None:
    (templates / "account_notice" / "zh-CN" / "sms.txt").unlink()
    renderer = Renderer(templates)

    renderer.check_pairs([("account_notice", "email"), ("security_incident", "sms")], LOCALES)
    with pytest.raises(ConfigurationError, match=r"missing under .*: account_notice/zh-CN/sms\.txt$"):
        renderer.check_pairs([("account_notice", "sms")], LOCALES)


def test_check_pairs_does_not_fall_back_to_english(templates: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"service_notice/fr/email_subject\.txt"):
        Renderer(templates).check_pairs([("service_notice", "email")], ["en", "fr"])


def test_check_pairs_renders_each_template_against_a_sample(templates: Path) -> None:
    (templates / "policy_change" / "en" / "announcement.html").write_text("{{ data.nope }}", encoding="utf-8")

    with pytest.raises(ConfigurationError) as info:
        Renderer(templates).check_pairs([("policy_change", "announcement")], LOCALES)

    message = str(info.value)
    assert "template policy_change/en/announcement.html fails on a sample policy_change event" in message
    assert "UndefinedError" in message and "\n" not in message


def test_check_pairs_applies_the_sms_segment_limit() -> None:
    with pytest.raises(ConfigurationError, match=r"^SMS template security_incident/en/sms\.txt .* segments"):
        Renderer(DEFAULT_TEMPLATES_DIR, sms_max_segments=1).check_pairs([("security_incident", "sms")], ["en"])


def test_check_pairs_refuses_a_pair_the_channel_has_no_templates_for() -> None:
    with pytest.raises(ConfigurationError, match="no phone template for policy_change"):
        Renderer(DEFAULT_TEMPLATES_DIR).check_pairs([("policy_change", "phone")], LOCALES)
