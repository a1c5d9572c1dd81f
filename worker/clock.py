"""The time herald uses; one function so that tests can substitute a controllable clock."""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    """The current time in UTC, timezone-aware."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """A datetime read back from a database that may have dropped its zone, as aware UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
