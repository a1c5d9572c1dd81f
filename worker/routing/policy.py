"""The routing policy: which channels reach people first, what follows, and when to announce.

One declarative file (``routing.yaml``, ``HERALD_ROUTING_FILE``) says, per event type and
severity, which channels go first (several at once), the fallback chain, how long to wait for
a confirmation before moving on, and whether the public announcement covers whoever is left.
``load_policy`` reads and validates it; ``RoutingPolicy.plan_for`` turns one event into the
``Plan`` its recipients get; ``RoutingPolicy.check`` proves at start-up that every template a
route needs exists and renders. Whether a notice is mandatory is not configured here: it is the
promise ``worker.intake.events.is_mandatory`` encodes.

Every error is one ``ConfigurationError`` line that names the file and the line, found in
three passes:

1. YAML to plain values, remembering the line of every path in the file (duplicate keys,
   unknown tags and syntax errors stop here, at the parser's line);
2. the shape, by pydantic models that forbid unknown keys; an error's ``loc`` is reported at
   the line of the longest path of the file it names;
3. the meaning: fallback chains that loop, event types or severities no route matches, routes
   that can never match, and announcements the privacy policy requires or forbids.
"""

from __future__ import annotations

import json
import re
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Union, get_args, get_origin

import yaml
from annotated_types import MinLen
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from channels import REGISTRY
from worker.core.errors import ConfigurationError
from worker.core.statuses import DeliveryStatus
from worker.intake.events import EVENT_TYPES, Event, PolicyChange, Severity, is_mandatory, severity_of

if TYPE_CHECKING:
    from worker.delivery.rendering import Renderer

#: The only file format this module reads.
POLICY_VERSION = 1
#: The format of a stored ``Plan``; ``Plan.from_json`` refuses any other.
PLAN_VERSION = 1
#: The longest any duration in the file may be.
MAX_DURATION_S = 7 * 86_400.0
#: A stage's confirmation wait when neither it nor ``defaults`` names one.
DEFAULT_WAIT_S = 15 * 60.0
#: How long a failed provider rests before it is tried again, unless a channel says otherwise.
DEFAULT_COOLDOWN_S = 60.0
#: An ``{"all": true}`` audience bigger than this is announced at once, unless the file says otherwise.
DEFAULT_ANNOUNCE_ALL_ABOVE = 10_000
#: The provider that sends with a channel's own ``HERALD_*`` settings.
PRIMARY_PROVIDER = "primary"
#: The delivery statuses that mean a person was reached, and may therefore confirm a stage.
CONFIRMING_STATUSES = (DeliveryStatus.DELIVERED.value, DeliveryStatus.ACKNOWLEDGED.value)
#: What confirms a delivery on a channel the file leaves out: a station letter or a call
#: counts once a person has read or answered it, an email or SMS once the provider delivered it.
DEFAULT_CONFIRMED_BY: Mapping[str, frozenset[str]] = types.MappingProxyType(
    {
        "email": frozenset({DeliveryStatus.DELIVERED.value}),
        "insite": frozenset({DeliveryStatus.ACKNOWLEDGED.value}),
        "sms": frozenset({DeliveryStatus.DELIVERED.value}),
        "phone": frozenset({DeliveryStatus.ACKNOWLEDGED.value}),
    }
)
#: The event types whose routes may match on severity, and the one that may match on ``substantial``.
SEVERITY_TYPES = ("security_incident", "service_notice")
SUBSTANTIAL_TYPE = "policy_change"

_SEVERITIES = tuple(s.value for s in Severity)
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3_600.0, "d": 86_400.0}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd]?)$")
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*$")
_ROUTE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_PROVIDER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
#: More values than any sensible policy has: a guard against aliases that expand without end.
_MAX_NODES = 100_000

#: A place in the file: mapping keys and list indexes from the root.
PolicyPath = tuple[str | int, ...]
#: One thing an event can be, for matching: its type and its severity or ``substantial`` flag.
Case = tuple[str, str | bool | None]


# --- the values the engine uses ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stage:
    """Channels tried at once for a recipient, and how long to wait for one to confirm."""

    channels: tuple[str, ...]
    wait_s: float


@dataclass(frozen=True, slots=True)
class Cap:
    """At most ``count`` optional notices per recipient on a channel in any ``per_s`` seconds."""

    count: int
    per_s: float


@dataclass(frozen=True, slots=True)
class Plan:
    """What one event's recipients get. Stored with the event (as JSON) so every process, and a later
    audit, uses the plan the event was sent under even if the file changes mid-incident."""

    route: str
    mandatory: bool
    announce: bool
    stages: tuple[Stage, ...]
    confirmed_by: Mapping[str, frozenset[str]]  # channel -> statuses that confirm, for channels in stages
    caps: Mapping[str, Cap]  # channel -> cap, only for optional notices (empty when mandatory)

    def to_json(self) -> str:
        """The plan as compact JSON with sorted keys, so the same plan is always the same text."""
        obj = {
            "version": PLAN_VERSION,
            "route": self.route,
            "mandatory": self.mandatory,
            "announce": self.announce,
            "stages": [{"channels": list(s.channels), "wait_s": s.wait_s} for s in self.stages],
            "confirmed_by": {channel: sorted(statuses) for channel, statuses in self.confirmed_by.items()},
            "caps": {channel: {"count": cap.count, "per_s": cap.per_s} for channel, cap in self.caps.items()},
        }
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        """The plan ``to_json`` wrote, exactly, so a stored event keeps the plan it was sent under.

        Raises:
            ValueError: ``text`` is not a plan this version of herald wrote.
        """
        try:
            stored = _StoredPlan.model_validate_json(text)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "plan"
            raise ValueError(f"not a stored routing plan: {where}: {first['msg']}") from None
        return cls(
            route=stored.route,
            mandatory=stored.mandatory,
            announce=stored.announce,
            stages=tuple(Stage(tuple(s.channels), float(s.wait_s)) for s in stored.stages),
            confirmed_by=types.MappingProxyType({c: frozenset(v) for c, v in stored.confirmed_by.items()}),
            caps=types.MappingProxyType({c: Cap(v.count, float(v.per_s)) for c, v in stored.caps.items()}),
        )


@dataclass(frozen=True, slots=True)
class ChannelRules:
    """How one channel is used whatever the route: what confirms it, its providers, its cap."""

    name: str
    confirmed_by: frozenset[str]
    providers: tuple[str, ...]
    cooldown_s: float
    cap: Cap | None


@dataclass(frozen=True, slots=True)
class Route:
    """One entry of ``routes``: the events it matches and the stages they go through."""

    name: str
    line: int
    event_type: str
    severities: frozenset[str] | None
    substantial: bool | None
    stages: tuple[Stage, ...]
    announce: bool

    def matches(self, event: Event) -> bool:
        """Whether this route takes ``event`` (when no earlier route does)."""
        return self._takes(_case_of(event))

    def _takes(self, case: Case) -> bool:
        event_type, qualifier = case
        if event_type != self.event_type:
            return False
        if isinstance(qualifier, bool):
            return self.substantial is None or self.substantial is qualifier
        if qualifier is not None:
            return self.severities is None or qualifier in self.severities
        return True


@dataclass(frozen=True)
class RoutingPolicy:
    """The validated routing file: the engine asks it for plans, start-up asks it to check templates.

    ``lines`` maps places in the file to their line, so later checks can still name the line.
    """

    path: Path
    locales: tuple[str, ...]
    announce_all_above: int
    channels: Mapping[str, ChannelRules]  # every registered channel, defaults filled in
    routes: tuple[Route, ...]
    lines: Mapping[PolicyPath, int] = field(
        default_factory=lambda: types.MappingProxyType({}), repr=False, compare=False
    )

    def route_for(self, event: Event) -> Route:
        """The first route that matches ``event``; the file's first-match-wins rule in one place.

        Raises:
            ConfigurationError: no route matches (``load_policy`` refuses such a file).
        """
        for route in self.routes:
            if route.matches(event):
                return route
        raise ConfigurationError(f"{_display(self.path)}: no route matches {_describe(_case_of(event))}")

    def plan_for(self, event: Event, enabled: Sequence[str]) -> Plan:
        """The first matching route, its stages' channels filtered to `enabled` (HERALD_CHANNELS), stages left
        empty dropped; `mandatory` from is_mandatory(event); caps only when not mandatory.

        Raises:
            ConfigurationError: no route matches, or none of the route's channels is enabled
                (``check`` finds both at start-up).
        """
        route = self.route_for(event)
        allowed = set(enabled)
        filtered = (Stage(tuple(c for c in s.channels if c in allowed), s.wait_s) for s in route.stages)
        stages = tuple(s for s in filtered if s.channels)
        if not stages:
            raise ConfigurationError(
                f"{_display(self.path)} line {route.line}: route {route.name}: {_no_enabled_channel(route, enabled)}"
            )
        mandatory = is_mandatory(event)
        used = [c for s in stages for c in s.channels]
        caps: dict[str, Cap] = {}
        if not mandatory:
            caps = {c: cap for c in used if (cap := self.channels[c].cap) is not None}
        return Plan(
            route=route.name,
            mandatory=mandatory,
            announce=route.announce,
            stages=stages,
            confirmed_by=types.MappingProxyType({c: self.channels[c].confirmed_by for c in used}),
            caps=types.MappingProxyType(caps),
        )

    def used_channels(self) -> frozenset[str]:
        """Every channel some route names, so start-up builds (and checks) only those."""
        return frozenset(c for route in self.routes for stage in route.stages for c in stage.channels)

    def check(self, renderer: Renderer, enabled: Sequence[str]) -> None:
        """Start-up check. Raises ConfigurationError (one line, naming the routing-file line) when: a route has
        no channel left in `enabled`; a template file a route needs is missing for a locale in `locales`
        (templates/<type>/<locale>/<file> for each CHANNEL_TEMPLATES file of each channel the route uses,
        exact locale folder — falling back to en would hide a missing translation); for a route with
        announce: true, the "announcement" templates of its type in every locale, and
        templates/_site/<locale>/index.html and page.html in every locale, and templates/_site/index.html.
        The message names the route's channel entry line (or the announce line), the missing path and
        the locale. Then every needed template must render a sample event (delegate to the Renderer).

        Raises:
            ConfigurationError: as above; the first problem found, in the file's order.
        """
        allowed = set(enabled)
        needed: dict[tuple[str, str], tuple[int, str]] = {}  # (event type, channel) -> (line, route)
        for index, route in enumerate(self.routes):
            entries = [
                (channel, self._line_of(("routes", index, "stages", s, "channels", c), route.line))
                for s, stage in enumerate(route.stages)
                for c, channel in enumerate(stage.channels)
                if channel in allowed
            ]
            if not entries:
                raise self._error(route.line, f"route {route.name}: {_no_enabled_channel(route, enabled)}")
            for channel, line in entries:
                for locale in self.locales:
                    try:
                        files = renderer.template_files(route.event_type, channel, locale)
                    except ConfigurationError as exc:
                        raise self._error(line, f"route {route.name}: {exc}") from None
                    self._require(renderer, files, line, f"route {route.name}: channel {channel}", locale)
                needed.setdefault((route.event_type, channel), (line, route.name))
            if route.announce:
                line = self._line_of(("routes", index, "announce"), route.line)
                what = f"route {route.name}: announce: true"
                for locale in self.locales:
                    files = renderer.template_files(route.event_type, "announcement", locale)
                    self._require(renderer, files + renderer.site_template_files(locale), line, what, locale)
                self._require(renderer, renderer.site_template_files(None), line, what, None)
                needed.setdefault((route.event_type, "announcement"), (line, route.name))
        for (event_type, channel), (line, name) in needed.items():
            try:
                renderer.check_pairs([(event_type, channel)], self.locales)
            except ConfigurationError as exc:
                raise self._error(line, f"route {name}: {channel}: {exc}") from None

    def _require(self, renderer: Renderer, files: list[str], line: int, what: str, locale: str | None) -> None:
        for relative in files:
            full = renderer.templates_dir / relative
            if not full.is_file():
                for_whom = f"for locale {locale}" if locale is not None else "(the site's root page)"
                raise self._error(line, f"{what} needs {_display(full)} {for_whom}, which is missing")

    def _line_of(self, path: PolicyPath, default: int) -> int:
        return self.lines.get(path, default)

    def _error(self, line: int, message: str) -> ConfigurationError:
        return ConfigurationError(f"{_display(self.path)} line {line}: {message}")


def _no_enabled_channel(route: Route, enabled: Sequence[str]) -> str:
    named = ", ".join(dict.fromkeys(c for s in route.stages for c in s.channels))
    return f"none of its channels ({named}) is enabled; HERALD_CHANNELS enables {', '.join(enabled) or 'none'}"


def _case_of(event: Event) -> Case:
    if isinstance(event, PolicyChange):
        return (event.type, event.data.substantial)
    severity = severity_of(event)
    return (event.type, severity.value if severity is not None else None)


def _all_cases() -> list[Case]:
    cases: list[Case] = []
    for event_type in EVENT_TYPES:
        if event_type in SEVERITY_TYPES:
            cases.extend((event_type, s) for s in _SEVERITIES)
        elif event_type == SUBSTANTIAL_TYPE:
            cases.extend([(event_type, True), (event_type, False)])
        else:
            cases.append((event_type, None))
    return cases


def _describe(case: Case) -> str:
    event_type, qualifier = case
    if isinstance(qualifier, bool):
        return f"{event_type} substantial: {'true' if qualifier else 'false'}"
    return f"{event_type} {qualifier}" if qualifier is not None else event_type


def _display(path: Path) -> str:
    """``path`` relative to the working directory when it is inside it, as an operator typed it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


# --- loading -------------------------------------------------------------------------------


def load_policy(path: Path) -> RoutingPolicy:
    """Read and validate the routing file, so a wrong policy stops start-up instead of an incident.

    Raises:
        ConfigurationError: naming the file and line.
    """
    path = Path(path)
    source = _Source(_display(path))
    root = source.compose(path)
    data = source.plain(root)
    try:
        shape = _PolicyShape.model_validate(data)
    except ValidationError as exc:
        raise source.shape_error(exc) from None
    return _build(path, source, shape)


class _Source:
    """The file as plain values, and the line of every path in it."""

    def __init__(self, display: str) -> None:
        self.display = display
        self.lines: dict[PolicyPath, int] = {}
        self._constructor = yaml.constructor.SafeConstructor()
        self._open: set[int] = set()  # ids of the nodes being converted: an alias of one loops
        self._budget = _MAX_NODES

    def error(self, line: int, message: str) -> ConfigurationError:
        return ConfigurationError(f"{self.display} line {line}: {' '.join(message.split())}")

    def at(self, path: PolicyPath, message: str) -> ConfigurationError:
        """An error at the line of ``path`` (or its longest prefix in the file), naming the path."""
        where = _dotted(path)
        return self.error(self.line_of(path), f"{where}: {message}" if where else message)

    def line_of(self, path: PolicyPath) -> int:
        """The line of ``path``, or of its longest prefix in the file."""
        return self.locate(path)[1]

    def locate(self, loc: Sequence[Any]) -> tuple[PolicyPath, int]:
        """The longest prefix of ``loc`` that is a place in the file, and its line."""
        path: PolicyPath = tuple(p for p in loc if isinstance(p, str | int))
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return path[:end], line
        return (), 1

    def compose(self, path: Path) -> Any:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"{self.display}: cannot read the routing policy: {exc.strerror or exc}") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(raw[: exc.start].count(b"\n") + 1, "the file is not UTF-8 text") from None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            raise self._syntax_error(exc) from None
        except yaml.reader.ReaderError as exc:
            line = text[: exc.position].count("\n") + 1
            raise self.error(line, f"YAML syntax error: {exc.reason}") from None
        except yaml.YAMLError as exc:
            raise self.error(1, f"YAML syntax error: {exc}") from None
        if root is None:
            raise self.error(1, "the file is empty; a routing policy needs at least version, locales and routes")
        return root

    def _syntax_error(self, exc: yaml.MarkedYAMLError) -> ConfigurationError:
        mark = exc.problem_mark or exc.context_mark
        message = f"YAML syntax error: {exc.problem or 'unreadable'}"
        if exc.context:
            context_line = f" at line {exc.context_mark.line + 1}" if exc.context_mark is not None else ""
            message += f" ({exc.context}{context_line})"
        return self.error(mark.line + 1 if mark is not None else 1, message)

    def plain(self, node: Any, path: PolicyPath = ()) -> Any:
        """``node`` as dicts, lists and scalars, recording the line of ``path`` and everything under it."""
        line = node.start_mark.line + 1
        self.lines.setdefault(path, line)
        self._budget -= 1
        if self._budget < 0:
            raise self.error(line, f"{_where(path)}: too many values (aliases expanding?)")
        if id(node) in self._open:
            raise self.error(line, f"{_where(path)}: an alias refers to itself")
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            self._open.add(id(node))
            try:
                return self._collection(node, path)
            finally:
                self._open.discard(id(node))
        try:
            return self._constructor.construct_object(node)
        except yaml.MarkedYAMLError as exc:
            raise self._syntax_error(exc) from None

    def _collection(self, node: Any, path: PolicyPath) -> Any:
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP_TAG:
                raise self.error(node.start_mark.line + 1, f"{_where(path)}: tag {node.tag} is not allowed")
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.error(key_node.start_mark.line + 1, f"{_where(path)}: a key must be a word")
                key = key_node.value
                key_line = key_node.start_mark.line + 1
                if key_node.tag == _MERGE_TAG:
                    raise self.error(key_line, f"{_where(path)}: merge keys (<<) are not supported")
                if key in out:
                    first = self.lines[(*path, key)]
                    raise self.error(
                        key_line, f"{_dotted((*path, key))}: duplicate key {key!r} (first at line {first})"
                    )
                self.lines[(*path, key)] = key_line
                out[key] = self.plain(value_node, (*path, key))
            return out
        if node.tag != _SEQ_TAG:
            raise self.error(node.start_mark.line + 1, f"{_where(path)}: tag {node.tag} is not allowed")
        return [self.plain(item, (*path, index)) for index, item in enumerate(node.value)]

    def shape_error(self, exc: ValidationError) -> ConfigurationError:
        """The first of pydantic's errors in file order, as one line at the line it names.

        A missing key is reported last: it has no line of its own, only its parent's.
        """
        error = min(exc.errors(), key=lambda e: (e["type"] == "missing", self.line_of(tuple(e["loc"]))))
        found, line = self.locate(error["loc"])
        where = _dotted(found)
        message = _explain(error)
        return self.error(line, f"{where}: {message}" if where else message)


def _dotted(path: Sequence[Any]) -> str:
    """``routes[2].stages[1].channels[0]``: a place in the file as an operator reads it."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _where(path: PolicyPath) -> str:
    return _dotted(path) or "the file"


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return f"{str(value).lower()} (YAML reads unquoted yes/no/on/off as true/false; quote text)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _explain(error: ErrorDetails) -> str:
    """Pydantic's error in the file's terms."""
    kind = error["type"]
    value = error.get("input")
    loc = error["loc"]
    if kind == "missing":
        return f"missing key {loc[-1]!r}"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        return f"unknown key {loc[-1]!r}" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping, not {_kind(value)}"
    if kind == "list_type":
        return f"must be a list, not {_kind(value)}"
    if kind == "string_type":
        return f"must be text, not {_kind(value)}"
    if kind == "bool_type":
        return f"must be true or false, not {_kind(value)}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number, not {_kind(value)}"
    if kind == "too_short":
        return "must not be empty"
    if kind == "greater_than_equal":
        return f"must be at least {error.get('ctx', {}).get('ge')}, not {_kind(value)}"
    if kind == "literal_error":
        return f"unknown value {_kind(value)}; expected {error.get('ctx', {}).get('expected', '')}"
    return error["msg"].removeprefix("Value error, ")


def _allowed_keys(loc: Sequence[Any]) -> list[str]:
    """The keys the mapping at ``loc`` may have, found by walking the shape models."""
    model: type[BaseModel] = _PolicyShape
    parts = list(loc)
    while parts:
        info = model.model_fields.get(str(parts.pop(0)))
        if info is None:
            return []
        annotation = _peel(info.annotation)
        if get_origin(annotation) in (list, dict):
            if not parts:
                return []
            parts.pop(0)
            annotation = _peel(get_args(annotation)[-1])
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _peel(annotation: Any) -> Any:
    """The type under ``Annotated[...]`` and ``... | None``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        else:
            return annotation


# --- the shape of the file ----------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """A duration as the routing file writes it: ``90s``, ``10m``, ``2h``, ``1d``."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _seconds(value: Any) -> float:
    """``90s``, ``10m``, ``2h``, ``1d`` or a number of seconds, as seconds; more than 0, at most 7 days."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"a duration must be like 90s, 10m, 2h, 1d or a number of seconds, not {_kind(value)}")
    if isinstance(value, str):
        match = _DURATION.match(value.strip())
        if match is None:
            raise ValueError(f"bad duration {value!r}; write 90s, 10m, 2h, 1d or a number of seconds")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        seconds = float(value)
    if not seconds > 0:
        raise ValueError(f"duration {value!r} must be more than 0")
    if seconds > MAX_DURATION_S:
        raise ValueError(f"duration {value!r} is longer than 7 days")
    return seconds


def _matching(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return check


def _known_channel(value: str) -> str:
    if value not in REGISTRY:
        raise ValueError(f"unknown channel {value!r}; known: {', '.join(sorted(REGISTRY))}")
    return value


def _known_event_type(value: str) -> str:
    if value not in EVENT_TYPES:
        raise ValueError(f"unknown event type {value!r}; known: {', '.join(EVENT_TYPES)}")
    return value


def _known_severity(value: str) -> str:
    if value not in _SEVERITIES:
        raise ValueError(f"unknown severity {value!r}; known: {', '.join(_SEVERITIES)}")
    return value


def _confirming_status(value: str) -> str:
    if value not in CONFIRMING_STATUSES:
        raise ValueError(
            f"{value!r} cannot confirm a delivery; use {' and/or '.join(CONFIRMING_STATUSES)} "
            "(the statuses that mean a person was reached)"
        )
    return value


def _plan_version(value: int) -> int:
    if value != PLAN_VERSION:
        raise ValueError(f"plan version {value}; this herald reads version {PLAN_VERSION}")
    return value


def _supported_version(value: int) -> int:
    if value != POLICY_VERSION:
        raise ValueError(f"unsupported version {value}; this herald reads version {POLICY_VERSION}")
    return value


Duration = Annotated[float, BeforeValidator(_seconds)]
ChannelName = Annotated[str, AfterValidator(_known_channel)]
LocaleTag = Annotated[str, AfterValidator(_matching(_LOCALE, "a locale tag such as en or zh-CN"))]
RouteName = Annotated[str, AfterValidator(_matching(_ROUTE_NAME, "a route name (a-z, 0-9, - and _)"))]
ProviderName = Annotated[str, AfterValidator(_matching(_PROVIDER_NAME, "a provider name (letters, digits, . _ -)"))]


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _CapShape(_Shape):
    count: Annotated[int, Field(ge=1)]
    per: Duration


class _ChannelShape(_Shape):
    confirmed_by: Annotated[list[Annotated[str, AfterValidator(_confirming_status)]], MinLen(1)] | None = None
    providers: Annotated[list[ProviderName], MinLen(1)] | None = None
    cooldown: Duration | None = None
    cap: _CapShape | None = None


class _MatchShape(_Shape):
    type: Annotated[str, AfterValidator(_known_event_type)]
    severity: Annotated[list[Annotated[str, AfterValidator(_known_severity)]], MinLen(1)] | None = None
    substantial: bool | None = None


class _StageShape(_Shape):
    channels: Annotated[list[ChannelName], MinLen(1)]
    wait: Duration | None = None


class _RouteShape(_Shape):
    name: RouteName
    match: _MatchShape
    stages: Annotated[list[_StageShape], MinLen(1)]
    announce: bool = False


class _DefaultsShape(_Shape):
    wait: Duration = DEFAULT_WAIT_S


class _PolicyShape(_Shape):
    version: Annotated[int, AfterValidator(_supported_version)]
    locales: Annotated[list[LocaleTag], MinLen(1)]
    defaults: _DefaultsShape | None = None
    announce_all_above: Annotated[int, Field(ge=0)] = DEFAULT_ANNOUNCE_ALL_ABOVE
    channels: dict[ChannelName, _ChannelShape] | None = None
    routes: Annotated[list[_RouteShape], MinLen(1)]


class _StoredStage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    channels: Annotated[list[str], MinLen(1)]
    wait_s: float


class _StoredCap(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    count: int
    per_s: float


class _StoredPlan(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    version: Annotated[int, AfterValidator(_plan_version)]
    route: str
    mandatory: bool
    announce: bool
    stages: list[_StoredStage]
    confirmed_by: dict[str, list[Annotated[str, AfterValidator(_confirming_status)]]]
    caps: dict[str, _StoredCap]


# --- the meaning of the file -------------------------------------------------------------------


def _build(path: Path, source: _Source, shape: _PolicyShape) -> RoutingPolicy:
    """Check what the shape cannot say, and build the policy."""
    _check_locales(source, shape.locales)
    channels = {name: _channel_rules(source, name, (shape.channels or {}).get(name)) for name in REGISTRY}
    default_wait = (shape.defaults or _DefaultsShape()).wait
    routes: list[Route] = []
    names: dict[str, int] = {}
    taken: dict[Case, Route] = {}
    for index, raw in enumerate(shape.routes):
        route = _route(source, index, raw, default_wait)
        if route.name in names:
            raise source.error(
                source.lines[("routes", index, "name")],
                f"route name {route.name!r} is already used by the route at line {names[route.name]}",
            )
        names[route.name] = route.line
        cases = [case for case in _all_cases() if route._takes(case)]
        if all(case in taken for case in cases):
            owners = list(dict.fromkeys(taken[c] for c in cases))
            earlier = ", ".join(f"{r.name} (line {r.line})" for r in owners)
            takes = "route {} already takes" if len(owners) == 1 else "routes {} already take"
            raise source.error(
                route.line,
                f"route {route.name} can never match: earlier {takes.format(earlier)} all its cases "
                f"({', '.join(map(_describe, cases))}); first match wins",
            )
        for case in cases:
            taken.setdefault(case, route)
        routes.append(route)
    unmatched = [case for case in _all_cases() if case not in taken]
    if unmatched:
        raise source.at(
            ("routes",),
            f"no route matches {', '.join(map(_describe, unmatched))}; every event needs a route "
            "(add one, or widen a match)",
        )
    return RoutingPolicy(
        path=path,
        locales=tuple(shape.locales),
        announce_all_above=shape.announce_all_above,
        channels=types.MappingProxyType(channels),
        routes=tuple(routes),
        lines=types.MappingProxyType(dict(source.lines)),
    )


def _check_locales(source: _Source, locales: list[str]) -> None:
    seen: dict[str, int] = {}
    for index, locale in enumerate(locales):
        key = locale.lower()
        if key in seen:
            raise source.at(("locales", index), f"{locale} is listed twice")
        seen[key] = index
    if "en" not in seen:
        raise source.at(("locales",), "must include en: readers whose language has no templates are sent English")


def _no_repeats(source: _Source, path: PolicyPath, values: Sequence[str]) -> None:
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value in seen:
            raise source.at((*path, index), f"{value} is listed twice")
        seen.add(value)


def _channel_rules(source: _Source, name: str, raw: _ChannelShape | None) -> ChannelRules:
    path: PolicyPath = ("channels", name)
    confirmed_by = DEFAULT_CONFIRMED_BY.get(name, frozenset({DeliveryStatus.DELIVERED.value}))
    providers: tuple[str, ...] = (PRIMARY_PROVIDER,)
    cooldown_s = DEFAULT_COOLDOWN_S
    cap = None
    if raw is not None:
        if raw.confirmed_by is not None:
            _no_repeats(source, (*path, "confirmed_by"), raw.confirmed_by)
            confirmed_by = frozenset(raw.confirmed_by)
        if raw.providers is not None:
            _no_repeats(source, (*path, "providers"), raw.providers)
            providers = tuple(raw.providers)
        if raw.cooldown is not None:
            cooldown_s = raw.cooldown
        if raw.cap is not None:
            cap = Cap(raw.cap.count, raw.cap.per)
    return ChannelRules(name=name, confirmed_by=confirmed_by, providers=providers, cooldown_s=cooldown_s, cap=cap)


def _route(source: _Source, index: int, raw: _RouteShape, default_wait: float) -> Route:
    path: PolicyPath = ("routes", index)
    event_type = raw.match.type
    if raw.match.severity is not None:
        if event_type not in SEVERITY_TYPES:
            raise source.error(
                source.line_of((*path, "match", "severity")),
                f"route {raw.name}: {event_type} has no severity; only {' and '.join(SEVERITY_TYPES)} "
                "routes match on severity",
            )
        _no_repeats(source, (*path, "match", "severity"), raw.match.severity)
    if raw.match.substantial is not None and event_type != SUBSTANTIAL_TYPE:
        raise source.error(
            source.line_of((*path, "match", "substantial")),
            f"route {raw.name}: only {SUBSTANTIAL_TYPE} routes match on substantial, not {event_type}",
        )
    _check_chain(source, index, raw)
    if raw.announce and event_type == "account_notice":
        raise source.error(
            source.line_of((*path, "announce")),
            f"route {raw.name}: an account_notice is about one person; announcing it publicly would disclose "
            "it, so an account_notice route must not have announce: true",
        )
    if not raw.announce and event_type == "security_incident":
        raise source.error(
            source.line_of((*path, "announce")),
            f"route {raw.name}: a security_incident route needs announce: true; the privacy policy promises an "
            "announcement when people cannot be told one by one",
        )
    return Route(
        name=raw.name,
        line=source.lines[path],
        event_type=event_type,
        severities=frozenset(raw.match.severity) if raw.match.severity is not None else None,
        substantial=raw.match.substantial,
        stages=tuple(Stage(tuple(s.channels), s.wait if s.wait is not None else default_wait) for s in raw.stages),
        announce=raw.announce,
    )


def _check_chain(source: _Source, index: int, raw: _RouteShape) -> None:
    """Refuse a chain that names a channel twice: a fallback must move on, never back."""
    tried: dict[str, tuple[int, int]] = {}  # channel -> (stage number, line)
    for s, stage in enumerate(raw.stages, start=1):
        for c, channel in enumerate(stage.channels):
            line = source.lines[("routes", index, "stages", s - 1, "channels", c)]
            if channel in tried:
                first_stage, first_line = tried[channel]
                if first_stage == s:
                    problem = f"stage {s} lists {channel} twice (first at line {first_line})"
                else:
                    problem = (
                        f"stage {s} returns to {channel}, already tried in stage {first_stage} (line {first_line})"
                    )
                raise source.error(line, f"route {raw.name}: {problem}; a fallback chain must not loop")
            tried[channel] = (s, line)
