"""The routing policy: the shipped file loads and checks, plans follow it, bad files name their line.

A bad file is the small valid ``BASE`` policy with a few edits; the line the error must name
carries a ``# <-`` marker, so each case states its expected line where it makes the edit.
Template checks run against a copy of the repository's templates in a tmp folder (with minimal
announcement templates added where the shipped ones are not there yet).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from worker.config import DEFAULT_ROUTING_FILE, DEFAULT_TEMPLATES_DIR
from worker.core.errors import ConfigurationError
from worker.delivery.rendering import CHANNEL_TEMPLATES, Renderer
from worker.intake.events import EVENT_TYPES, Event, validate_event
from worker.intake.samples import sample_event
from worker.routing.policy import Cap, Plan, RoutingPolicy, Stage, load_policy

ALL = ("email", "insite", "sms", "phone")
LOCALES = ("en", "zh-CN")
MARK = "# <-"

BASE = """\
version: 1
locales: [en, zh-CN]
defaults:
  wait: 15m
announce_all_above: 10000
channels:
  sms: {confirmed_by: [delivered], cap: {count: 3, per: 24h}}
  phone: {cap: {count: 1, per: 1d}}
routes:
  - name: incident
    match: {type: security_incident}
    stages:
      - {channels: [email, insite], wait: 10m}
      - {channels: [sms]}
    announce: true
  - name: account
    match: {type: account_notice}
    stages:
      - {channels: [email, insite]}
      - {channels: [sms, phone]}
  - name: policy
    match: {type: policy_change}
    stages:
      - {channels: [email, insite], wait: 24h}
    announce: true
  - name: service
    match: {type: service_notice}
    stages:
      - {channels: [email, insite], wait: 1h}
      - {channels: [sms]}
    announce: true
"""


def variant(*edits: tuple[str, str]) -> str:
    """``BASE`` with each ``old`` (which must occur exactly once) replaced by ``new``."""
    text = BASE
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def marked_line(text: str) -> int:
    (line,) = [n for n, row in enumerate(text.splitlines(), start=1) if MARK in row]
    return line


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routing.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def event_with(event_type: str, **data: Any) -> Event:
    """A sample event with some ``data`` fields replaced, validated like a real one."""
    obj = sample_event(event_type).model_dump(mode="json")
    obj["data"].update(data)
    return validate_event(obj)


def templates_with_announcements(target: Path) -> Path:
    """A copy of the repository's templates, with minimal announcement ones wherever they are missing."""
    shutil.copytree(DEFAULT_TEMPLATES_DIR, target)
    names = [n for n in CHANNEL_TEMPLATES["announcement"] if n is not None]
    for event_type in EVENT_TYPES:
        for locale in LOCALES:
            for name in names:
                path = target / event_type / locale / name
                if not path.exists():
                    path.write_text("{{ event.event_id }}\n", encoding="utf-8")
    site = target / "_site"
    shared = ["index.html", "layout.html"]
    for relative in [*shared, *(f"{loc}/{name}" for loc in LOCALES for name in ("index.html", "page.html"))]:
        path = site / relative
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("<!doctype html><title>announcements</title>\n", encoding="utf-8")
    return target


@pytest.fixture(scope="module")
def shipped() -> RoutingPolicy:
    return load_policy(DEFAULT_ROUTING_FILE)


@pytest.fixture(scope="module")
def module_templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return templates_with_announcements(tmp_path_factory.mktemp("shared") / "templates")


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work in ``tmp_path``, so messages name ``routing.yaml`` and ``templates/...`` as an operator sees them."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def templates(in_tmp: Path) -> Path:
    return templates_with_announcements(in_tmp / "templates")


# --- the shipped policy -------------------------------------------------------------------------


def test_the_shipped_policy_loads_and_passes_the_start_up_check(shipped: RoutingPolicy, module_templates: Path) -> None:
    shipped.check(Renderer(module_templates), enabled=ALL)

    assert shipped.locales == LOCALES
    assert shipped.used_channels() == frozenset(ALL)
    assert [r.name for r in shipped.routes] == [
        "critical-incident",
        "serious-incident",
        "minor-incident",
        "account-action",
        "substantial-policy-change",
        "minor-policy-change",
        "major-outage",
        "routine-service-notice",
    ]


def test_the_shipped_policy_passes_the_check_with_only_email_and_station_letters(
    shipped: RoutingPolicy, module_templates: Path
) -> None:
    shipped.check(Renderer(module_templates), enabled=("email", "insite"))


def test_every_registered_channel_gets_rules_with_defaults_filled_in(shipped: RoutingPolicy) -> None:
    assert set(shipped.channels) == set(ALL)
    assert shipped.channels["email"].confirmed_by == {"delivered"}
    assert shipped.channels["insite"].confirmed_by == {"acknowledged"}
    assert shipped.channels["phone"].confirmed_by == {"acknowledged"}
    assert shipped.channels["email"].providers == ("primary",)
    assert shipped.channels["insite"].cooldown_s == 60.0
    assert shipped.channels["sms"].cap == Cap(3, 86_400.0)
    assert shipped.channels["email"].cap is None


def test_a_channel_the_file_leaves_out_gets_the_defaults(in_tmp: Path) -> None:
    policy = load_policy(write(in_tmp, BASE))

    email = policy.channels["email"]
    assert (email.confirmed_by, email.providers, email.cooldown_s, email.cap) == (
        frozenset({"delivered"}),
        ("primary",),
        60.0,
        None,
    )
    assert policy.channels["insite"].confirmed_by == {"acknowledged"}
    assert policy.channels["phone"].confirmed_by == {"acknowledged"}
    assert policy.routes[1].stages[0].wait_s == 15 * 60.0  # defaults.wait


# --- plans ---------------------------------------------------------------------------------------

DAY = 86_400.0


@pytest.mark.parametrize(
    ("event", "enabled", "route", "stages", "mandatory", "caps"),
    [
        (
            event_with("security_incident", severity="critical"),
            ALL,
            "critical-incident",
            [(("email", "insite", "sms"), 600.0), (("phone",), 1800.0)],
            True,
            {},
        ),
        (
            event_with("security_incident", severity="high"),
            ("email", "insite"),
            "serious-incident",
            [(("email", "insite"), 1800.0)],
            True,
            {},
        ),
        (
            event_with("security_incident", severity="low"),
            ("email", "sms"),
            "minor-incident",
            [(("email",), 3600.0), (("sms",), 3600.0)],
            True,
            {},
        ),
        (
            sample_event("account_notice"),
            ALL,
            "account-action",
            [(("email", "insite"), 3600.0), (("sms",), 3600.0), (("phone",), 7200.0)],
            True,
            {},
        ),
        (
            sample_event("policy_change"),
            ALL,
            "substantial-policy-change",
            [(("email", "insite"), DAY)],
            True,
            {},
        ),
        (
            event_with("policy_change", substantial=False),
            ALL,
            "minor-policy-change",
            [(("email", "insite"), DAY)],
            False,
            {},
        ),
        (
            event_with("service_notice", kind="outage"),  # no severity: an outage is high
            ALL,
            "major-outage",
            [(("email", "insite"), 1800.0), (("sms",), 1800.0)],
            False,
            {"sms": Cap(3, DAY)},
        ),
        (
            event_with("service_notice", severity="critical"),
            ("insite", "sms", "phone"),
            "major-outage",
            [(("insite",), 1800.0), (("sms",), 1800.0)],
            False,
            {"sms": Cap(3, DAY)},
        ),
        (
            sample_event("service_notice"),  # maintenance: low
            ALL,
            "routine-service-notice",
            [(("email", "insite"), 3600.0)],
            False,
            {},
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_each_event_gets_the_plan_of_its_first_matching_route(
    shipped: RoutingPolicy,
    event: Event,
    enabled: Sequence[str],
    route: str,
    stages: list[tuple[tuple[str, ...], float]],
    mandatory: bool,
    caps: dict[str, Cap],
) -> None:
    plan = shipped.plan_for(event, enabled)

    assert shipped.route_for(event).name == route
    assert plan.route == route
    assert [(s.channels, s.wait_s) for s in plan.stages] == stages
    assert plan.mandatory is mandatory
    assert dict(plan.caps) == caps
    assert plan.announce is (route != "account-action")
    assert set(plan.confirmed_by) == {c for s in plan.stages for c in s.channels}


def test_confirmations_come_from_the_channel_rules(shipped: RoutingPolicy) -> None:
    plan = shipped.plan_for(event_with("security_incident", severity="critical"), ALL)

    assert dict(plan.confirmed_by) == {
        "email": {"delivered"},
        "insite": {"acknowledged"},
        "sms": {"delivered"},
        "phone": {"acknowledged"},
    }


def test_a_plan_with_no_enabled_channel_is_refused(shipped: RoutingPolicy) -> None:
    with pytest.raises(ConfigurationError, match="route minor-policy-change: none of its channels"):
        shipped.plan_for(event_with("policy_change", substantial=False), ("sms", "phone"))


def test_a_plan_round_trips_through_json_exactly(shipped: RoutingPolicy) -> None:
    for event in (event_with("service_notice", severity="critical"), sample_event("security_incident")):
        plan = shipped.plan_for(event, ALL)
        text = plan.to_json()

        again = Plan.from_json(text)

        assert again == plan
        assert again.to_json() == text
        assert "\n" not in text and " " not in text
        assert isinstance(again.stages[0], Stage) and isinstance(again.stages[0].channels, tuple)


def test_plan_json_is_deterministic() -> None:
    plan = Plan(
        route="r",
        mandatory=False,
        announce=True,
        stages=(Stage(("sms", "email"), 60.0),),
        confirmed_by={"sms": frozenset({"delivered", "acknowledged"}), "email": frozenset({"delivered"})},
        caps={"sms": Cap(2, 3600.0)},
    )

    assert plan.to_json() == (
        '{"announce":true,"caps":{"sms":{"count":2,"per_s":3600.0}},'
        '"confirmed_by":{"email":["delivered"],"sms":["acknowledged","delivered"]},'
        '"mandatory":false,"route":"r","stages":[{"channels":["sms","email"],"wait_s":60.0}],"version":1}'
    )
    assert Plan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        '{"route": "r"}',
        json.dumps(
            {
                "version": 2,
                "route": "r",
                "mandatory": True,
                "announce": True,
                "stages": [],
                "confirmed_by": {},
                "caps": {},
            }
        ),
    ],
)
def test_a_stored_plan_herald_did_not_write_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a stored routing plan"):
        Plan.from_json(text)


# --- bad files --------------------------------------------------------------------------------

BAD_FILES: list[tuple[str, str, str]] = [
    (
        "unknown channel",
        variant(("[email, insite], wait: 10m}", "[email, fax], wait: 10m}  # <-")),
        "routes[0].stages[0].channels[1]: unknown channel 'fax'; known: email, insite, phone, sms",
    ),
    (
        "unknown channel in channels",
        variant(("  phone: {cap: {count: 1, per: 1d}}", "  fax: {}  # <-")),
        "channels.fax: unknown channel 'fax'; known: email, insite, phone, sms",
    ),
    (
        "cycle back to an earlier stage",
        variant(
            (
                "      - {channels: [sms]}\n    announce: true\n  - name: account",
                "      - {channels: [sms]}\n      - {channels: [email]}  # <-\n    announce: true\n  - name: account",
            )
        ),
        "route incident: stage 3 returns to email, already tried in stage 1 (line 13); a fallback chain must not loop",
    ),
    (
        "same channel twice in one stage",
        variant(("[email, insite], wait: 1h}", "[email, insite, email], wait: 1h}  # <-")),
        "route service: stage 1 lists email twice (first at line 29); a fallback chain must not loop",
    ),
    (
        "announce on an account notice",
        variant(("      - {channels: [sms, phone]}\n", "      - {channels: [sms, phone]}\n    announce: true  # <-\n")),
        "route account: an account_notice is about one person; announcing it publicly would disclose it",
    ),
    (
        "security incident with announce: false",
        variant(("    announce: true\n  - name: account", "    announce: false  # <-\n  - name: account")),
        "route incident: a security_incident route needs announce: true; the privacy policy promises",
    ),
    (
        "security incident without announce",
        variant(
            ("  - name: incident\n", "  - name: incident  # <-\n"),
            ("    announce: true\n  - name: account", "  - name: account"),
        ),
        "route incident: a security_incident route needs announce: true",
    ),
    (
        "unmatched severity",
        variant(
            ("routes:\n", "routes:  # <-\n"),
            ("{type: security_incident}", "{type: security_incident, severity: [critical, high, medium]}"),
        ),
        "routes: no route matches security_incident low; every event needs a route",
    ),
    (
        "unmatched event type",
        variant(
            ("routes:\n", "routes:  # <-\n"),
            ("{type: policy_change}", "{type: policy_change, substantial: true}"),
            ("{type: account_notice}", "{type: service_notice, severity: [high]}"),
            ("{type: service_notice}", "{type: service_notice, severity: [low, medium, critical]}"),
        ),
        "routes: no route matches policy_change substantial: false, account_notice; every event needs a route",
    ),
    (
        "shadowed route",
        variant(
            (
                "  - name: account\n",
                "  - name: late-incident  # <-\n"
                "    match: {type: security_incident, severity: [low]}\n"
                "    stages:\n"
                "      - {channels: [email]}\n"
                "    announce: true\n"
                "  - name: account\n",
            )
        ),
        "route late-incident can never match: earlier route incident (line 10) already takes all its cases "
        "(security_incident low); first match wins",
    ),
    (
        "duplicate route name",
        variant(("  - name: policy\n", "  - name: account  # <-\n")),
        "route name 'account' is already used by the route at line 16",
    ),
    (
        "duplicate key",
        variant(("    match: {type: account_notice}\n", "    match: {type: account_notice}\n    match: {}  # <-\n")),
        "routes[1].match: duplicate key 'match' (first at line 17)",
    ),
    (
        "YAML syntax error",
        variant(("announce_all_above: 10000", "announce_all_above: 10000: 5  # <-")),
        "YAML syntax error: mapping values are not allowed here",
    ),
    (
        "bad duration",
        variant(("wait: 24h}", "wait: 24 hours}  # <-")),
        "routes[2].stages[0].wait: bad duration '24 hours'; write 90s, 10m, 2h, 1d or a number of seconds",
    ),
    (
        "duration too long",
        variant(("  wait: 15m", "  wait: 8d  # <-")),
        "defaults.wait: duration '8d' is longer than 7 days",
    ),
    (
        "zero duration",
        variant(("cap: {count: 3, per: 24h}}", "cap: {count: 3, per: 0}}  # <-")),
        "channels.sms.cap.per: duration 0 must be more than 0",
    ),
    (
        "unknown key",
        variant(("{type: account_notice}", "{type: account_notice, sevrity: [high]}  # <-")),
        "routes[1].match.sevrity: unknown key 'sevrity'; allowed: type, severity, substantial",
    ),
    (
        "unknown top-level key",
        variant(("announce_all_above: 10000\n", "announce_all_above: 10000\nannounce_everything: yes  # <-\n")),
        "announce_everything: unknown key 'announce_everything'; allowed: version, locales, defaults, "
        "announce_all_above, channels, routes",
    ),
    (
        "wrong version",
        variant(("version: 1", "version: 2  # <-")),
        "version: unsupported version 2; this herald reads version 1",
    ),
    (
        "missing stages",
        variant(
            (
                "  - name: policy\n    match: {type: policy_change}\n"
                "    stages:\n      - {channels: [email, insite], wait: 24h}\n",
                "  - name: policy  # <-\n    match: {type: policy_change}\n",
            )
        ),
        "routes[2]: missing key 'stages'",
    ),
    (
        "empty stage",
        variant(("      - {channels: [sms, phone]}", "      - {channels: []}  # <-")),
        "routes[1].stages[1].channels: must not be empty",
    ),
    (
        "severity on an event type without one",
        variant(("{type: account_notice}", "{type: account_notice, severity: [high]}  # <-")),
        "route account: account_notice has no severity; only security_incident and service_notice routes match",
    ),
    (
        "substantial on another event type",
        variant(("{type: service_notice}", "{type: service_notice, substantial: true}  # <-")),
        "route service: only policy_change routes match on substantial, not service_notice",
    ),
    (
        "unknown event type",
        variant(("{type: account_notice}", "{type: birthday}  # <-")),
        "routes[1].match.type: unknown event type 'birthday'",
    ),
    (
        "unknown severity",
        variant(("{type: security_incident}", "{type: security_incident, severity: [severe]}  # <-")),
        "routes[0].match.severity[0]: unknown severity 'severe'; known: low, medium, high, critical",
    ),
    (
        "a status that does not mean anyone was reached",
        variant(
            (
                "  sms: {confirmed_by: [delivered], cap: {count: 3, per: 24h}}",
                "  sms: {confirmed_by: [sent], cap: {count: 3, per: 24h}}  # <-",
            )
        ),
        "channels.sms.confirmed_by[0]: 'sent' cannot confirm a delivery; use delivered and/or acknowledged",
    ),
    (
        "duplicate provider",
        variant(("  phone: {cap: {count: 1, per: 1d}}", "  email:\n    providers: [primary, primary]  # <-")),
        "channels.email.providers[1]: primary is listed twice",
    ),
    (
        "cap of zero",
        variant(("{count: 1, per: 1d}}", "{count: 0, per: 1d}}  # <-")),
        "channels.phone.cap.count: must be at least 1, not 0",
    ),
    (
        "a negative announcement threshold",
        variant(("announce_all_above: 10000", "announce_all_above: -1  # <-")),
        "announce_all_above: must be at least 0, not -1",
    ),
    (
        "locales without en",
        variant(("locales: [en, zh-CN]", "locales: [zh-CN]  # <-")),
        "locales: must include en",
    ),
    (
        "a malformed locale",
        variant(("locales: [en, zh-CN]", "locales: [en, zh_CN]  # <-")),
        "locales[1]: 'zh_CN' is not a locale tag such as en or zh-CN",
    ),
    (
        "a locale YAML reads as a boolean",
        variant(("locales: [en, zh-CN]", "locales: [en, no]  # <-")),
        "locales[1]: must be text, not false (YAML reads unquoted yes/no/on/off as true/false; quote text)",
    ),
    (
        "a stage that is not a mapping",
        variant(("      - {channels: [sms, phone]}", "      - sms  # <-")),
        "routes[1].stages[1]: must be a mapping, not 'sms'",
    ),
    (
        "a merge key",
        variant(
            (
                "    match: {type: account_notice}\n",
                "    match: {type: account_notice}\n    <<: {announce: true}  # <-\n",
            )
        ),
        "routes[1]: merge keys (<<) are not supported",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_a_bad_file_is_refused_with_one_line_naming_the_file_and_line(in_tmp: Path, text: str, expected: str) -> None:
    path = write(in_tmp, text)

    with pytest.raises(ConfigurationError) as info:
        load_policy(path)

    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"routing.yaml line {marked_line(text)}: {expected}"), message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "routing.yaml line 1: the file is empty"),
        ("# nothing but a comment\n", "routing.yaml line 1: the file is empty"),
        ("- version: 1\n", "routing.yaml line 1: must be a mapping, not a list"),
        ("version: 1\n---\nversion: 1\n", "routing.yaml line 2: YAML syntax error: but found another document"),
        ("version: !!python/object:os.system 1\n", "routing.yaml line 1: YAML syntax error: could not determine"),
        ("version: 1\nroutes: [\n", "routing.yaml line 3: YAML syntax error: "),
        ("version: 1\nlocales: &a [en, *a]\n", "routing.yaml line 2: locales[1]: an alias refers to itself"),
        ("version: 1\nlocales: [en]\n", "routing.yaml line 1: missing key 'routes'"),
        (
            "version: 1\nlocales: [en]\nchannels:\n  sms: {cap: {count: 1, per: 1h, burst: 2}}\n",
            "routing.yaml line 4: channels.sms.cap.burst: unknown key 'burst'; allowed: count, per",
        ),
    ],
)
def test_odd_files_are_refused_in_one_line(in_tmp: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_policy(write(in_tmp, text))

    assert str(info.value).startswith(expected), str(info.value)
    assert "\n" not in str(info.value)


def test_a_file_that_is_not_utf8_names_its_line(in_tmp: Path) -> None:
    path = in_tmp / "routing.yaml"
    path.write_bytes(b"version: 1\nlocales: [en, \xff]\n")

    with pytest.raises(ConfigurationError, match=r"^routing\.yaml line 2: the file is not UTF-8 text$"):
        load_policy(path)


def test_a_missing_file_is_named(in_tmp: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"^nowhere\.yaml: cannot read the routing policy"):
        load_policy(in_tmp / "nowhere.yaml")


def test_a_file_outside_the_working_directory_is_named_in_full(tmp_path: Path) -> None:
    path = write(tmp_path, variant(("version: 1", "version: 3")))

    with pytest.raises(ConfigurationError) as info:
        load_policy(path)

    assert str(info.value).startswith(f"{path} line 1: version: unsupported version 3")


def test_block_style_errors_name_the_line_of_the_key(in_tmp: Path) -> None:
    text = BASE.replace(
        "  sms: {confirmed_by: [delivered], cap: {count: 3, per: 24h}}\n",
        "  sms:\n    confirmed_by:\n      - delivered\n    cap:\n      count: 3\n      per: forever  # <-\n",
    )

    with pytest.raises(ConfigurationError) as info:
        load_policy(write(in_tmp, text))

    assert str(info.value).startswith(f"routing.yaml line {marked_line(text)}: channels.sms.cap.per: bad duration")


def test_the_first_problem_in_the_file_is_the_one_reported(in_tmp: Path) -> None:
    text = variant(
        ("wait: 24h}", "wait: soon}"),
        ("locales: [en, zh-CN]", "locales: [en, 42]"),
        ("version: 1\n", "version: 1\nbogus: 1  # <-\n"),
    )

    with pytest.raises(ConfigurationError, match=rf"^routing\.yaml line {marked_line(text)}: bogus: unknown key"):
        load_policy(write(in_tmp, text))


@pytest.mark.parametrize(
    ("written", "seconds"),
    [("90s", 90.0), ("10m", 600.0), ("2h", 7200.0), ("1d", DAY), ("45", 45.0), ("1.5h", 5400.0), ("7d", 7 * DAY)],
)
def test_durations_read_as_seconds(in_tmp: Path, written: str, seconds: float) -> None:
    policy = load_policy(write(in_tmp, variant(("  wait: 15m", f"  wait: {written}"))))

    assert policy.routes[1].stages[0].wait_s == seconds


# --- the start-up check --------------------------------------------------------------------


def test_a_template_missing_for_a_locale_names_the_channel_entry_and_the_locale(in_tmp: Path, templates: Path) -> None:
    (templates / "security_incident" / "zh-CN" / "sms.txt").unlink()
    policy = load_policy(write(in_tmp, BASE))

    with pytest.raises(ConfigurationError) as info:
        policy.check(Renderer(templates), enabled=ALL)

    assert str(info.value) == (
        "routing.yaml line 14: route incident: channel sms needs templates/security_incident/zh-CN/sms.txt "
        "for locale zh-CN, which is missing"
    )


def test_an_english_template_does_not_stand_in_for_a_missing_translation(in_tmp: Path, templates: Path) -> None:
    shutil.rmtree(templates / "account_notice" / "zh-CN")
    policy = load_policy(write(in_tmp, BASE))

    with pytest.raises(ConfigurationError, match=r"^routing\.yaml line 19: route account: channel email needs "):
        policy.check(Renderer(templates), enabled=ALL)


def test_a_channel_that_is_not_enabled_needs_no_templates(in_tmp: Path, templates: Path) -> None:
    (templates / "security_incident" / "zh-CN" / "sms.txt").unlink()
    policy = load_policy(write(in_tmp, BASE))

    policy.check(Renderer(templates), enabled=("email", "insite", "phone"))


def test_a_route_with_no_enabled_channel_stops_start_up(in_tmp: Path, templates: Path) -> None:
    policy = load_policy(write(in_tmp, BASE))

    with pytest.raises(ConfigurationError) as info:
        policy.check(Renderer(templates), enabled=("sms", "phone"))

    assert str(info.value) == (
        "routing.yaml line 21: route policy: none of its channels (email, insite) is enabled; "
        "HERALD_CHANNELS enables sms, phone"
    )


def test_a_channel_without_templates_for_the_event_type_is_refused(in_tmp: Path, templates: Path) -> None:
    text = variant(("[email, insite], wait: 24h}", "[email, insite, phone], wait: 24h}  # <-"))
    policy = load_policy(write(in_tmp, text))

    with pytest.raises(ConfigurationError) as info:
        policy.check(Renderer(templates), enabled=ALL)

    assert str(info.value).startswith(
        f"routing.yaml line {marked_line(text)}: route policy: no phone template for policy_change"
    )


@pytest.mark.parametrize(
    ("missing", "locale"),
    [
        ("security_incident/zh-CN/announcement.txt", "for locale zh-CN"),
        ("security_incident/en/announcement_subject.txt", "for locale en"),
        ("_site/zh-CN/page.html", "for locale zh-CN"),
        ("_site/en/index.html", "for locale en"),
        ("_site/index.html", "(the site's root page)"),
    ],
)
def test_an_announcing_route_needs_the_announcement_templates(
    in_tmp: Path, templates: Path, missing: str, locale: str
) -> None:
    (templates / missing).unlink()
    policy = load_policy(write(in_tmp, BASE))

    with pytest.raises(ConfigurationError) as info:
        policy.check(Renderer(templates), enabled=ALL)

    assert str(info.value) == (
        f"routing.yaml line 15: route incident: announce: true needs templates/{missing} {locale}, which is missing"
    )


def test_a_route_that_does_not_announce_needs_no_announcement_templates(in_tmp: Path, templates: Path) -> None:
    for locale in LOCALES:
        (templates / "account_notice" / locale / "announcement.txt").unlink()
    policy = load_policy(write(in_tmp, BASE))

    policy.check(Renderer(templates), enabled=ALL)


def test_a_broken_template_is_found_by_rendering_a_sample(in_tmp: Path, templates: Path) -> None:
    (templates / "service_notice" / "zh-CN" / "announcement.html").write_text("{{ data.nope }}", encoding="utf-8")
    policy = load_policy(write(in_tmp, BASE))

    with pytest.raises(ConfigurationError) as info:
        policy.check(Renderer(templates), enabled=ALL)

    message = str(info.value)
    assert message.startswith("routing.yaml line 31: route service: announcement: template ")
    assert "service_notice/zh-CN/announcement.html" in message and "UndefinedError" in message
    assert "\n" not in message


def test_an_sms_template_too_long_for_the_segment_limit_is_found(in_tmp: Path, templates: Path) -> None:
    policy = load_policy(write(in_tmp, BASE))

    with pytest.raises(ConfigurationError, match=r"^routing\.yaml line 14: route incident: sms: SMS template "):
        policy.check(Renderer(templates, sms_max_segments=1), enabled=ALL)
