"""The channel registry: the one place a channel name maps to its implementation.

Each entry also says which contact field of a recipient the channel needs, so fan-out
can record "no email address" without knowing anything about email, and which settings a
backup provider of the channel may change (a profile in ``HERALD_PROVIDERS``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy import Engine

from channels.base import Channel
from channels.email import EmailChannel
from channels.failover import Cooldown, FailoverChannel
from channels.insite import InsiteChannel
from channels.phone import PhoneChannel
from channels.sms import SmsChannel
from worker.config import Settings
from worker.core.errors import ConfigurationError

ChannelFactory = Callable[[Settings, Engine], Channel]

#: The provider that sends with the channel's own ``HERALD_*`` settings.
PRIMARY = "primary"
_TWILIO_SETTINGS = ("twilio_", "sms_", "phone_")


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """A registered channel: its name, the contact it needs (if any) and how to build it.

    ``provider_settings`` are the prefixes of the settings a backup provider's profile may
    change; empty means the channel takes no backup providers.
    """

    name: str
    contact: str | None
    build: ChannelFactory
    provider_settings: tuple[str, ...] = ()


REGISTRY: dict[str, ChannelSpec] = {
    spec.name: spec
    for spec in (
        ChannelSpec("email", "email", lambda settings, _engine: EmailChannel(settings), ("smtp_",)),
        ChannelSpec("insite", None, lambda _settings, engine: InsiteChannel(engine)),
        ChannelSpec(
            "sms",
            "phone",
            lambda settings, _engine: SmsChannel(settings, concurrency=settings.sms_concurrency),
            _TWILIO_SETTINGS,
        ),
        ChannelSpec(
            "phone",
            "phone",
            lambda settings, _engine: PhoneChannel(settings, concurrency=settings.phone_concurrency),
            _TWILIO_SETTINGS,
        ),
    )
}


def get_spec(name: str) -> ChannelSpec:
    """The registry entry for ``name``.

    Raises:
        ConfigurationError: no channel has that name.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigurationError(f"unknown channel {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def create_channel(
    name: str,
    settings: Settings,
    engine: Engine,
    *,
    providers: Sequence[str] = (PRIMARY,),
    cooldown_s: float = 60.0,
) -> Channel:
    """Build the channel called ``name``, over backup ``providers`` when it has more than the primary.

    The primary alone is the plain channel, with no wrapper. Otherwise a ``FailoverChannel``
    holds one instance of the channel per provider, each built with that provider's settings,
    and rests a provider that failed for ``cooldown_s`` seconds.

    Raises:
        ConfigurationError: no channel has that name, a provider is wrong (see
            ``check_providers``), or the cooldown is negative.
    """
    spec = get_spec(name)
    names = _provider_names(name, providers)
    if names == (PRIMARY,):
        return spec.build(settings, engine)
    if not (cooldown_s >= 0 and math.isfinite(cooldown_s)):
        raise ConfigurationError(f"the provider cooldown of channel {name!r} must be zero or more seconds")
    built = [(provider, spec.build(provider_settings(settings, name, provider), engine)) for provider in names]
    cooldown = Cooldown(settings, name, cooldown_s) if len(built) > 1 else None
    return FailoverChannel.over(name, built, cooldown)


def provider_settings(settings: Settings, channel: str, provider: str) -> Settings:
    """The settings ``provider`` of ``channel`` sends with: the primary's, with its profile laid over.

    Raises:
        ConfigurationError: no channel has that name, or the provider's profile is missing,
            names a setting that is unknown or not the channel's, or holds a bad value.
    """
    spec = get_spec(channel)
    if provider == PRIMARY:
        return settings
    if not spec.provider_settings:
        raise ConfigurationError(f"channel {channel!r} takes no backup providers (got {provider!r})")
    profile = settings.providers.get(provider)
    if profile is None:
        known = ", ".join(sorted(settings.providers)) or "none"
        raise ConfigurationError(
            f"provider {provider!r} of channel {channel!r} is not in HERALD_PROVIDERS; known: {known}"
        )
    allowed = ", ".join(f"{prefix}*" for prefix in spec.provider_settings)
    for key in profile:
        if key not in Settings.model_fields:
            raise ConfigurationError(f"provider {provider!r}: unknown setting {key!r}")
        if not key.startswith(spec.provider_settings):
            raise ConfigurationError(
                f"provider {provider!r}: {key!r} is not a setting of the {channel} channel (allowed: {allowed})"
            )
    try:
        return Settings.model_validate({**settings.model_dump(), **profile})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "profile"
        reason = " ".join(str(first["msg"]).split())  # the message only: the input may be a password
        raise ConfigurationError(f"provider {provider!r}: {where}: {reason}") from None


def check_providers(settings: Settings, channel: str, providers: Sequence[str]) -> None:
    """Fail at start-up if the providers a routing policy gives a channel cannot be built.

    Raises:
        ConfigurationError: no channel has that name, no provider or one listed twice, or a
            provider's profile is missing, names a setting that is unknown or not the
            channel's, or holds a bad value.
    """
    for provider in _provider_names(channel, providers):
        provider_settings(settings, channel, provider)


def _provider_names(channel: str, providers: Sequence[str]) -> tuple[str, ...]:
    names = (providers,) if isinstance(providers, str) else tuple(providers)
    get_spec(channel)
    if not names:
        raise ConfigurationError(f"channel {channel!r} needs at least one provider")
    if len(set(names)) != len(names):
        raise ConfigurationError(f"channel {channel!r} lists a provider twice: {', '.join(names)}")
    return names


def check_channels(names: tuple[str, ...]) -> None:
    """Fail at start-up if a configured channel does not exist.

    Raises:
        ConfigurationError: a name is not in the registry.
    """
    for name in names:
        get_spec(name)
