"""The time herald uses; one function so that tests can substitute a controllable clock.

Aware datetimes near the ends of Python's range (year 1 east of Greenwich, year 9999 west of
it) have no UTC equivalent Python can hold: converting them raises ``OverflowError``. Every
conversion here keeps such a moment in its own offset instead, and ``utc_label`` names the
offset a moment is shown in, so what gets printed is still true.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo


def utcnow() -> datetime:
    """The current time in UTC, timezone-aware."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """A datetime as aware UTC (a naive one, as a database that dropped its zone returns it,
    is taken to be UTC); one that UTC cannot hold stays in its own offset."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return in_zone(value, UTC) or value


def in_zone(value: datetime, zone: tzinfo) -> datetime | None:
    """``value`` in ``zone``; None when that time would fall outside years 1 to 9999."""
    try:
        return value.astimezone(zone)
    except (OverflowError, ValueError):
        return None


def utc_label(value: datetime) -> str:
    """``UTC`` for a moment at offset zero, else ``UTC+01:00`` / ``UTC-05:00``."""
    offset = value.utcoffset() or timedelta(0)
    if not offset:
        return "UTC"
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(offset) // timedelta(minutes=1)
    return f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def ymd_hm(value: datetime) -> str:
    """``2026-11-23 14:05``, the year always in four digits (``strftime`` drops the zeros of year 1)."""
    return f"{value.year:04d}-{value.month:02d}-{value.day:02d} {value.hour:02d}:{value.minute:02d}"
