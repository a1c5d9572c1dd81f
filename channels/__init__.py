"""The channel registry: the one place a channel name maps to its implementation.

Each entry also says which contact field of a recipient the channel needs, so fan-out
can record "no email address" without knowing anything about email.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from channels.base import Channel
from channels.email import EmailChannel
from channels.insite import InsiteChannel
from channels.phone import PhoneChannel
from channels.sms import SmsChannel
from worker.config import Settings
from worker.errors import ConfigurationError

ChannelFactory = Callable[[Settings, Engine], Channel]


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """A registered channel: its name, the contact it needs (if any) and how to build it."""

    name: str
    contact: str | None
    build: ChannelFactory


REGISTRY: dict[str, ChannelSpec] = {
    spec.name: spec
    for spec in (
        ChannelSpec("email", "email", lambda settings, _engine: EmailChannel(settings)),
        ChannelSpec("insite", None, lambda _settings, engine: InsiteChannel(engine)),
        ChannelSpec(
            "sms", "phone", lambda settings, _engine: SmsChannel(settings, concurrency=settings.sms_concurrency)
        ),
        ChannelSpec(
            "phone", "phone", lambda settings, _engine: PhoneChannel(settings, concurrency=settings.phone_concurrency)
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


def create_channel(name: str, settings: Settings, engine: Engine) -> Channel:
    """Build the channel called ``name``.

    Raises:
        ConfigurationError: no channel has that name.
    """
    return get_spec(name).build(settings, engine)


def check_channels(names: tuple[str, ...]) -> None:
    """Fail at start-up if a configured channel does not exist.

    Raises:
        ConfigurationError: a name is not in the registry.
    """
    for name in names:
        get_spec(name)
