"""Which events herald accepts and which it refuses, and what a refusal says.

Every refusal must carry a reason that is one line and short, whatever the input: the
reason is stored in the intake log and shown to the producer's on-call engineer.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from support import incident, people

from worker.core.contacts import check_email, check_phone
from worker.core.errors import InvalidEvent, PayloadTooLarge
from worker.intake.events import (
    EVENT_TYPES,
    INCIDENT_PARTS,
    AccountNotice,
    AllAudience,
    InlineAudience,
    PolicyChange,
    SecurityIncident,
    ServiceNotice,
    Severity,
    UserIdsAudience,
    body_digest,
    event_json_schema,
    parse_event,
    validate_event,
)

MAX_BYTES = 1_000_000
REASON_LIMIT = 500


# --------------------------------------------------------------------------- helpers


def _now() -> datetime:
    return datetime.now(UTC)


def _envelope(kind: str, data: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": f"evt-{uuid.uuid4().hex[:12]}",
        "type": kind,
        "occurred_at": _now().isoformat(),
        "source": "tests",
        "data": data,
    }
    body.update(overrides)
    return body


def account_notice(**data: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user_id": "u00001",
        "action": "suspended",
        "reason": "Repeated violations of the acceptable use policy.",
        "effective_at": (_now() + timedelta(days=1)).isoformat(),
    }
    body.update(data)
    return _envelope("account_notice", body)


def service_notice(**data: Any) -> dict[str, Any]:
    start = _now() + timedelta(days=2)
    body: dict[str, Any] = {
        "kind": "maintenance",
        "title": "Database upgrade",
        "starts_at": start.isoformat(),
        "ends_at": (start + timedelta(hours=2)).isoformat(),
        "services": ["api", "dashboard"],
        "description": "Short read-only window while the database is upgraded.",
        "audience": {"all": True},
    }
    body.update(data)
    return _envelope("service_notice", body)


def policy_change(**data: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "document": "Privacy policy",
        "version": "2025-01",
        "title": "How long we keep delivery evidence",
        "summary": "We now keep delivery evidence for two years.",
        "url": "https://example.com/privacy",
        "substantial": True,
        "effective_at": (_now() + timedelta(days=30)).isoformat(),
        "audience": {"all": True},
    }
    body.update(data)
    return _envelope("policy_change", body)


def without(event: dict[str, Any], *fields: str) -> dict[str, Any]:
    """A copy of ``event`` whose ``data`` lacks ``fields``."""
    copied = copy.deepcopy(event)
    for name in fields:
        del copied["data"][name]
    return copied


def accept(payload: dict[str, Any] | bytes) -> Any:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_event(raw, max_bytes=MAX_BYTES)


def assert_safe_reason(reason: str) -> None:
    assert "\n" not in reason and "\r" not in reason, reason
    assert 0 < len(reason) < REASON_LIMIT, f"{len(reason)} chars: {reason[:300]}..."


def refuse(payload: dict[str, Any] | bytes | str, *, max_bytes: int = MAX_BYTES) -> InvalidEvent:
    """Parse a payload that must be refused; check its reason is one short line; return the error."""
    raw = payload if isinstance(payload, bytes | str) else json.dumps(payload).encode()
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw, max_bytes=max_bytes)
    assert_safe_reason(caught.value.reason)
    assert str(caught.value) == caught.value.reason
    return caught.value


# --------------------------------------------------------------------------- security incidents


def test_a_complete_security_incident_is_accepted() -> None:
    payload = incident()
    event = accept(payload)
    assert isinstance(event, SecurityIncident)
    assert event.event_id == payload["event_id"]
    assert event.data.severity is Severity.HIGH
    assert event.occurred_at.tzinfo is not None
    assert isinstance(event.data.audience, InlineAudience)
    assert [r.user_id for r in event.data.audience.recipients] == ["u00000", "u00001", "u00002"]
    for part in INCIDENT_PARTS:
        assert getattr(event.data, part) == payload["data"][part]


@pytest.mark.parametrize("severity", ["low", "medium", "high", "critical"])
def test_every_known_severity_is_accepted(severity: str) -> None:
    assert accept(incident(severity=severity)).data.severity.value == severity


_MISSING_STYLES = {
    "absent": None,
    "null": "null",
    "empty": "",
    "spaces": "   ",
    "whitespace": " \n\t\r ",
}

_PART_CASES = [
    pytest.param((part,), style, id=f"{part}-{style}") for part in INCIDENT_PARTS for style in _MISSING_STYLES
] + [
    pytest.param(("impact", "remedies"), "absent", id="two-absent"),
    pytest.param(("situation", "advice"), "whitespace", id="two-whitespace"),
    pytest.param(INCIDENT_PARTS, "absent", id="all-five-absent"),
    pytest.param(INCIDENT_PARTS, "empty", id="all-five-empty"),
]


@pytest.mark.parametrize(("missing", "style"), _PART_CASES)
def test_an_incident_missing_any_of_the_five_parts_is_refused_naming_exactly_those_parts(
    missing: tuple[str, ...], style: str
) -> None:
    payload = incident()
    for part in missing:
        value = _MISSING_STYLES[style]
        if value is None:
            del payload["data"][part]
        elif value == "null":
            payload["data"][part] = None
        else:
            payload["data"][part] = value

    error = refuse(payload)

    assert error.event_id == payload["event_id"]
    match = re.search(r"missing or empty: ([a-z, ]+)", error.reason)
    assert match, error.reason
    named = {p.strip() for p in match.group(1).split(",")}
    assert named == set(missing), error.reason
    for part in INCIDENT_PARTS:
        assert (part in error.reason) == (part in missing), error.reason


def test_a_part_made_only_of_control_characters_is_refused_and_named() -> None:
    payload = incident(measures="\x00\x01\x7f")
    error = refuse(payload)
    assert "measures" in error.reason
    for part in set(INCIDENT_PARTS) - {"measures"}:
        assert part not in error.reason


@pytest.mark.parametrize("field", ["incident_id", "severity", "title", "detected_at", "audience"])
def test_an_incident_missing_a_required_field_is_refused_naming_it(field: str) -> None:
    error = refuse(without(incident(), field))
    assert f"data.{field}" in error.reason
    assert "required" in error.reason.lower()


@pytest.mark.parametrize("severity", ["urgent", "HIGHEST", "", "none", 3, None])
def test_a_severity_outside_low_medium_high_critical_is_refused(severity: Any) -> None:
    error = refuse(incident(severity=severity))
    assert "data.severity" in error.reason


@pytest.mark.parametrize(
    ("builder", "where", "field"),
    [
        pytest.param(incident, "data", "detected_at", id="incident-detected_at"),
        pytest.param(incident, "envelope", "occurred_at", id="incident-occurred_at"),
        pytest.param(account_notice, "data", "effective_at", id="account-effective_at"),
        pytest.param(service_notice, "data", "starts_at", id="service-starts_at"),
        pytest.param(policy_change, "data", "effective_at", id="policy-effective_at"),
    ],
)
def test_naive_datetimes_are_refused(builder: Any, where: str, field: str) -> None:
    payload = builder()
    naive = (datetime.now() + timedelta(days=40)).replace(microsecond=0).isoformat()
    assert "+" not in naive and not naive.endswith("Z")
    (payload["data"] if where == "data" else payload)[field] = naive
    error = refuse(payload)
    assert field in error.reason
    assert "timezone" in error.reason


def test_a_title_with_cr_lf_is_collapsed_to_one_line() -> None:
    event = accept(incident(title="Urgent\r\nBcc: attacker@evil.test\n\n  second   line\r"))
    assert event.data.title == "Urgent Bcc: attacker@evil.test second line"
    assert "\r" not in event.data.title and "\n" not in event.data.title


def test_a_title_of_only_whitespace_is_refused() -> None:
    assert "data.title" in refuse(incident(title=" \r\n\t ")).reason


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("xx_YY", "xx-YY"),
        ("zh_CN", "zh-CN"),
        ("en", "en"),
        ("pt-BR", "pt-BR"),
        ("not a locale", "en"),
        ("12", "en"),
        ("", "en"),
        ("<script>", "en"),
        ("en-US\nX", "en"),
        ("x", "en"),
    ],
)
def test_recipient_locales_are_normalised_or_fall_back_to_english(given: str, stored: str) -> None:
    recipients = [{"user_id": "u1", "email": "u1@example.com", "locale": given}]
    event = accept(incident(recipients))
    assert event.data.audience.recipients[0].locale == stored


# --------------------------------------------------------------------------- audiences


@pytest.mark.parametrize(
    ("audience", "model"),
    [
        pytest.param({"recipients": people(2)}, InlineAudience, id="inline"),
        pytest.param({"recipients": [{"user_id": "only-an-id"}]}, InlineAudience, id="inline-no-contacts"),
        pytest.param({"user_ids": ["u1", "u2", "acme:user/3"]}, UserIdsAudience, id="user_ids"),
        pytest.param({"all": True}, AllAudience, id="all"),
    ],
)
def test_each_audience_form_is_accepted(audience: dict[str, Any], model: type) -> None:
    event = accept(incident(audience=audience))
    assert isinstance(event.data.audience, model)


@pytest.mark.parametrize(
    "audience",
    [
        pytest.param({"recipients": []}, id="empty-recipients"),
        pytest.param({"user_ids": []}, id="empty-user_ids"),
        pytest.param({"all": False}, id="all-false"),
        pytest.param({}, id="empty-object"),
        pytest.param({"all": True, "extra": 1}, id="all-with-extra-key"),
        pytest.param({"user_ids": ["u1"], "segment": "vip"}, id="user_ids-with-extra-key"),
        pytest.param({"recipients": people(1), "cc": ["x"]}, id="recipients-with-extra-key"),
        pytest.param({"recipients": people(1), "user_ids": ["u1"]}, id="two-forms-at-once"),
        pytest.param({"recipients": [{"user_id": "u1", "shoe_size": 44}]}, id="recipient-with-extra-key"),
        pytest.param({"recipients": [{"email": "a@example.com"}]}, id="recipient-without-user_id"),
        pytest.param({"user_ids": [" "]}, id="blank-user-id"),
        pytest.param({"user_ids": ["-starts-with-dash"]}, id="bad-user-id"),
        pytest.param(["u1", "u2"], id="a-list"),
        pytest.param("everyone", id="a-string"),
    ],
)
def test_malformed_audiences_are_refused(audience: Any) -> None:
    error = refuse(incident(audience=audience))
    assert "data.audience" in error.reason


# --------------------------------------------------------------------------- account notices


@pytest.mark.parametrize("action", ["suspended", "cancelled", "restored"])
def test_an_account_notice_for_each_action_is_accepted(action: str) -> None:
    event = accept(account_notice(action=action))
    assert isinstance(event, AccountNotice)
    assert event.data.action.value == action
    # Without inline contacts the user is looked up by id.
    assert event.data.audience == UserIdsAudience(user_ids=["u00001"])


def test_an_account_notice_with_the_users_own_contacts_goes_to_them_inline() -> None:
    event = accept(account_notice(recipient={"user_id": "u00001", "email": "one@example.com"}))
    audience = event.data.audience
    assert isinstance(audience, InlineAudience)
    assert [r.user_id for r in audience.recipients] == ["u00001"]


@pytest.mark.parametrize("field", ["user_id", "action", "reason", "effective_at"])
def test_an_account_notice_missing_a_field_is_refused_naming_it(field: str) -> None:
    error = refuse(without(account_notice(), field))
    assert f"data.{field}" in error.reason


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("action", "deleted"),
        ("action", "Suspended "),
        ("reason", ""),
        ("reason", "   "),
        ("user_id", ""),
        ("effective_at", "tomorrow"),
    ],
)
def test_an_account_notice_with_a_bad_field_is_refused_naming_it(field: str, value: str) -> None:
    assert f"data.{field}" in refuse(account_notice(**{field: value})).reason


def test_an_account_notice_whose_inline_recipient_is_someone_else_is_refused() -> None:
    error = refuse(account_notice(recipient={"user_id": "u99999", "email": "other@example.com"}))
    assert "recipient.user_id" in error.reason
    assert "other@example.com" not in error.reason


# --------------------------------------------------------------------------- service notices


@pytest.mark.parametrize("kind", ["maintenance", "outage"])
def test_a_service_notice_of_each_kind_is_accepted(kind: str) -> None:
    event = accept(service_notice(kind=kind))
    assert isinstance(event, ServiceNotice)
    assert event.data.kind.value == kind
    assert event.data.services == ["api", "dashboard"]


def test_a_service_notice_without_a_description_is_accepted() -> None:
    assert accept(without(service_notice(), "description")).data.description is None


def _window(start_offset: timedelta, end_offset: timedelta) -> dict[str, str]:
    base = _now() + timedelta(days=1)
    return {"starts_at": (base + start_offset).isoformat(), "ends_at": (base + end_offset).isoformat()}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        pytest.param(_window(timedelta(hours=2), timedelta(0)), "ends_at must be after starts_at", id="ends-first"),
        pytest.param(_window(timedelta(0), timedelta(0)), "ends_at must be after starts_at", id="zero-length"),
        pytest.param({"services": []}, "data.services", id="no-services"),
        pytest.param({"services": ["api", "  "]}, "data.services", id="blank-service"),
        pytest.param({"kind": "party"}, "data.kind", id="unknown-kind"),
        pytest.param({"title": ""}, "data.title", id="empty-title"),
    ],
)
def test_an_invalid_service_notice_is_refused(overrides: dict[str, Any], named: str) -> None:
    assert named in refuse(service_notice(**overrides)).reason


@pytest.mark.parametrize("field", ["kind", "title", "starts_at", "ends_at", "services", "audience"])
def test_a_service_notice_missing_a_field_is_refused_naming_it(field: str) -> None:
    assert f"data.{field}" in refuse(without(service_notice(), field)).reason


# --------------------------------------------------------------------------- policy changes


def test_a_substantial_change_less_than_seven_days_ahead_is_refused_naming_the_earliest_time() -> None:
    before = _now()
    payload = policy_change(substantial=True, effective_at=(before + timedelta(days=6, hours=23)).isoformat())
    error = refuse(payload)
    after = _now()

    assert "7 days" in error.reason
    match = re.search(r"earliest allowed effective_at is (\S+)", error.reason)
    assert match, error.reason
    earliest = datetime.fromisoformat(match.group(1))
    assert earliest.tzinfo is not None
    lower = (before + timedelta(days=7)).replace(microsecond=0)
    upper = after + timedelta(days=7)
    assert lower <= earliest <= upper, (earliest, lower, upper)


def test_the_lead_time_counts_from_occurred_at_when_that_is_later_than_now() -> None:
    occurred = _now() + timedelta(days=3)
    payload = policy_change(effective_at=(occurred + timedelta(days=6)).isoformat())
    payload["occurred_at"] = occurred.isoformat()
    error = refuse(payload)
    earliest = datetime.fromisoformat(re.search(r"is (\S+)$", error.reason).group(1))  # type: ignore[union-attr]
    assert abs(earliest - (occurred + timedelta(days=7))) < timedelta(seconds=2)


@pytest.mark.parametrize(
    ("substantial", "ahead"),
    [
        pytest.param(True, timedelta(days=7, minutes=1), id="substantial-7d+1min"),
        pytest.param(True, timedelta(days=90), id="substantial-90d"),
        pytest.param(False, timedelta(days=1), id="minor-1d"),
        pytest.param(False, timedelta(0), id="minor-now"),
    ],
)
def test_policy_changes_with_enough_notice_are_accepted(substantial: bool, ahead: timedelta) -> None:
    event = accept(policy_change(substantial=substantial, effective_at=(_now() + ahead).isoformat()))
    assert isinstance(event, PolicyChange)
    assert event.data.substantial is substantial


@pytest.mark.parametrize("summary", ["", "   ", "\n\t "])
def test_a_policy_change_needs_a_summary(summary: str) -> None:
    assert "data.summary" in refuse(policy_change(summary=summary)).reason


@pytest.mark.parametrize("url", ["ftp://example.com/policy", "example.com/policy", "https://exa mple.com", ""])
def test_a_policy_change_needs_an_http_url(url: str) -> None:
    assert "data.url" in refuse(policy_change(url=url)).reason


# --------------------------------------------------------------------------- raw payloads


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"{this is not json", id="broken"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"type": "security_incident",', id="truncated"),
        pytest.param(b"\xff\xfe\x00garbage", id="not-utf8"),
    ],
)
def test_malformed_json_is_refused(raw: bytes) -> None:
    error = refuse(raw)
    assert "not valid JSON" in error.reason
    assert error.event_id is None


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        pytest.param(json.dumps([incident()]).encode(), "list", id="array"),
        pytest.param(b'"security_incident"', "str", id="string"),
        pytest.param(b"42", "int", id="number"),
        pytest.param(b"null", "NoneType", id="null"),
    ],
)
def test_json_that_is_not_an_object_is_refused(raw: bytes, kind: str) -> None:
    error = refuse(raw)
    assert "must be a JSON object" in error.reason
    assert kind in error.reason


def test_a_payload_over_max_bytes_is_refused_as_too_large() -> None:
    raw = json.dumps(incident()).encode()
    assert parse_event(raw, max_bytes=len(raw)).event_id  # exactly at the limit is fine
    with pytest.raises(PayloadTooLarge) as caught:
        parse_event(raw, max_bytes=len(raw) - 1)
    assert_safe_reason(caught.value.reason)
    assert f"{len(raw):,}" in caught.value.reason


def test_a_huge_payload_is_refused_before_it_is_decoded() -> None:
    raw = b"[" * 5_000_000  # would be a RecursionError if anybody tried to parse it
    error = refuse(raw, max_bytes=MAX_BYTES)
    assert isinstance(error, PayloadTooLarge)


def test_a_decoded_object_over_max_bytes_is_refused_too() -> None:
    payload = incident(situation="x" * 5_000)
    with pytest.raises(PayloadTooLarge):
        parse_event(payload, max_bytes=1_000)
    assert parse_event(payload, max_bytes=MAX_BYTES).event_id == payload["event_id"]


@pytest.mark.parametrize("kind", ["alien_invasion", "Security_Incident", "", 7, ["security_incident"]])
def test_an_unknown_type_is_refused_naming_it_and_the_known_ones(kind: Any) -> None:
    payload = {**incident(), "type": kind}
    error = refuse(payload)
    assert json.dumps(kind) in error.reason
    for known in EVENT_TYPES:
        assert known in error.reason
    assert error.event_id == payload["event_id"]


def test_a_missing_type_is_refused_saying_so() -> None:
    payload = incident()
    del payload["type"]
    error = refuse(payload)
    assert "missing" in error.reason
    for known in EVENT_TYPES:
        assert known in error.reason


def test_an_absurdly_long_type_is_shown_truncated() -> None:
    error = refuse({**incident(), "type": "x" * 100_000})
    assert "xxxxx" in error.reason


@pytest.mark.parametrize("field", ["event_id", "occurred_at", "source"])
def test_an_envelope_missing_a_field_is_refused_naming_it(field: str) -> None:
    payload = incident()
    del payload[field]
    assert field in refuse(payload).reason


# --------------------------------------------------------------------------- reasons stay small


def _very_bad_inputs() -> list[Any]:
    broken_recipients = [
        {"user_id": "!bad id", "email": "not an address", "locale": 5, "name": "n" * 500} for _ in range(100)
    ]
    return [
        pytest.param(incident(broken_recipients), id="100-broken-recipients"),
        pytest.param(incident([{"user_id": f"-{i}"} for i in range(100)]), id="100-bad-user-ids"),
        pytest.param(incident(audience={"user_ids": ["bad id\n" * 20] * 100}), id="100-bad-user-ids-with-newlines"),
        pytest.param(
            {"event_id": "x\n" * 200, "type": "security_incident", "occurred_at": "no", "source": "\n", "data": []},
            id="everything-wrong",
        ),
        pytest.param(incident(**{f"unknown_{i}\n\r": "x" for i in range(100)}), id="100-unknown-keys-with-newlines"),
        pytest.param(incident(title="t" * 10_000, severity="s" * 10_000), id="huge-values"),
        pytest.param(
            incident([{"user_id": "u1", "k" * 1_000: 1, "j" * 1_000: 2}]), id="recipients-with-long-unknown-keys"
        ),
        pytest.param(incident(**{"z" * 5_000: 1}), id="one-long-unknown-key"),
    ]


@pytest.mark.parametrize("payload", _very_bad_inputs())
def test_every_reason_is_one_short_line_even_for_very_bad_input(payload: dict[str, Any]) -> None:
    refuse(payload)  # asserts one line and < REASON_LIMIT characters


def test_reasons_for_many_errors_say_how_many_more_there_are() -> None:
    error = refuse(incident([{"user_id": f"-{i}"} for i in range(100)]))
    assert re.search(r"and \d+ more$", error.reason), error.reason


# --------------------------------------------------------------------------- schema and digest


def test_event_json_schema_describes_the_four_types_and_is_serialisable() -> None:
    schema = event_json_schema()
    round_tripped = json.loads(json.dumps(schema))
    assert round_tripped == schema
    assert schema["title"] == "herald event"

    mapping = schema["discriminator"]["mapping"]
    assert schema["discriminator"]["propertyName"] == "type"
    assert set(mapping) == set(EVENT_TYPES)
    one_of = {entry["$ref"] for entry in schema["oneOf"]}
    assert one_of == set(mapping.values())
    assert len(schema["oneOf"]) == 4

    defs = schema["$defs"]

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in refs(schema):
        assert ref.startswith("#/$defs/"), ref
        assert ref.removeprefix("#/$defs/") in defs, ref

    for kind, ref in mapping.items():
        model = defs[ref.removeprefix("#/$defs/")]
        assert model["type"] == "object"
        assert model["properties"]["type"]["const"] == kind
        assert {"event_id", "type", "occurred_at", "source", "data"} <= set(model["required"])

    assert set(INCIDENT_PARTS) <= set(defs["SecurityIncidentData"]["required"])
    assert defs["Severity"]["enum"] == ["low", "medium", "high", "critical"]


def test_body_digest_ignores_key_order_but_not_values() -> None:
    one = {"a": 1, "b": {"c": [1, 2], "d": "é"}, "e": None}
    same = json.loads('{"e": null, "b": {"d": "é", "c": [1, 2]}, "a": 1}')
    assert body_digest(one) == body_digest(same)
    assert re.fullmatch(r"[0-9a-f]{64}", body_digest(one))
    assert body_digest(one) != body_digest({**one, "a": 2})
    assert body_digest(one) != body_digest({**one, "b": {"c": [2, 1], "d": "é"}})


def test_body_digest_of_a_reordered_event_is_the_same() -> None:
    payload = incident()
    reordered = json.loads(json.dumps(dict(reversed(list(payload.items())))))
    reordered["data"] = dict(reversed(list(reordered["data"].items())))
    assert list(reordered) != list(payload)
    assert body_digest(reordered) == body_digest(payload)


# --------------------------------------------------------------------------- contacts


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("alice@example.com", "alice@example.com"),
        ("Alice@EXAMPLE.COM", "Alice@example.com"),
        ("  bob@Example.Org  ", "bob@example.org"),
    ],
)
def test_check_email_normalises_the_domain(raw: str, normalised: str) -> None:
    checked = check_email(raw)
    assert checked.problem is None
    assert checked.value == normalised


@pytest.mark.parametrize(
    "raw",
    [
        "not an address",
        "alice smith@example.com",
        "alice..bob@example.com",
        "alice@example",
        "alice@",
        "@example.com",
        "alice(x)@example.com",
        "ålice@example.com",
    ],
)
def test_check_email_rejects_bad_addresses_without_repeating_them(raw: str) -> None:
    checked = check_email(raw)
    assert checked.value is None
    assert checked.problem
    assert raw not in checked.problem
    assert "\n" not in checked.problem
    local = raw.split("@")[0]
    if len(local) > 1:
        assert local not in checked.problem


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_check_email_reports_a_missing_address(raw: str | None) -> None:
    assert check_email(raw) == type(check_email(raw))(None, "no email address")


@pytest.mark.parametrize(
    ("raw", "e164"),
    [
        ("+44 20 7946 0958", "+442079460958"),
        ("+44 (0)20 7946 0958", "+442079460958"),
        ("+1 202-555-0100", "+12025550100"),
        ("+86 138 1234 5678", "+8613812345678"),
    ],
)
def test_check_phone_normalises_to_e164(raw: str, e164: str) -> None:
    checked = check_phone(raw)
    assert checked.problem is None
    assert checked.value == e164


@pytest.mark.parametrize("raw", ["12345", "+44 20 7946 095", "call me", "0044 20 7946 0958"])
def test_check_phone_rejects_unusable_numbers_without_repeating_them(raw: str) -> None:
    checked = check_phone(raw)
    assert checked.value is None
    assert checked.problem and checked.problem.startswith("invalid phone number")
    digits = "".join(ch for ch in raw if ch.isdigit())
    if len(digits) > 2:
        assert digits not in checked.problem.replace(" ", "")


# --------------------------------------------------------------------------- lead-time rules


def test_the_substantial_lead_can_only_be_made_longer() -> None:
    from pydantic import ValidationError

    from worker.config import Settings
    from worker.intake.events import NoticeRules

    with pytest.raises(ValidationError, match="greater than or equal to 168"):
        Settings(policy_notice_lead_h=100)
    with pytest.raises(ValueError, match="cannot be shorter than 7 days"):
        NoticeRules(substantial_lead=timedelta(days=6))
    longer = Settings(policy_notice_lead_h=240).notice_rules
    with pytest.raises(InvalidEvent, match=r"at least 10 days \(240 h\)"):
        validate_event(policy_change(effective_at=(_now() + timedelta(days=9)).isoformat()), rules=longer)


def test_a_non_substantial_change_has_its_own_shorter_lead_when_one_is_configured() -> None:
    from worker.intake.events import NoticeRules

    rules = NoticeRules(minor_lead=timedelta(hours=24))
    soon = policy_change(substantial=False, effective_at=(_now() + timedelta(hours=12)).isoformat())
    with pytest.raises(InvalidEvent, match=r"a non-substantial policy change must be public at least 1 day \(24 h\)"):
        validate_event(soon, rules=rules)
    later = policy_change(substantial=False, effective_at=(_now() + timedelta(hours=25)).isoformat())
    assert validate_event(later, rules=rules).data.substantial is False  # type: ignore[union-attr]


def test_publish_at_moves_the_week_and_notices_cannot_come_after_the_change() -> None:
    publish = _now() + timedelta(days=2)
    late = policy_change(publish_at=publish.isoformat(), effective_at=(publish + timedelta(days=6)).isoformat())
    assert "so the earliest allowed effective_at is" in refuse(late).reason
    assert (
        "notify_at must not be after effective_at"
        in refuse(policy_change(notify_at=(_now() + timedelta(days=40)).isoformat())).reason
    )
    assert "producers send changes" in refuse(policy_change(notice="reminder")).reason


def test_a_stored_change_is_re_typed_without_the_time_rule() -> None:
    from worker.store.intake import validate_stored

    stale = policy_change(effective_at=(_now() + timedelta(days=1)).isoformat())
    assert validate_stored(stale).data.substantial is True  # type: ignore[union-attr]
