"""herald's one settings object, read from ``HERALD_*`` environment variables.

Every process (CLI, worker, sandbox, tests) builds its settings here, so a setting has one
name, one default and one validation rule. Secrets are read from the environment only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.core.contacts import SPECIAL_USE_DOMAINS
from worker.intake.events import NoticeRules

#: Where the repository's ``templates/`` folder sits for an editable install.
DEFAULT_TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
#: The routing policy shipped with the repository.
DEFAULT_ROUTING_FILE = Path(__file__).resolve().parent.parent / "routing.yaml"

_BROKER_SCHEMES = ("redis://", "rediss://", "unix://")


class Settings(BaseSettings):
    """All of herald's configuration; see the README for each variable."""

    model_config = SettingsConfigDict(env_prefix="HERALD_", extra="ignore", frozen=True, populate_by_name=True)

    # --- where things live -------------------------------------------------------------
    data_dir: Path = Field(Path(".herald"), description="Embedded Redis and SQLite live here.")
    broker_url: str = Field("", description="redis://, rediss:// or unix://; empty = embedded.")
    database_url: str = Field("", description="SQLAlchemy URL; empty = SQLite under data_dir.")
    templates_dir: Path = DEFAULT_TEMPLATES_DIR
    routing_file: Path = Field(DEFAULT_ROUTING_FILE, description="The routing policy (YAML).")

    # --- broker behaviour --------------------------------------------------------------
    broker_namespace: str = "dramatiq"
    broker_heartbeat_timeout_ms: int = Field(60_000, ge=1_000)
    broker_maintenance_chance: int = Field(1_000, ge=0, le=1_000_000, description="per million dispatches")
    retry_max: int = Field(20, ge=0, description="dramatiq retries of a delivery batch")
    retry_min_backoff_ms: int = Field(5_000, ge=10)
    retry_max_backoff_ms: int = Field(600_000, ge=10)
    lease_s: float = Field(300.0, gt=0, description="How long a claimed delivery is held by one worker.")
    max_provider_requests: int = Field(
        5, ge=1, le=100, description="Requests per delivery key that may reach the person, across every retry."
    )

    # --- events and fan-out ------------------------------------------------------------
    max_event_bytes: int = Field(1_048_576, ge=1_024, description="Larger payloads are rejected.")
    page_size: int = Field(2_000, ge=1, le=10_000, description="Audience page per fan-out step.")
    batch_size: int = Field(250, ge=1, le=5_000, description="Recipients per delivery message.")
    record_every: int = Field(50, ge=1, le=5_000, description="Messages sent between two ledger writes.")
    channels: Annotated[tuple[str, ...], NoDecode] = ("email", "insite")

    # --- email (SMTP) ------------------------------------------------------------------
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(8025, ge=1, le=65_535)
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_starttls: bool = False
    smtp_use_tls: bool = False
    smtp_from: str = "herald <security@example.com>"
    smtp_ca_file: Path | None = Field(None, description="Trust this CA bundle for the relay's certificate.")
    smtp_timeout_s: float = Field(10.0, gt=0)
    smtp_connections: int = Field(4, ge=1, le=64, description="Connections per worker thread.")
    smtp_tries: int = Field(3, ge=1, le=10, description="Tries inside one attempt (tenacity).")
    email_allowed_special_domains: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Special-use mail domains accepted anyway, e.g. internal,local (default: none)."
    )

    # --- SMS and phone (Twilio, or any Twilio-compatible endpoint) -------------------
    twilio_account_sid: str = Field("AC00000000000000000000000000000000", validation_alias="TWILIO_ACCOUNT_SID")
    twilio_auth_token: SecretStr = Field(SecretStr("sandbox-auth-token"), validation_alias="TWILIO_AUTH_TOKEN")
    twilio_from: str = Field("+15005550006", description="Sender number (E.164) for SMS and calls.")
    twilio_messaging_service_sid: str = Field("", description="Send SMS through this service instead of From.")
    twilio_base_url: str = Field("", description="Empty = Twilio itself; else a Twilio-compatible endpoint.")
    twilio_timeout_s: float = Field(10.0, gt=0)
    twilio_tries: int = Field(3, ge=1, le=10, description="Tries of one request inside one attempt.")
    public_url: str = Field("http://127.0.0.1:8080", description="Where Twilio reaches `herald serve`.")
    sms_max_segments: int = Field(3, ge=1, le=10)
    details_url: str = Field("", description="Link that ends an SMS cut to fit, e.g. the site's inbox.")
    sms_rate_per_second: float = Field(10.0, gt=0, description="SMS per second per sender, all workers together.")
    phone_rate_per_second: float = Field(1.0, gt=0, description="Calls per second per sender, all workers together.")
    sms_concurrency: int = Field(16, ge=1, le=256, description="SMS requests in flight per worker thread.")
    phone_concurrency: int = Field(4, ge=1, le=256, description="Call requests in flight per worker thread.")

    # --- policy-change notices and the scheduler -------------------------------------------
    policy_notice_lead_h: float = Field(
        168.0, ge=168.0, description="Substantial change: notice public this long before; at least a week."
    )
    minor_policy_notice_lead_h: float = Field(0.0, ge=0.0, description="Non-substantial change: the same lead.")
    scheduler_interval_s: float = Field(5.0, gt=0, description="How often `herald scheduler` looks for due jobs.")
    scheduler_lease_s: float = Field(60.0, gt=0, description="A claimed job not enqueued by then is claimed again.")
    locale_time_zones: dict[str, str] = Field(
        default_factory=lambda: {"zh-CN": "Asia/Shanghai"},
        description="Time zone for readers of a locale who gave none (others: UTC).",
    )

    # --- backup providers --------------------------------------------------------------
    providers: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        repr=False,  # profiles may hold a backup relay's password
        description="Named provider profiles (JSON): settings a backup provider uses instead of the primary's.",
    )

    # --- the public announcement ---------------------------------------------------------
    announcements_dir: Path | None = Field(None, description="Static announcement site; empty = data_dir.")
    announcements_url: str = Field("", description="Public URL of that site; empty = public_url + /announcements.")
    announcement_webhook_url: str = Field("", description="POSTed to on every publication (e.g. the CMS).")
    announcement_webhook_secret: SecretStr = Field(SecretStr(""), description="Signs webhook bodies (HMAC-SHA256).")
    announcement_webhook_timeout_s: float = Field(10.0, gt=0)

    # --- the dead-man check ----------------------------------------------------------------
    sweep_interval_s: float = Field(30.0, gt=0, description="How often stuck recipients are looked for.")
    stuck_after_s: float = Field(900.0, gt=0, description="A delivery unchanged this long is pushed on.")

    # --- HTTP app (`herald serve`) -------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = Field(8080, ge=1, le=65_535)
    confirmation_grace_s: float = Field(
        600.0, gt=0, description="After this long without a final callback, herald asks the provider."
    )
    confirmation_rounds: int = Field(3, ge=1, le=10, description="Times herald asks before failing it.")
    callback_settle_s: float = Field(60.0, ge=0, description="How long a callback that beat its record is retried.")
    callback_retention_s: float = Field(
        86_400.0, gt=0, description="A stored callback whose delivery never appears is dropped after this long."
    )
    callback_max_bytes: int = Field(
        65_536, ge=1_024, le=16_777_216, description="A callback body longer than this is refused (413) unread."
    )

    @field_validator("broker_url")
    @classmethod
    def _known_broker_scheme(cls, value: str) -> str:
        if value and not value.startswith(_BROKER_SCHEMES):
            raise ValueError(f"HERALD_BROKER_URL must start with one of {', '.join(_BROKER_SCHEMES)}")
        return value

    @field_validator("channels", mode="before")
    @classmethod
    def _split_channels(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("email_allowed_special_domains", mode="before")
    @classmethod
    def _known_special_domains(cls, value: object) -> object:
        names = value.split(",") if isinstance(value, str) else value
        if not isinstance(names, list | tuple):
            return value
        cleaned = tuple(dict.fromkeys(str(n).strip().lstrip(".").lower() for n in names if str(n).strip()))
        unknown = [n for n in cleaned if n not in SPECIAL_USE_DOMAINS]
        if unknown:
            raise ValueError(
                f"HERALD_EMAIL_ALLOWED_SPECIAL_DOMAINS: {', '.join(unknown)} is not a special-use domain"
                f" (those are {', '.join(sorted(SPECIAL_USE_DOMAINS))}); other domains need no setting"
            )
        return cleaned

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """What repr() and str() show: URLs without their passwords or query values (tokens)."""
        for name, value in super().__repr_args__():
            if isinstance(value, str) and "://" in value:
                # A webhook's path is often its secret (https://hooks.example.com/services/T0/B0/secret).
                value = masked_url(value, keep_path=name != "announcement_webhook_url")
            yield name, value

    def as_env(self) -> dict[str, str]:
        """These settings as environment variables, for a herald process started from this one."""
        env: dict[str, str] = {}
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if value is None:
                continue  # unset stays unset: "None" would be read back as a value
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, tuple):
                value = ",".join(value)
            elif isinstance(value, dict):
                value = json.dumps(value, default=str)
            elif isinstance(value, bool):
                value = "true" if value else "false"
            alias = info.validation_alias
            env[alias if isinstance(alias, str) else f"HERALD_{name.upper()}"] = str(value)
        return env

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'herald.db').resolve()}"

    @property
    def notice_rules(self) -> NoticeRules:
        """The lead-time rules policy changes are checked against."""
        return NoticeRules(
            substantial_lead=timedelta(hours=self.policy_notice_lead_h),
            minor_lead=timedelta(hours=self.minor_policy_notice_lead_h),
        )

    @property
    def resolved_announcements_dir(self) -> Path:
        """Where the static announcement site is written."""
        return (self.announcements_dir or self.data_dir / "announcements").resolve()

    @property
    def resolved_announcements_url(self) -> str:
        """The public base URL of the announcement site, without a trailing slash."""
        return (self.announcements_url or f"{self.public_url.rstrip('/')}/announcements").rstrip("/")

    @property
    def embedded_redis_path(self) -> Path:
        """The rdb file of the embedded Redis shared by every herald process in data_dir."""
        return (self.data_dir / "redis.rdb").resolve()


def masked_url(url: str, *, keep_path: bool = True) -> str:
    """``redis://:pw@host/0?token=t`` → ``redis://:***@host/0?token=***``: a URL safe to print."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if parts.password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:***@{host}"
    query = urlencode([(key, "***") for key, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    path = parts.path if keep_path or parts.path in ("", "/") else "/***"
    return urlunsplit((parts.scheme, netloc, path, query, "***" if parts.fragment else ""))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
