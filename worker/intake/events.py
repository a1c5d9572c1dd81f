"""The events herald accepts, as pydantic models, and the one function that parses them.

An event is an envelope ``{event_id, type, occurred_at, source, data}``; ``type`` picks the
model of ``data``. ``parse_event`` turns any payload (bytes, text or a decoded object) into an
``Event`` or raises ``InvalidEvent`` with a one-line reason that is safe to store and show.
Contact details inside an audience are checked later, per recipient, so that one bad
address cannot stop a notice from reaching everybody else.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AliasChoices,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from worker.core import limits
from worker.core.clock import utcnow
from worker.core.errors import InvalidEvent, PayloadTooLarge

#: The five parts the privacy policy promises in every security-incident notice.
INCIDENT_PARTS = ("situation", "impact", "measures", "advice", "remedies")

#: The least lead time the privacy policy promises for a substantial policy change.
SUBSTANTIAL_CHANGE_LEAD = timedelta(days=7)

_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*")


def _no_controls(value: str) -> str:
    """Drop control characters other than newline and tab; they have no business in text."""
    return limits.CONTROL_CHARACTERS.sub("", value)


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _one_line(value: str) -> str:
    """Collapse any CR/LF or run of whitespace into a single space, and drop control characters."""
    return limits.CONTROL_CHARACTERS.sub("", " ".join(value.split()))


def _in_time_range(value: datetime) -> datetime:
    if not limits.in_time_range(value):
        raise ValueError(
            f"must lie between {limits.EARLIEST.isoformat()} and {limits.LATEST.isoformat()} (exclusive); "
            f"herald does not accept dates outside that range"
        )
    return value


def _no_control_characters(value: str) -> str:
    if limits.CONTROL_CHARACTERS.search(value):
        raise ValueError("must not contain control characters")
    return value


Text = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=limits.TEXT_CHARS),
    AfterValidator(_no_controls),
    AfterValidator(_non_blank),
]
Line = Annotated[
    str,
    StringConstraints(min_length=1, max_length=limits.LINE_CHARS),
    AfterValidator(_one_line),
    AfterValidator(_non_blank),
]
#: A policy document's name and version: one line each, short enough to make a topic.
DocumentName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=limits.DOCUMENT_CHARS),
    AfterValidator(_one_line),
    AfterValidator(_non_blank),
]
Version = Annotated[
    str,
    StringConstraints(min_length=1, max_length=limits.VERSION_CHARS),
    AfterValidator(_one_line),
    AfterValidator(_non_blank),
]
#: Every time in an event: with a zone, and inside herald's date range (``worker.core.limits``).
Moment = Annotated[
    AwareDatetime,
    AfterValidator(_in_time_range),
    Field(
        description=f"with a time zone, in [{limits.EARLIEST.isoformat()}, {limits.LATEST.isoformat()})",
        json_schema_extra={
            "formatMinimum": limits.EARLIEST.isoformat(),
            "formatExclusiveMaximum": limits.LATEST.isoformat(),
        },
    ),
]
_IDENTIFIER = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:@/-]{{0,{limits.IDENTIFIER_CHARS - 1}}}")


def _identifier(value: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"must be 1-{limits.IDENTIFIER_CHARS} letters, digits or . _ : @ / - and start with a letter or digit"
        )
    return value


Identifier = Annotated[str, StringConstraints(strip_whitespace=True), AfterValidator(_identifier)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_max_length=limits.TEXT_CHARS)


class Severity(str, Enum):
    """How bad an incident is; routing uses it to choose channels."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class IncidentStatus(str, Enum):
    """Where the handling of an incident stands; its public announcement shows the timeline."""

    INVESTIGATING = "investigating"
    IDENTIFIED = "identified"
    MONITORING = "monitoring"
    RESOLVED = "resolved"


#: A channel name in a recipient's opt-out list: lower-case letters, as the registry spells them.
ChannelName = Annotated[
    str,
    StringConstraints(
        strip_whitespace=True, to_lower=True, pattern=rf"^[a-z][a-z0-9_-]{{0,{limits.CHANNEL_NAME_CHARS - 1}}}$"
    ),
]


class RecipientIn(_Model):
    """A recipient given inline; contacts are checked per recipient at fan-out.

    ``opt_out`` names channels the person asked not to be contacted on. It is honoured for
    optional notices and overridden, with the reason in the ledger, for mandatory ones.
    ``time_zone`` (IANA, e.g. ``Europe/Berlin``) is where times are shown to them.
    """

    user_id: Identifier
    name: Annotated[str, AfterValidator(_one_line), StringConstraints(max_length=limits.NAME_CHARS)] = ""
    email: Annotated[str, StringConstraints(strip_whitespace=True, max_length=limits.EMAIL_CHARS)] | None = None
    phone: Annotated[str, StringConstraints(strip_whitespace=True, max_length=limits.PHONE_CHARS)] | None = None
    locale: Annotated[str, StringConstraints(max_length=200)] = "en"
    opt_out: Annotated[list[ChannelName], Field(max_length=limits.OPT_OUT_CHANNELS)] = Field(default_factory=list)
    time_zone: Annotated[str, StringConstraints(strip_whitespace=True, max_length=limits.TIME_ZONE_CHARS)] | None = None

    @field_validator("time_zone")
    @classmethod
    def _known_zone_or_none(cls, value: str | None) -> str | None:
        # An unknown zone shows times in the locale's zone rather than losing the recipient.
        if not value:
            return None
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder such as "America"
            return None
        return value

    @field_validator("locale")
    @classmethod
    def _locale_or_default(cls, value: str) -> str:
        # An unreadable locale falls back to English rather than losing the recipient.
        if not _LOCALE.fullmatch(value or ""):
            return "en"
        value = value.replace("_", "-")
        # A long but well-formed tag keeps its language, so that it fits its column.
        return value if len(value) <= limits.LOCALE_CHARS else value.split("-")[0]


class InlineAudience(_Model):
    """Recipients listed in the event itself."""

    recipients: list[RecipientIn] = Field(min_length=1, max_length=limits.INLINE_RECIPIENTS_MAX)


class UserIdsAudience(_Model):
    """Users named by id, resolved against the recipients table."""

    user_ids: list[Identifier] = Field(min_length=1)


class AllAudience(_Model):
    """Everybody in the recipients table."""

    all: Literal[True]


def _audience_kind(value: Any) -> str | None:
    """Pick the audience model by its key, so errors name the right fields and nothing else."""
    if isinstance(value, dict):
        for key in ("recipients", "user_ids", "all"):
            if key in value:
                return key
        return None
    kinds: dict[type, str] = {InlineAudience: "recipients", UserIdsAudience: "user_ids", AllAudience: "all"}
    return kinds.get(type(value))


Audience = Annotated[
    Annotated[InlineAudience, Tag("recipients")]
    | Annotated[UserIdsAudience, Tag("user_ids")]
    | Annotated[AllAudience, Tag("all")],
    Discriminator(
        _audience_kind,
        custom_error_type="audience",
        custom_error_message='audience must be {"recipients": [...]}, {"user_ids": [...]} or {"all": true}',
    ),
]


class SecurityIncidentData(_Model):
    """A security incident notice: the five promised parts are all required.

    A later event with the same ``incident_id`` is an update: it is sent like any notice and
    appends to the incident's public announcement timeline (``status``).
    """

    incident_id: Identifier
    severity: Severity
    status: IncidentStatus = IncidentStatus.INVESTIGATING
    title: Line
    detected_at: Moment
    situation: Text
    impact: Text
    measures: Text
    advice: Text
    remedies: Text
    audience: Audience

    @model_validator(mode="before")
    @classmethod
    def _all_five_parts(cls, data: Any) -> Any:
        if isinstance(data, dict):
            missing = [p for p in INCIDENT_PARTS if not str(data.get(p) or "").strip()]
            if missing:
                raise ValueError(
                    "a security incident notice must state all five parts the privacy policy "
                    f"promises; missing or empty: {', '.join(missing)}"
                )
        return data


class AccountAction(str, Enum):
    """What happened to an account."""

    SUSPENDED = "suspended"
    CANCELLED = "cancelled"
    RESTORED = "restored"


class AccountNoticeData(_Model):
    """A notice to one user about an action on their account."""

    user_id: Identifier
    action: AccountAction
    reason: Text
    effective_at: Moment
    recipient: RecipientIn | None = None

    @model_validator(mode="after")
    def _recipient_is_the_user(self) -> AccountNoticeData:
        if self.recipient is not None and self.recipient.user_id != self.user_id:
            raise ValueError("recipient.user_id must be the user the notice is about")
        return self

    @property
    def audience(self) -> Audience:
        """One user: inline when contacts are given, else looked up by id."""
        if self.recipient is not None:
            return InlineAudience(recipients=[self.recipient])
        return UserIdsAudience(user_ids=[self.user_id])


class ServiceNoticeKind(str, Enum):
    """A planned maintenance window or an unplanned outage."""

    MAINTENANCE = "maintenance"
    OUTAGE = "outage"


class ServiceNoticeData(_Model):
    """A maintenance window or outage affecting some services.

    ``severity`` picks the route; without one, maintenance is low and an outage is high.
    """

    kind: ServiceNoticeKind
    severity: Severity | None = None
    title: Line
    starts_at: Moment
    ends_at: Moment
    services: list[Line] = Field(min_length=1, max_length=limits.SERVICES_MAX)
    description: Text | None = None
    audience: Audience

    @model_validator(mode="after")
    def _ends_after_start(self) -> ServiceNoticeData:
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self

    @property
    def effective_severity(self) -> Severity:
        """The severity given, or the kind's default (maintenance low, outage high)."""
        if self.severity is not None:
            return self.severity
        return Severity.LOW if self.kind is ServiceNoticeKind.MAINTENANCE else Severity.HIGH


class PolicyOverride(_Model):
    """Leave to give less notice than the rule asks: the legal basis, and who decided."""

    legal_basis: Text
    operator: Line


class PolicyNotice(str, Enum):
    """Which notice of a policy change an event is; herald derives the reminder and withdrawal."""

    CHANGE = "change"
    REMINDER = "reminder"
    WITHDRAWAL = "withdrawal"


#: The documents herald knows by name (templates give their names in every language).
KNOWN_DOCUMENTS = ("privacy_policy", "terms_of_service")


class PolicyChangeData(_Model):
    """A change to a policy document; a substantial one must be public a week before it applies.

    ``publish_at`` is when the website notice goes up (default: at once), ``notify_at`` when
    the individual notices go out (default: with the website notice) and ``remind_at`` an
    optional reminder before ``effective_at``. The lead-time rule itself is checked by
    ``check_notice_time``, against the configured leads and the current time.
    """

    document: DocumentName
    version: Version
    title: Line
    summary_of_changes: Text = Field(validation_alias=AliasChoices("summary_of_changes", "summary"))
    url: Annotated[
        str,
        StringConstraints(pattern=r"^https?://\S+$", max_length=limits.URL_CHARS),
        AfterValidator(_no_control_characters),
    ]
    substantial: bool
    effective_at: Moment
    audience: Audience = Field(default_factory=lambda: AllAudience(all=True))
    publish_at: Moment | None = None
    notify_at: Moment | None = None
    remind_at: Moment | None = None
    override: PolicyOverride | None = None
    notice: PolicyNotice = PolicyNotice.CHANGE

    @model_validator(mode="after")
    def _in_order(self) -> PolicyChangeData:
        for name in ("publish_at", "notify_at", "remind_at"):
            moment = getattr(self, name)
            if moment is not None and moment > self.effective_at:
                raise ValueError(f"{name} must not be after effective_at")
        start = self.notify_at or self.publish_at
        if self.remind_at is not None and start is not None and self.remind_at <= start:
            raise ValueError("remind_at must be after the notices go out (notify_at or publish_at)")
        return self

    @property
    def document_key(self) -> str:
        """The document as a key: ``Privacy Policy`` and ``privacy_policy`` are one document."""
        key = re.sub(r"[^a-z0-9]+", "_", self.document.lower()).strip("_") or "document"
        return key[: limits.DOCUMENT_CHARS]  # lower() can lengthen a few letters (İ → i̇)


class _Envelope(_Model):
    event_id: Identifier
    occurred_at: Moment
    source: Line


class SecurityIncident(_Envelope):
    """A ``security_incident`` event."""

    type: Literal["security_incident"]
    data: SecurityIncidentData


class PolicyChange(_Envelope):
    """A ``policy_change`` event."""

    type: Literal["policy_change"]
    data: PolicyChangeData

    def notice_at(self, now: datetime) -> datetime:
        """When the website notice goes public: ``publish_at`` (or ``occurred_at``), not before now."""
        return max(now, self.data.publish_at or self.occurred_at)


class AccountNotice(_Envelope):
    """An ``account_notice`` event."""

    type: Literal["account_notice"]
    data: AccountNoticeData


class ServiceNotice(_Envelope):
    """A ``service_notice`` event."""

    type: Literal["service_notice"]
    data: ServiceNoticeData


Event = Annotated[
    SecurityIncident | PolicyChange | AccountNotice | ServiceNotice,
    Field(discriminator="type"),
]
EVENT_TYPES = ("security_incident", "policy_change", "account_notice", "service_notice")
_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


@dataclass(frozen=True, slots=True)
class NoticeRules:
    """The lead times the promises ask of a policy change, as configured, and the time now.

    ``substantial_lead`` is at least seven days (the privacy policy's promise); settings can
    only make it longer. ``now`` None means the clock's current time.
    """

    substantial_lead: timedelta = SUBSTANTIAL_CHANGE_LEAD
    minor_lead: timedelta = timedelta(0)
    now: datetime | None = None

    def __post_init__(self) -> None:
        if self.substantial_lead < SUBSTANTIAL_CHANGE_LEAD:
            raise ValueError("the lead for a substantial policy change cannot be shorter than 7 days")


def check_notice_time(event: Event, rules: NoticeRules) -> None:
    """Refuse a policy change that would break the lead-time promise, naming the earliest
    effective time the rule allows; an explicit override (legal basis and operator) waives it.

    Raises:
        InvalidEvent: the notice would be public too late, or ``notice`` was set by a producer.
    """
    if not isinstance(event, PolicyChange):
        return
    data = event.data
    if data.notice is not PolicyNotice.CHANGE:
        raise InvalidEvent(
            "invalid policy_change: data.notice is herald's own; producers send changes", event_id=event.event_id
        )
    lead = rules.substantial_lead if data.substantial else rules.minor_lead
    if not lead:
        return  # nothing promised: a minor change may even be announced as it takes effect
    public = event.notice_at(rules.now or utcnow())
    earliest = public + lead
    if data.effective_at >= earliest or data.override is not None:
        return
    kind = "substantial" if data.substantial else "non-substantial"
    raise InvalidEvent(
        f"a {kind} policy change must be public at least {_lead_text(lead)} before it takes effect "
        f"(or carry data.override with a legal_basis and the operator); its notice goes up at "
        f"{public.isoformat(timespec='seconds')}, so the earliest allowed effective_at is "
        f"{earliest.isoformat(timespec='seconds')}",
        event_id=event.event_id,
    )


def _lead_text(lead: timedelta) -> str:
    hours = lead.total_seconds() / 3600
    if hours % 24 == 0:
        days = int(hours // 24)
        return f"{days} day{'s' if days != 1 else ''} ({int(hours)} h)"
    return f"{hours:g} h"


def audience_of(event: Event) -> Audience:
    """The audience an event is addressed to."""
    return event.data.audience


def severity_of(event: Event) -> Severity | None:
    """How bad the event is, for routing; None for types that have no severity."""
    if isinstance(event, SecurityIncident):
        return event.data.severity
    if isinstance(event, ServiceNotice):
        return event.data.effective_severity
    return None


def is_mandatory(event: Event) -> bool:
    """Whether the notice must reach people whatever their channel preferences.

    The privacy policy and terms promise security-incident notices, account actions and
    substantial policy changes; everything else is optional and honours opt-outs.
    """
    if isinstance(event, PolicyChange):
        return event.data.substantial
    return isinstance(event, SecurityIncident | AccountNotice)


def topic_of(event: Event) -> str:
    """What a public announcement is about: events with the same topic share one announcement.

    Updates of an incident share its ``incident_id``; a policy change is its document and
    version; every other event is its own topic.
    """
    if isinstance(event, SecurityIncident):
        return f"incident:{event.data.incident_id}"
    if isinstance(event, PolicyChange):
        return f"policy:{event.data.document_key}:{event.data.version}"
    return f"event:{event.event_id}"


def inline_people(event: Event) -> list[RecipientIn]:
    """The people an event lists inline, with the contacts it gives them (empty otherwise)."""
    if isinstance(event, AccountNotice):
        return [event.data.recipient] if event.data.recipient is not None else []
    audience = event.data.audience
    return list(audience.recipients) if isinstance(audience, InlineAudience) else []


def without_contacts(event: Event, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` as herald keeps it: each person listed inline reduced to their ``user_id``.

    The contacts themselves go to ``event_contacts``, where retention can clear them; the
    body stays a valid event of the same meaning for routing, rendering and reports.
    """
    if not inline_people(event):
        return body
    data = dict(body["data"])
    if isinstance(event, AccountNotice):
        data["recipient"] = {"user_id": event.data.user_id}
    else:
        audience = event.data.audience
        assert isinstance(audience, InlineAudience)
        data["audience"] = {"recipients": [{"user_id": person.user_id} for person in audience.recipients]}
    return {**body, "data": data}


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of every event herald accepts, for producers in any language."""
    schema = _EVENT_ADAPTER.json_schema()
    schema["title"] = "herald event"
    return schema


def body_digest(obj: Any) -> str:
    """A digest of an event body that ignores key order and whitespace."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


#: What nesting depends on: brackets, and the quotes and backslashes that say what is inside a string.
_JSON_STRUCTURE = re.compile(r'[\[\]{}"\\]')
#: A JSON escape that may spell half a surrogate pair (``\ud83d``).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether JSON text nests arrays and objects deeper than ``limit``, found without parsing it.

    One pass over the structural characters, in linear time whatever the text holds (no
    regular expression that can backtrack over a string left open): brackets inside strings
    are not counted, and malformed text is measured as far as it goes (the parser refuses it
    afterwards), so a payload can never drive the parser into recursion.
    """
    depth, in_string, escaped = 0, False, -1
    for match in _JSON_STRUCTURE.finditer(text):
        at, char = match.start(), match.group()
        if at == escaped:
            continue
        if in_string:
            if char == "\\":
                escaped = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which copy of a repeated key wins; herald refuses to guess.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise ValueError(f"the key {json.dumps(repeated)[:60]} appears twice in one object")
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _find_lone_surrogate(obj: Any) -> str | None:
    """A string of ``obj`` (a key or a value) that holds half a surrogate pair, if any."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if limits.LONE_SURROGATE.search(item):
                return item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _surrogate_reason(text: str) -> str:
    match = limits.LONE_SURROGATE.search(text)
    assert match is not None
    return (
        f"payload holds an unpaired UTF-16 surrogate (U+{ord(match.group()):04X} at character {match.start()}); "
        "JSON text must be Unicode characters"
    )


def decode_payload(payload: bytes | str | dict[str, Any], *, max_bytes: int) -> dict[str, Any]:
    """Decode a raw payload into a JSON object; size and depth are checked before parsing.

    Refused, each with a one-line reason: more than ``max_bytes``; bytes that are not UTF-8;
    half a surrogate pair (raw or escaped); nesting deeper than ``limits.MAX_JSON_DEPTH``;
    text that is not JSON; a repeated key; ``NaN``/``Infinity``; a number too long to read;
    anything but an object.

    Raises:
        PayloadTooLarge: the payload exceeds ``max_bytes``.
        InvalidEvent: for every other reason above.
    """
    if isinstance(payload, dict):
        try:  # a producer that put an object rather than a JSON string on the queue
            text = json.dumps(payload, ensure_ascii=False, allow_nan=False)
        except RecursionError:
            raise InvalidEvent(f"payload nests deeper than {limits.MAX_JSON_DEPTH} levels") from None
        except ValueError as exc:
            raise InvalidEvent(f"payload is not valid JSON: {exc}") from None
    elif isinstance(payload, bytes):
        if len(payload) > max_bytes:
            raise PayloadTooLarge(f"payload is {len(payload):,} bytes; the limit is {max_bytes:,} bytes")
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEvent(
                f"payload is not valid JSON: not UTF-8 (byte 0x{payload[exc.start]:02x} at position {exc.start})"
            ) from None
    else:
        text = payload
    if limits.LONE_SURROGATE.search(text):
        raise InvalidEvent(_surrogate_reason(text))
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise PayloadTooLarge(f"payload is {size:,} bytes; the limit is {max_bytes:,} bytes")
    if json_depth_exceeds(text, limits.MAX_JSON_DEPTH):
        raise InvalidEvent(f"payload nests deeper than {limits.MAX_JSON_DEPTH} levels")
    try:
        obj = json.loads(text, object_pairs_hook=_refuse_duplicate_keys, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"payload is not valid JSON: {exc}") from None
    except (ValueError, RecursionError) as exc:  # a repeated key, NaN, a number of thousands of digits
        raise InvalidEvent(f"payload is not valid JSON: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent(f"payload must be a JSON object, not {type(obj).__name__}")
    if _SURROGATE_ESCAPE.search(text):
        found = _find_lone_surrogate(obj)
        if found is not None:
            raise InvalidEvent(_surrogate_reason(found))
    return obj


def validate_event(obj: dict[str, Any], *, rules: NoticeRules | None = NoticeRules()) -> Event:
    """Validate a decoded object as an event, and a policy change against the lead-time rules.

    ``rules`` None re-types an event that was accepted earlier, without the time rules: they
    held when it arrived, and time has moved on since.

    Raises:
        InvalidEvent: with a one-line reason naming the offending fields.
    """
    event_id = obj.get("event_id") if isinstance(obj.get("event_id"), str) else None
    kind = obj.get("type")
    if kind not in EVENT_TYPES:
        shown = json.dumps(kind)[:60] if kind is not None else "missing"
        raise InvalidEvent(f"unknown event type {shown}; expected one of {', '.join(EVENT_TYPES)}", event_id=event_id)
    try:
        event = _EVENT_ADAPTER.validate_python(obj)
    except ValidationError as exc:
        raise InvalidEvent(f"invalid {kind}: {summarise(exc)}", event_id=event_id) from None
    if rules is not None:
        check_notice_time(event, rules)
    return event


def parse_event(
    payload: bytes | str | dict[str, Any], *, max_bytes: int, rules: NoticeRules | None = NoticeRules()
) -> Event:
    """Decode and validate one event payload (see ``validate_event`` for ``rules``).

    Whatever judging the payload raises, the caller gets ``InvalidEvent`` with one line: a
    payload can make herald refuse it, never crash.

    Raises:
        InvalidEvent: the payload is too large, not JSON, or not a valid event.
    """
    try:
        return validate_event(decode_payload(payload, max_bytes=max_bytes), rules=rules)
    except InvalidEvent:
        raise
    except Exception as exc:  # a fault herald did not foresee: refuse the payload, say what happened
        raise InvalidEvent(unjudgeable(exc)) from exc


def unjudgeable(exc: BaseException) -> str:
    """The one-line reason for a payload whose judging raised something unforeseen."""
    return f"herald could not judge this payload: {type(exc).__name__}: {_clip(_one_line(str(exc)), 200)}"


def summarise(exc: ValidationError, limit: int = 4, max_chars: int = 400) -> str:
    """Condense pydantic's errors into one short line: ``field.path: message; ... and N more``."""
    errors = exc.errors()
    parts: list[str] = []
    for error in errors[:limit]:
        path = [str(p) for p in error["loc"] if p not in EVENT_TYPES]
        # A tagged union repeats its tag in the path (audience.recipients.recipients.0); drop the echo.
        path = [p for i, p in enumerate(path) if i == 0 or p != path[i - 1]]
        loc = ".".join(_clip(p, 40) for p in path) or "event"
        part = f"{loc}: {_clip(error['msg'].removeprefix('Value error, '), 160)}"
        if parts and sum(len(p) + 2 for p in parts) + len(part) > max_chars - 20:
            break
        parts.append(part)
    if len(errors) > len(parts):
        parts.append(f"and {len(errors) - len(parts)} more")
    return _one_line("; ".join(parts))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
