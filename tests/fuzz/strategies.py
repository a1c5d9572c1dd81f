"""Hypothesis strategies for the fuzz suite: valid events of every type, and mutations of them.

Every strategy yields a ``Payload``: the raw text a producer puts on the ingest queue (the
ingest actor's one argument is a JSON *string*, so malformed JSON is possible) and a short
label saying how it was made. Valid events come first; mutations take one apart: a field of
the wrong type, a string at and beyond plausible lengths, a date at and beyond the calendar's
ends, control and non-BMP characters, RTL overrides, deep nesting, huge numbers, unknown,
missing and duplicate keys, and text that is not JSON or not an object at all.

Bounds are generic boundary values (0, 1, 127, 128, 129, 255, 256, 300, 1000, 20000, 100000,
powers of two and their neighbours) plus the limits herald itself publishes in its JSON
Schema (``herald schema``), never constants read from its code, so the suite follows the
contract when the limits change. "At the bound" values are valid by that schema.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from worker.intake.events import event_json_schema

# --------------------------------------------------------------------------- the payload


@dataclass(frozen=True)
class Payload:
    """One payload as it goes on the queue, and how it was made (shown when a test fails)."""

    label: str
    text: str
    event_id: str | None = None  # the generated event_id, while the envelope still has it

    def fresh(self, marker: str) -> Payload:
        """The same payload under an event_id no other example uses (its tail a hash of the
        id and ``marker``), so examples sharing a database never collide; a mutated id is kept."""
        if self.event_id is None:
            return self
        tail = hashlib.sha256(f"{self.event_id}/{marker}".encode()).hexdigest()
        new = self.event_id[:7] + tail[: len(self.event_id) - 7]  # as long as before: sizes stay at a limit
        return Payload(self.label, self.text.replace(self.event_id, new), new)

    def __repr__(self) -> str:
        text = self.text
        shown = text if len(text) <= 400 else f"{text[:300]}…{text[-80:]}"
        return f"Payload({self.label!r}, {shown!r}, chars={len(text):,})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Hypothesis prints a falsifying example with this: clipped, never megabytes."""
        printer.text(repr(self))


@dataclass(frozen=True)
class Raw:
    """A JSON fragment written as is: numbers Python would not write, escapes, deep nesting."""

    text: str
    label: str

    def __repr__(self) -> str:
        return f"Raw({self.label})"


@dataclass(frozen=True)
class Pairs:
    """A JSON object written with repeated keys (a parser keeps one of them)."""

    items: tuple[tuple[str, Any], ...]


def to_json(value: Any, *, ensure_ascii: bool = False) -> str:
    """Write ``value`` as JSON text, with ``Raw`` fragments and ``Pairs`` objects as given.

    Python's ``json`` writes NaN and Infinity for non-finite floats, as many producers do.
    """
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Pairs):
        return (
            "{"
            + ", ".join(
                f"{to_json(k, ensure_ascii=ensure_ascii)}: {to_json(v, ensure_ascii=ensure_ascii)}"
                for k, v in value.items
            )
            + "}"
        )
    if isinstance(value, dict):
        return to_json(Pairs(tuple(value.items())), ensure_ascii=ensure_ascii)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(to_json(v, ensure_ascii=ensure_ascii) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ensure_ascii)


# --------------------------------------------------------------------------- bounds


@functools.cache
def schema_limits() -> dict[str, dict[str, Any]]:
    """Per property name, the tightest ``maxLength``, ``maxItems`` and item ``pattern`` herald publishes."""
    found: dict[str, dict[str, Any]] = {}

    def note(prop: str, spec: dict[str, Any]) -> None:
        for option in [spec, *spec.get("anyOf", [])]:
            mine = found.setdefault(prop, {})
            for key in ("maxLength", "maxItems"):
                if key in option:
                    mine[key] = min(mine.get(key, option[key]), option[key])
            items = option.get("items")
            if isinstance(items, dict):
                if "maxLength" in items:
                    mine["itemMaxLength"] = min(mine.get("itemMaxLength", items["maxLength"]), items["maxLength"])
                if "pattern" in items:
                    mine["itemPattern"] = items["pattern"]

    for definition in event_json_schema().get("$defs", {}).values():
        for prop, spec in definition.get("properties", {}).items():
            if isinstance(spec, dict):
                note(prop, spec)
    return found


def limit(prop: str, key: str = "maxLength") -> int | None:
    """A published limit of a property, or None when the schema gives none."""
    value = schema_limits().get(prop, {}).get(key)
    return int(value) if value is not None else None


@functools.cache
def boundary_lengths() -> tuple[int, ...]:
    """Lengths at and beyond plausible limits: generic ones, and herald's published ones ± 1."""
    lengths = {0, 1, 2, 127, 128, 129, 255, 256, 300, 1000, 20_000, 100_000}
    for k in range(3, 8):
        lengths |= {2**k - 1, 2**k, 2**k + 1}
    for spec in schema_limits().values():
        for key in ("maxLength", "itemMaxLength", "maxItems"):
            if key in spec:
                lengths |= {spec[key] - 1, spec[key], spec[key] + 1}
    return tuple(sorted(n for n in lengths if 0 <= n <= 100_000))


#: Sizes of lists (recipients, user ids, services, opt-outs) at and beyond plausible limits.
LIST_SIZES = (0, 1, 2, 7, 8, 9, 31, 32, 33, 127, 128, 129, 255, 256, 1000)

# --------------------------------------------------------------------------- characters

#: Text units that are valid in a notice but hard on everything downstream.
RICH_UNITS = (
    "Unauthorised access",
    "漏洞通知",  # CJK
    "🔐",  # non-BMP
    "👩‍💻",  # a ZWJ sequence
    "🇨🇳",  # a flag: two regional indicators
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",  # mathematical letters, non-BMP
    "\u202eevil.exe\u202c",  # RTL override
    "\u2067שלום\u2069",  # RTL isolate
    "تنبيه أمني",  # Arabic
    "e\u0301\u0301\u0301",  # stacked combining marks
    "a\u200bb\ufeffc",  # zero-width space and BOM inside text
    "<script>alert(1)</script>",
    "{{ 7*7 }} {% raw %}",
    "&amp; ' \" \\",
    "\u00a0non\u00a0breaking\u2028line",
    "Ünïcödé",
)

#: Characters herald should refuse or neutralise: controls, and lone surrogates (what
#: invalid UTF-8 decodes to with ``surrogateescape``).
HOSTILE_UNITS = (
    "\x00",
    "title\x00",
    "\x01",
    "\x1b[31mred\x1b[0m",
    "\x7f",
    "\x85\x9b",  # C1 controls
    "\r\nBcc: attacker@evil.test",
    "\ud800",  # a lone high surrogate
    "\udfff",
    "ok\udc80\udcff",  # invalid UTF-8 bytes 0x80 0xff, surrogate-escaped
)

_ID_ALPHABET = string.ascii_lowercase + string.digits


def sized(unit: str, length: int) -> str:
    """``unit`` repeated and cut to exactly ``length`` characters."""
    if length <= 0:
        return ""
    return (unit * (length // max(len(unit), 1) + 1))[:length]


@functools.cache
def identifiers(prefix: str = "fz") -> st.SearchStrategy[str]:
    """Ids in the shape the README shows (``inc-2026-0042-notice-1``)."""
    return st.builds(
        lambda tail, n: f"{prefix}-{tail}-{n}", st.text(_ID_ALPHABET, min_size=1, max_size=12), st.integers(0, 10**6)
    )


@functools.cache
def lines(prop: str, typical: tuple[str, ...]) -> st.SearchStrategy[str]:
    """A one-line field: a typical value, rich text, or exactly the published maximum."""
    return _lines(prop, typical)


@st.composite
def _lines(draw: st.DrawFn, prop: str, typical: tuple[str, ...]) -> str:
    """A one-line field: a typical value, rich text, or exactly the published maximum."""
    kind = draw(st.integers(0, 9))
    if kind <= 5:
        return draw(st.sampled_from(typical))
    unit = draw(st.sampled_from(RICH_UNITS))
    top = limit(prop) or limit(prop, "itemMaxLength") or 300
    if kind <= 8:
        return sized(unit, draw(st.integers(1, min(top, 80)))).strip() or "x"
    # At the bound: every character counts, so no leading or trailing space to strip.
    return sized("x" + unit.strip(), top)[: top - 1] + "x"


@functools.cache
def texts(prop: str, typical: str) -> st.SearchStrategy[str]:
    """A free-text field (newlines allowed): typical, rich, or at the published maximum."""
    return _texts(prop, typical)


@st.composite
def _texts(draw: st.DrawFn, prop: str, typical: str) -> str:
    """A free-text field (newlines allowed): typical, rich, or at the published maximum."""
    kind = draw(st.integers(0, 9))
    if kind <= 5:
        return typical
    unit = draw(st.sampled_from(RICH_UNITS))
    top = limit(prop) or 20_000
    if kind <= 8:
        return ("Note: " + sized(unit + "\n", draw(st.integers(1, 400)))).strip()
    return sized("x" + unit.strip(), top)[: top - 1] + "x"


# --------------------------------------------------------------------------- dates

_OFFSETS = st.sampled_from([0, 60, -300, 330, 345, 480, 840, -840, 525, -570])


def when(moment: datetime, offset_minutes: int, style: int) -> str:
    """An aware ISO 8601 time in the given offset, in one of the forms producers write."""
    local = moment.astimezone(timezone(timedelta(minutes=offset_minutes)))
    if style == 0 and offset_minutes == 0:
        return local.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"
    if style == 1:
        return local.isoformat(timespec="microseconds")
    return local.isoformat(timespec="seconds")


_STYLES = st.integers(0, 2)


#: Aware times at the calendar's ends: valid by the schema (an RFC 3339 date-time), hard on
#: whatever converts them to UTC or adds a week.
EARLIEST = ("0001-01-01T00:00:00+01:00", "0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00Z")
LATEST = ("9999-12-31T23:59:59-14:00", "9999-12-31T23:59:59Z", "9999-12-24T00:00:00+00:00")
_EDGE_TIMES = st.sampled_from(EARLIEST + LATEST)
_ONE_IN_TWENTY = st.integers(0, 19)


def time_in(draw: st.DrawFn, after: datetime, span: timedelta) -> str:
    """An aware time in ``[after, after + span]``, in a random offset and form; one in twenty
    at the calendar's ends instead."""
    if draw(_ONE_IN_TWENTY) == 19:  # not 0: shrinking heads for 0, and a minimal example should be plain
        return draw(_EDGE_TIMES)
    seconds = draw(st.integers(0, max(int(span.total_seconds()), 0)))
    return when(after + timedelta(seconds=seconds), draw(_OFFSETS), draw(_STYLES))


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


#: Times at the calendar's ends, where a time zone or a week's lead takes them past it.
CALENDAR_ENDS: tuple[Any, ...] = (
    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00-14:00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59Z",
    "9999-12-31T23:59:59.999999-14:00",  # after year 9999 in UTC
    "9999-12-31T23:59:59+14:00",
    "9999-12-24T00:00:00Z",  # a week before the end
    -62_135_596_800,  # 0001-01-01 as a Unix time
    253_402_300_799,  # 9999-12-31T23:59:59 as a Unix time
    253_402_300_800,
)

#: Offsets at and past ±14:00, and things that are not aware times at all.
ODD_TIMES: tuple[Any, ...] = (
    "2026-06-01T12:00:00+14:00",
    "2026-06-01T12:00:00-14:00",
    "2026-06-01T12:00:00+14:01",
    "2026-06-01T12:00:00+24:00",
    "2026-06-01T12:00:00",  # naive
    "2026-06-01",
    "2026-02-30T00:00:00Z",
    "2026-06-01T25:00:00Z",
    "2026-06-01T23:59:60Z",  # a leap second
    "2026-06-01 12:00:00+00:00",
    "+12026-06-01T12:00:00Z",
    "yesterday",
    "",
    "T",
    0,
    -1,
    10**12,
    10**20,
    1e308,
    Raw("1e400", "1e400"),
    Raw("NaN", "NaN"),
)


# --------------------------------------------------------------------------- audiences

#: Users every fuzz database knows (the pipeline test imports them before it publishes).
POOL = tuple(f"fz-user-{i:03d}" for i in range(16))

_CHANNEL_NAMES = ("email", "sms", "phone", "insite")


@functools.cache
def _longest_channel_name() -> int:
    """The longest opt-out name the published pattern allows, found by trying boundary lengths."""
    pattern = schema_limits().get("opt_out", {}).get("itemPattern", r"^[a-z][a-z0-9_-]{0,31}$")
    fits = [n for n in boundary_lengths() if 1 <= n <= 512 and re.fullmatch(pattern, sized("ab1_-", n))]
    return max(fits, default=8)


@st.composite
def opt_outs(draw: st.DrawFn) -> list[str]:
    """Channels a person opted out of: real ones, or as many names as the schema allows, each
    as long as its pattern allows."""
    kind = draw(st.integers(0, 9))
    if kind <= 5:
        return draw(st.lists(st.sampled_from(_CHANNEL_NAMES), max_size=3, unique=True))
    longest = _longest_channel_name()
    count = limit("opt_out", "maxItems") or 8
    letters = draw(st.lists(st.sampled_from(string.ascii_lowercase), min_size=count, max_size=count, unique=True))
    return [sized(letter + "opt_out-channel_", longest) for letter in letters]


@functools.cache
def recipients(user_id: str | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """One inline recipient; contacts may be missing or unusable (that fails one delivery only)."""
    return _recipients(user_id)


@st.composite
def _recipients(draw: st.DrawFn, user_id: str | None) -> dict[str, Any]:
    uid = user_id or draw(st.one_of(st.sampled_from(POOL), identifiers("fz-person")))
    person: dict[str, Any] = {"user_id": uid}
    if draw(st.booleans()):
        person["name"] = draw(lines("name", ("Ann Example", "张伟", "O'Brien-Smith", "Zoë")))
    email = draw(st.integers(0, 9))
    if email <= 6:
        person["email"] = f"{uid.replace('/', '-')[:40]}@example.com"
    elif email == 7:
        person["email"] = draw(st.sampled_from(["not an address", "a@b", "ünï@例え.jp", "x@localhost"]))
    if draw(st.booleans()):
        person["phone"] = draw(st.sampled_from(["+14155550123", "+8613812345678", "(415) 555-0123", "12"]))
    person["locale"] = draw(st.sampled_from(["en", "zh-CN", "zh_CN", "pt-BR", "xx", "not a locale"]))
    if draw(st.integers(0, 9)) <= 6:
        person["opt_out"] = draw(opt_outs())
    if draw(st.booleans()):
        person["time_zone"] = draw(st.sampled_from(["Europe/Berlin", "Asia/Shanghai", "America/New_York", "Mars/Base"]))
    return person


@functools.cache
def audiences(max_inline: int) -> st.SearchStrategy[dict[str, Any]]:
    """Inline recipients, user ids (known and unknown), or everybody."""
    return _audiences(max_inline)


@st.composite
def _audiences(draw: st.DrawFn, max_inline: int) -> dict[str, Any]:
    """Inline recipients, user ids (known and unknown), or everybody."""
    kind = draw(st.integers(0, 4))
    if kind <= 2:
        people = draw(st.lists(recipients(), min_size=1, max_size=max_inline))
        return {"recipients": people}
    if kind == 3:
        ids = draw(
            st.lists(st.one_of(st.sampled_from(POOL), identifiers("fz-unknown")), min_size=1, max_size=max_inline)
        )
        return {"user_ids": ids}
    return {"all": True}


# --------------------------------------------------------------------------- valid events


#: Event ids are all as long, so that ``Payload.fresh`` keeps a payload's size.
_EVENT_ID_TAILS = st.text(_ID_ALPHABET, min_size=16, max_size=16)


@st.composite
def envelopes(draw: st.DrawFn, kind: str, now: datetime) -> dict[str, Any]:
    """The envelope of an event, with a fresh event_id."""
    return {
        "event_id": "fz-evt-" + draw(_EVENT_ID_TAILS),
        "type": kind,
        "occurred_at": time_in(draw, now - timedelta(days=2), timedelta(days=2)),
        "source": draw(lines("source", ("security-team", "billing", "legal", "ops"))),
    }


@st.composite
def security_incidents(draw: st.DrawFn, max_inline: int = 3) -> dict[str, Any]:
    """A complete security incident: all five promised parts, an aware detection time, an audience."""
    now = _now()
    data: dict[str, Any] = {
        "incident_id": draw(st.one_of(st.sampled_from(["INC-FZ-1", "INC-FZ-2"]), identifiers("INC-FZ"))),
        "severity": draw(st.sampled_from(["low", "medium", "high", "critical"])),
        "title": draw(lines("title", ("Unauthorised access to a support tool", "Credential stuffing"))),
        "detected_at": time_in(draw, now - timedelta(days=30), timedelta(days=30)),
        "situation": draw(texts("situation", "Attackers tried leaked passwords.")),
        "impact": draw(texts("impact", "Some accounts may have been signed into.")),
        "measures": draw(texts("measures", "We blocked the addresses and reset sessions.")),
        "advice": draw(texts("advice", "Use a unique password.")),
        "remedies": draw(texts("remedies", "Contact support to review your account.")),
        "audience": draw(audiences(max_inline)),
    }
    if draw(st.booleans()):
        data["status"] = draw(st.sampled_from(["investigating", "identified", "monitoring", "resolved"]))
    return {**draw(envelopes("security_incident", now)), "data": data}


@st.composite
def account_notices(draw: st.DrawFn, max_inline: int = 3) -> dict[str, Any]:
    """A notice to one user about their account, with or without their contacts inline."""
    now = _now()
    user_id = draw(st.one_of(st.sampled_from(POOL), identifiers("fz-account")))
    data: dict[str, Any] = {
        "user_id": user_id,
        "action": draw(st.sampled_from(["suspended", "cancelled", "restored"])),
        "reason": draw(texts("reason", "Repeated violations of the acceptable use policy.")),
        "effective_at": time_in(draw, now - timedelta(days=1), timedelta(days=60)),
    }
    if draw(st.booleans()):
        data["recipient"] = draw(recipients(user_id))
    return {**draw(envelopes("account_notice", now)), "data": data}


@st.composite
def service_notices(draw: st.DrawFn, max_inline: int = 3) -> dict[str, Any]:
    """A maintenance window or an outage that ends after it starts."""
    now = _now()
    start = now + timedelta(seconds=draw(st.integers(-86_400, 30 * 86_400)))
    minutes = draw(st.sampled_from([1, 30, 120, 24 * 60 * 7]))
    data: dict[str, Any] = {
        "kind": draw(st.sampled_from(["maintenance", "outage"])),
        "title": draw(lines("title", ("Database upgrade", "Login outage"))),
        "starts_at": when(start, draw(_OFFSETS), draw(st.integers(0, 2))),
        "ends_at": when(start + timedelta(minutes=minutes), draw(_OFFSETS), draw(st.integers(0, 2))),
        **draw(st.sampled_from([{}] * 18 + [{"starts_at": EARLIEST[0]}, {"ends_at": LATEST[0]}])),
        "services": draw(st.lists(lines("services", ("api", "dashboard", "支付")), min_size=1, max_size=4)),
        "audience": draw(audiences(max_inline)),
    }
    if draw(st.booleans()):
        data["description"] = draw(texts("description", "A short read-only window."))
    if draw(st.booleans()):
        data["severity"] = draw(st.sampled_from(["low", "medium", "high", "critical"]))
    return {**draw(envelopes("service_notice", now)), "data": data}


#: How far past the earliest allowed time a valid policy change takes effect, at least: the
#: payload is built a little before herald judges it.
LEAD_MARGIN = timedelta(hours=1)


@st.composite
def policy_changes(draw: st.DrawFn, max_inline: int = 3, lead: timedelta = timedelta(days=7)) -> dict[str, Any]:
    """A policy change that keeps the promised lead (effective at least ``lead`` after its
    notice goes public, plus a margin), or carries an override that waives it."""
    now = _now()
    envelope = draw(envelopes("policy_change", now))
    occurred = datetime.fromisoformat(envelope["occurred_at"].replace("Z", "+00:00"))
    if not 1000 < occurred.year < 9000:
        occurred = now  # at a calendar's end: the lead is judged from now, or cannot be judged at all
    substantial = draw(st.booleans())
    publish_at: datetime | None = None
    if draw(st.booleans()):
        publish_at = now + timedelta(hours=draw(st.integers(-48, 24 * 30)))
    notice = max(now, publish_at or occurred)
    override = draw(st.integers(0, 9)) == 9
    if override:
        effective = now + timedelta(hours=draw(st.integers(1, 24 * 6)))
    else:
        effective = notice + lead + LEAD_MARGIN + timedelta(hours=draw(st.integers(0, 24 * 365 * 2)))
    if publish_at is not None and publish_at > effective:
        publish_at = None
    data: dict[str, Any] = {
        "document": draw(
            st.one_of(
                st.sampled_from(["privacy_policy", "terms_of_service"]),
                identifiers("fz-doc"),
                lines("document", ("Cookie Policy",)),
            )
        ),
        "version": draw(st.one_of(identifiers("v"), lines("version", ("2027-01", "v2")))),
        "title": draw(lines("title", ("Clearer rules on how long we keep your data",))),
        draw(st.sampled_from(["summary_of_changes", "summary"])): draw(
            texts("summary_of_changes", "Support tickets are kept for 2 years instead of 5.")
        ),
        "url": draw(st.sampled_from(["https://www.example.com/legal/privacy", "http://example.com/tos?v=2#x"])),
        "substantial": substantial,
        "effective_at": when(effective, draw(_OFFSETS), draw(st.integers(0, 2))),
    }
    if draw(st.booleans()):
        data["audience"] = draw(audiences(max_inline))
    if draw(_ONE_IN_TWENTY) == 19:  # not 0: shrinking heads for 0, and a minimal example should be plain
        data["effective_at"] = draw(st.sampled_from(LATEST))  # later than any lead asks
        publish_at = None
    if publish_at is not None:
        data["publish_at"] = when(publish_at, draw(_OFFSETS), 2)
    start = publish_at or notice
    at_the_end = data["effective_at"] in LATEST
    if not at_the_end and draw(st.booleans()) and effective - start > timedelta(hours=2):
        data["notify_at"] = when(start + (effective - start) / 4, 0, 2)
        start = start + (effective - start) / 4
    if not at_the_end and draw(st.booleans()) and effective - start > timedelta(hours=2):
        data["remind_at"] = when(start + (effective - start) / 2, draw(_OFFSETS), 2)
    if override:
        data["override"] = {
            "legal_basis": draw(texts("legal_basis", "Order of the regulator, case 2026-17.")),
            "operator": draw(lines("operator", ("alice@legal",))),
        }
    return {**envelope, "data": data}


#: One builder per event type the README lists.
EVENT_BUILDERS: dict[str, Callable[..., st.SearchStrategy[dict[str, Any]]]] = {
    "security_incident": security_incidents,
    "account_notice": account_notices,
    "service_notice": service_notices,
    "policy_change": policy_changes,
}


def valid_events(max_inline: int = 3) -> st.SearchStrategy[dict[str, Any]]:
    """A valid event of any of the four types."""
    return st.one_of(*(builder(max_inline) for builder in EVENT_BUILDERS.values()))


# --------------------------------------------------------------------------- at the bounds

#: One-line fields per type that an edge can fill to the published maximum.
_LINE_FIELDS = {
    "security_incident": ("title",),
    "service_notice": ("title",),
    "policy_change": ("document", "version", "title"),
    "account_notice": (),
}

#: Characters that are not text but that today's validation lets through in one-line fields.
_CONTROLS = ("\x00", "\x01", "\x1b[2J", "\x7f", "\x00\x01\x1b\x7f")


def _long_opt_outs() -> list[str]:
    count = limit("opt_out", "maxItems") or 8
    return [sized(letter + "opt_out-channel_", _longest_channel_name()) for letter in string.ascii_lowercase[:count]]


def _at_most(prop: str, unit: str) -> str:
    top = limit(prop) or limit(prop, "itemMaxLength") or 300
    return sized("x" + unit.strip(), top)[: top - 1] + "x"


#: The ways ``bounded_events`` pushes a valid event to the bounds.
EDGES = ("opt-outs", "length", "date", "controls")


@st.composite
def bounded_events(
    draw: st.DrawFn, max_inline: int = 3, kind: str | None = None, edges: tuple[str, ...] | None = None
) -> tuple[dict[str, Any], str]:
    """A valid event (by the published schema) pushed to its bounds in one to three ways:
    every recipient with as many opt-outs as allowed, each as long as allowed; a one-line
    field at its maximum length; a time at the calendar's ends; controls in a one-line field.
    ``kind`` and ``edges`` fix the event type and the ways; by default both are drawn.
    Returns the event and a label naming what was pushed."""
    event = _clone(draw(EVENT_BUILDERS[kind](max_inline) if kind else valid_events(max_inline)))
    kind, data = event["type"], event["data"]
    if edges is None:
        edges = tuple(draw(st.sets(st.sampled_from(EDGES), min_size=1, max_size=3)))
    done: list[str] = []
    if "opt-outs" in edges:
        if kind == "account_notice":
            data["recipient"] = {"user_id": data["user_id"], "email": "fz-edge@example.com"}
            people = [data["recipient"]]
        else:
            audience = data.get("audience", {})
            if "recipients" not in audience:
                audience = data["audience"] = {
                    "recipients": draw(st.lists(recipients(), min_size=1, max_size=max_inline))
                }
            people = audience["recipients"]
        for person in people:
            person["opt_out"] = _long_opt_outs()
        done.append(f"opt-outs {len(_long_opt_outs())} × {_longest_channel_name()} for {len(people)} recipient(s)")
    fields = [("data", f) for f in _LINE_FIELDS[kind]] + [("envelope", "source")]
    if "length" in edges:
        where, name = draw(st.sampled_from(fields))
        value = _at_most(name, draw(st.sampled_from(RICH_UNITS)))
        (data if where == "data" else event)[name] = value
        done.append(f"{name} of {len(value)} characters")
    if "controls" in edges:
        where, name = draw(st.sampled_from(fields))
        target = data if where == "data" else event
        target[name] = str(target[name])[:200] + draw(st.sampled_from(_CONTROLS))
        done.append(f"controls in {name}")
    if "date" in edges:
        if kind == "security_incident":
            data["detected_at"] = draw(st.sampled_from(EARLIEST + LATEST))
            done.append(f"detected_at {data['detected_at']}")
        elif kind == "account_notice":
            data["effective_at"] = draw(st.sampled_from(EARLIEST + LATEST))
            done.append(f"effective_at {data['effective_at']}")
        elif kind == "service_notice":
            if draw(st.booleans()):
                data["starts_at"] = draw(st.sampled_from(EARLIEST))
            else:
                data["ends_at"] = draw(st.sampled_from(LATEST))
            done.append(f"window {data['starts_at']} to {data['ends_at']}")
        else:
            data["effective_at"] = draw(st.sampled_from(LATEST))
            for later in ("notify_at", "remind_at"):
                data.pop(later, None)
            done.append(f"effective_at {data['effective_at']}")
    return event, f"{kind} at the bounds: {'; '.join(done)}"


# --------------------------------------------------------------------------- hostile values


def _deep_list(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth, f"[…] nested {depth:,} deep")


def _deep_object(depth: int) -> Raw:
    return Raw('{"a": ' * depth + "null" + "}" * depth, f"{{a: …}} nested {depth:,} deep")


DEPTHS = (10, 100, 500, 900, 1_000, 1_001, 5_000, 10_000, 100_000)

HUGE_NUMBERS: tuple[Any, ...] = (
    Raw("1" + "0" * 400, "10**400"),
    Raw("9" * 5_000, "a 5,000-digit integer"),
    Raw("1e400", "1e400"),
    Raw("-1e400", "-1e400"),
    Raw("-0", "-0"),
    Raw("-0.0", "-0.0"),
    Raw("NaN", "NaN"),
    Raw("Infinity", "Infinity"),
    Raw("1E-400", "1E-400"),
    2**63,
    -(2**63) - 1,
    2**64,
    1e308,
    5e-324,
)

WRONG_TYPES: tuple[Any, ...] = (None, True, False, 0, -1, 1.5, "", [], {}, ["x"], {"k": "v"}, [None], "null", "true")


@st.composite
def _lengths(draw: st.DrawFn) -> Any:
    """A string of a boundary length made of a rich unit, or a list of a boundary size."""
    if draw(st.integers(0, 4)) == 0:
        return [draw(st.sampled_from(["x", "", None, 1]))] * draw(st.sampled_from(LIST_SIZES))
    unit = draw(st.sampled_from((*RICH_UNITS, "a", " ", "\t\n")))
    return sized(unit, draw(st.sampled_from(boundary_lengths())))


@st.composite
def _characters(draw: st.DrawFn) -> Any:
    """Controls, lone surrogates (raw or as JSON escapes), RTL overrides and non-BMP text."""
    unit = draw(st.sampled_from(HOSTILE_UNITS + RICH_UNITS))
    value = sized(unit, draw(st.sampled_from([len(unit), 1, 2, 300, 1000])))
    if draw(st.booleans()):
        return Raw(json.dumps(value, ensure_ascii=True), f"escaped {value[:12]!r} ({len(value):,} chars)")
    return value


@st.composite
def _nesting(draw: st.DrawFn) -> Raw:
    depth = draw(st.sampled_from(DEPTHS))
    return _deep_list(depth) if draw(st.booleans()) else _deep_object(depth)


_ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)

#: Families of values a careless or hostile producer puts where a field should be.
VALUES: dict[str, st.SearchStrategy[Any]] = {
    "types": st.one_of(st.sampled_from(WRONG_TYPES), _ANY_JSON),
    "lengths": _lengths(),
    "characters": _characters(),
    "dates": st.one_of(st.sampled_from(CALENDAR_ENDS), st.sampled_from(ODD_TIMES)),
    "numbers": st.sampled_from(HUGE_NUMBERS),
    "nesting": _nesting(),
}
VALUES["any"] = st.one_of(*VALUES.values())

# --------------------------------------------------------------------------- mutations


def _paths(node: Any, prefix: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Every path into a JSON tree, root first."""
    yield prefix
    if isinstance(node, dict):
        for key, child in node.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node[:4]):
            yield from _paths(child, (*prefix, index))


def _show(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in path) or "(root)"


def _clone(node: Any) -> Any:
    return json.loads(json.dumps(node))


def _get(node: Any, path: tuple[str | int, ...]) -> Any:
    for part in path:
        node = node[part]
    return node


def _describe(value: Any) -> str:
    if isinstance(value, Raw):
        return value.label
    if isinstance(value, str):
        shown = repr(value[:24]) + ("…" if len(value) > 24 else "")
        return f"str({len(value):,}) {shown}"
    if isinstance(value, list) and len(value) > 3:
        return f"list({len(value):,})"
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


UNKNOWN_KEYS = ("shoe_size", "__proto__", "constructor", "$where", "data", "event_id", "", "é", "\u202ekey", "a" * 300)

#: Where a mutation strikes: the datetime fields when the values are dates, anywhere otherwise.
_DATE_FIELDS = (
    "occurred_at",
    "detected_at",
    "effective_at",
    "starts_at",
    "ends_at",
    "publish_at",
    "notify_at",
    "remind_at",
)


@st.composite
def _mutated(draw: st.DrawFn, family: str, shapes: bool, max_inline: int, kind: str | None) -> tuple[Any, str, str]:
    """A valid event with one thing changed, its label, and the event_id it was generated with."""
    event = _clone(draw(EVENT_BUILDERS[kind](max_inline) if kind else valid_events(max_inline)))
    generated = event["event_id"]
    tree, label = _mutate(draw, event, family, shapes)
    return tree, label, generated


def _mutate(draw: st.DrawFn, event: dict[str, Any], family: str, shapes: bool) -> tuple[Any, str]:
    label = f"{event['type']}: "
    paths = list(_paths(event))
    if family == "dates":
        paths = [p for p in paths if p and p[-1] in _DATE_FIELDS] or paths
    path = draw(st.sampled_from(paths))
    operation = draw(st.sampled_from(["remove", "unknown", "repeat", "replace"])) if shapes else "replace"
    values = VALUES[family]
    if operation == "remove" and path:
        del _get(event, path[:-1])[path[-1]]
        return event, label + f"without {_show(path)}"
    target = _get(event, path)
    if operation == "unknown" and isinstance(target, dict):
        key = draw(st.sampled_from(UNKNOWN_KEYS))
        value = draw(values)
        if key not in target:
            target[key] = value
            return event, label + f"unknown key {key[:20]!r} in {_show(path)} = {_describe(value)}"
    if operation == "repeat" and isinstance(target, dict) and target:
        key = draw(st.sampled_from(sorted(target)))
        value = draw(values)
        first = draw(st.booleans())
        extra = (key, value)
        items = [extra, *target.items()] if first else [*target.items(), extra]
        where = "first" if first else "last"
        if not path:
            return Pairs(tuple(items)), label + f"repeated key {key} ({where}) = {_describe(value)}"
        _get(event, path[:-1])[path[-1]] = Pairs(tuple(items))
        return event, label + f"repeated key {_show((*path, key))} ({where}) = {_describe(value)}"
    if not path:
        path = (draw(st.sampled_from(sorted(event))),)
    value = draw(values)
    _get(event, path[:-1])[path[-1]] = value
    return event, label + f"{_show(path)} = {_describe(value)}"


NOT_OBJECTS = (
    "",
    " ",
    "\n",
    "null",
    "true",
    "0",
    "-0",
    "1e400",
    "NaN",
    "[]",
    "{}",
    '""',
    '"security_incident"',
    "9" * 5_000,
    "[" * 10_000 + "]" * 10_000,
    '{"a": ' * 10_000 + "null" + "}" * 10_000,
    "{" * 100_000,
    "\ud800",
    '"\\ud800"',
    "\udc80\udcff",  # invalid UTF-8 bytes, as the surrogates they decode to
    "\x00",
    "\ufeff{}",
    "{'single': 'quotes'}",
    "{this is not json",
)


@st.composite
def _written_wrongly(draw: st.DrawFn, max_inline: int) -> tuple[str, str, str]:
    event = draw(valid_events(max_inline))
    text = to_json(event, ensure_ascii=draw(st.booleans()))
    kind = draw(st.integers(0, 7))
    name = event["type"]
    if kind == 0:
        cut = draw(st.integers(0, max(len(text) - 1, 0)))
        return text[:cut], f"{name} cut at {cut:,} of {len(text):,} chars", event["event_id"]
    if kind == 1:
        return "\ufeff" + text, f"{name} after a BOM", event["event_id"]
    if kind == 2:
        return json.dumps(text), f"{name} encoded twice (a JSON string)", event["event_id"]
    if kind == 3:
        return "[" + text + "]", f"{name} inside a list", event["event_id"]
    if kind == 4:
        junk = draw(st.sampled_from([",", "}", " x", "\x00", "\ud800", "{}", " " * 1000]))
        return text + junk, f"{name} then {junk[:10]!r}", event["event_id"]
    if kind == 5:
        depth = draw(st.sampled_from(DEPTHS))
        return "[" * depth + text + "]" * depth, f"{name} inside lists {depth:,} deep", event["event_id"]
    if kind == 6:
        return f"  \n\t{text}\n  ", f"{name} with whitespace around", event["event_id"]
    return text.replace('"', "'"), f"{name} with single quotes", event["event_id"]


@st.composite
def _oversize(draw: st.DrawFn, max_bytes: int) -> tuple[str, str, str]:
    event = _clone(draw(security_incidents()))
    target = draw(st.sampled_from([max_bytes - 1, max_bytes, max_bytes + 1, 2 * max_bytes]))

    def size(text: str) -> int:
        return len(text.encode("utf-8", "surrogatepass"))

    if draw(st.booleans()):
        event["padding"] = ""
        event["padding"] = "x" * max(target - size(to_json(event)), 0)
        text = to_json(event)
        return text, f"security_incident padded by an unknown field to {size(text):,} bytes", event["event_id"]
    one = {"user_id": "fz-pad-0000000", "email": "fz-pad-0000000@example.com"}
    event["data"]["audience"] = {"recipients": []}
    count = max((target - size(to_json(event))) // (len(to_json(one)) + 2), 1)
    event["data"]["audience"]["recipients"] = [
        {"user_id": f"fz-pad-{i:07d}", "email": f"fz-pad-{i:07d}@example.com"} for i in range(count)
    ]
    text = to_json(event)
    return text, f"security_incident to {count:,} inline recipients, {size(text):,} bytes", event["event_id"]


def _intended_id(tree: Any, generated: str) -> str | None:
    """The generated event_id if the mutation left it in place, else None."""
    if isinstance(tree, dict) and tree.get("event_id") == generated:
        return generated
    return None


# --------------------------------------------------------------------------- payloads


@functools.cache
def valid_payloads(max_inline: int = 3) -> st.SearchStrategy[Payload]:
    """A valid event of any type, as a producer writes it (ASCII-escaped or not)."""

    @st.composite
    def build(draw: st.DrawFn) -> Payload:
        event = draw(valid_events(max_inline))
        return Payload(f"valid {event['type']}", to_json(event, ensure_ascii=draw(st.booleans())), event["event_id"])

    return build()


@functools.cache
def bounded_payloads(
    max_inline: int = 3, kind: str | None = None, edges: tuple[str, ...] | None = None
) -> st.SearchStrategy[Payload]:
    """A valid event pushed to the bounds the schema publishes (see ``bounded_events``)."""

    @st.composite
    def build(draw: st.DrawFn) -> Payload:
        event, label = draw(bounded_events(max_inline, kind, edges))
        return Payload(label, to_json(event, ensure_ascii=draw(st.booleans())), event["event_id"])

    return build()


@functools.cache
def mutated_payloads(
    family: str = "any", *, shapes: bool = False, max_inline: int = 3, kind: str | None = None
) -> st.SearchStrategy[Payload]:
    """A valid event with one value replaced by one of ``VALUES[family]``; with ``shapes``,
    also a key removed, an unknown key added or a key repeated; ``kind`` keeps to one event type."""

    @st.composite
    def build(draw: st.DrawFn) -> Payload:
        tree, label, generated = draw(_mutated(family, shapes, max_inline, kind))
        return Payload(label, to_json(tree, ensure_ascii=draw(st.booleans())), _intended_id(tree, generated))

    return build()


@functools.cache
def malformed_payloads(max_inline: int = 3, max_bytes: int | None = None) -> st.SearchStrategy[Payload]:
    """Text that is not one JSON object: cut short, wrapped, encoded twice, junk after, not an
    object at all, empty, invalid UTF-8 (as the surrogates it decodes to); with ``max_bytes``,
    also events padded to about that size."""

    @st.composite
    def build(draw: st.DrawFn) -> Payload:
        kind = draw(st.integers(0, 9))
        if kind <= 5:
            text, label, generated = draw(_written_wrongly(max_inline))
            return Payload(label, text, generated)
        if kind <= 8 or max_bytes is None:
            text = draw(st.sampled_from(NOT_OBJECTS))
            more = f" ({len(text):,} chars)" if len(text) > 16 else ""
            return Payload(f"not an event: {text[:16]!r}{more}", text)
        text, label, generated = draw(_oversize(max_bytes))
        return Payload(label, text, generated)

    return build()


class Stream(list[Payload]):
    """Payloads in the order they are published; shown as one clipped line per payload."""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def __repr__(self) -> str:
        lines = [f"  {i:3d} {p.label[:90]!r} ({len(p.text):,} chars)" for i, p in enumerate(self)]
        return f"Stream({len(self)} payloads:\n" + "\n".join(lines) + ")"


@st.composite
def streams(draw: st.DrawFn, *, size: int, max_inline: int = 3) -> Stream:
    """A stream of about ``size`` payloads as producers send them, each with its own event_id:
    a third valid, half mutated, a sixth malformed, all different (even the simplest stream
    hypothesis draws is varied); then valid events at the published bounds, some payloads sent
    twice, and some event_ids reused with a different body (a conflict)."""

    def some(strategy: st.SearchStrategy[Payload], count: int) -> list[Payload]:
        return draw(st.lists(strategy, min_size=count, max_size=count, unique_by=lambda p: p.text))

    batch = some(valid_payloads(max_inline), size // 3)
    batch += some(mutated_payloads("any", shapes=True, max_inline=max_inline), size // 2)
    batch += some(malformed_payloads(max_inline), size - size // 3 - size // 2)
    # Each type with a time at the calendar's ends and with the most and longest opt-outs (what
    # only the fan-out meets), then a few pushed at random.
    for kind in EVENT_BUILDERS:
        batch += [draw(bounded_payloads(max_inline, kind, (edge,))) for edge in ("date", "opt-outs")]
    batch += draw(st.lists(bounded_payloads(max_inline), min_size=1, max_size=3))
    batch = [payload.fresh(f"stream-{i}") for i, payload in enumerate(batch)]  # an event_id each
    valid = [p for p in batch if p.label.startswith("valid ")]
    if valid:
        for payload in draw(st.lists(st.sampled_from(valid), max_size=len(valid) // 5)):
            batch.append(Payload("again: " + payload.label, payload.text, payload.event_id))
        for payload in draw(st.lists(st.sampled_from(valid), max_size=len(valid) // 10)):
            event = json.loads(payload.text)
            event["source"] = "fz-conflicting-copy"
            batch.append(Payload("same event_id, different body: " + payload.label, to_json(event), payload.event_id))
    return Stream(draw(st.permutations(batch)))


# --------------------------------------------------------------------------- the wire


@dataclass(frozen=True)
class WireMessage:
    """The ``args`` and ``kwargs`` of a raw dramatiq message, as bytes a producer in any
    language writes with HSET (README, "Publishing from any language")."""

    label: str
    args: bytes
    kwargs: bytes = b"{}"

    def __repr__(self) -> str:
        return f"WireMessage({self.label!r}, args={self.args[:160]!r}…({len(self.args):,} bytes))"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


#: Byte sequences that are not UTF-8: a lone continuation byte, 0xFF, an overlong slash, an
#: encoded surrogate, a truncated sequence, a five-byte form.
INVALID_UTF8 = (b"\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xe2\x82", b"\xf8\x88\x80\x80\x80", b"\xc3\x28")


#: The ways a raw message can break the wire contract, one strategy each (``wire_messages``).
WIRE_BREAKS = ("invalid UTF-8", "object", "no argument", "two arguments", "not an event")


@st.composite
def wire_messages(draw: st.DrawFn, kind: str) -> WireMessage:
    """One message that breaks the wire contract in the way ``kind`` names: invalid UTF-8
    inside the event's text, the event as an object rather than a string, no argument (the
    event as a keyword), two arguments, or an argument that is a number, null or a list."""
    event = draw(valid_events(2))
    text = to_json(event)
    as_string = json.dumps(text, ensure_ascii=False).encode()
    name = event["type"]
    if kind == "invalid UTF-8":
        bad = draw(st.sampled_from(INVALID_UTF8))
        field = draw(st.sampled_from([b"source", b"event_id", b"type"]))
        marker = b'\\"' + field + b'\\": \\"'
        at = as_string.index(marker) + len(marker)
        return WireMessage(
            f"invalid UTF-8 {bad!r} inside the {field.decode()} of a {name}", as_string[:at] + bad + as_string[at:]
        )
    if kind == "object":
        return WireMessage(f"a {name} as a JSON object, not a string", text.encode())
    if kind == "no argument":
        return WireMessage(f"no argument, a {name} as a keyword", b"", json.dumps({"payload": text}).encode())
    if kind == "two arguments":
        return WireMessage(f"two arguments: a {name} and null", as_string + b", null")
    junk = draw(st.sampled_from([b"null", b"42", b"true", b"[]", b'{"event_id": 1}']))
    return WireMessage(f"the argument is {junk.decode()}", junk)
