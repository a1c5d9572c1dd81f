"""Date formatting never raises for a timezone-aware moment, however far out.

``0001-01-01T00:00:00+01:00`` is a valid aware datetime whose UTC time (year 0) Python cannot
hold, and ``9999-12-31T23:00:00-05:00`` is one whose UTC time is in year 10000. Converting
either to UTC raises ``OverflowError``; a template filter that did so stopped a notice and,
on the announcement site, every announcement. Such a moment is shown in its own offset,
labelled with it, so what is printed is still true.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from worker.announce.site import rfc3339
from worker.config import DEFAULT_TEMPLATES_DIR
from worker.core.clock import as_utc
from worker.delivery.rendering import (
    Renderer,
    format_date,
    format_datetime,
    format_local,
    format_local_date,
    spoken_datetime,
)
from worker.intake.samples import sample_event

YEAR_ONE_EAST = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
YEAR_9999_WEST = datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))
YEAR_ONE_UTC = datetime(1, 1, 1, 0, 5, tzinfo=UTC)
ORDINARY = datetime(2026, 11, 23, 15, 5, tzinfo=timezone(timedelta(hours=1)))

CASES: list[tuple[str, Callable[..., str], datetime, tuple[Any, ...], str]] = [
    ("datetime, year 1 east", format_datetime, YEAR_ONE_EAST, (), "0001-01-01 00:00 UTC+01:00"),
    ("datetime, year 9999 west", format_datetime, YEAR_9999_WEST, (), "9999-12-31 23:00 UTC-05:00"),
    ("datetime, year 1 UTC", format_datetime, YEAR_ONE_UTC, (), "0001-01-01 00:05 UTC"),
    ("datetime, ordinary", format_datetime, ORDINARY, (), "2026-11-23 14:05 UTC"),
    ("date, year 1 east", format_date, YEAR_ONE_EAST, (), "0001-01-01"),
    ("date, year 9999 west", format_date, YEAR_9999_WEST, (), "9999-12-31"),
    ("date, ordinary", format_date, ORDINARY, (), "2026-11-23"),
    (
        "local, year 1 east, New York",
        format_local,
        YEAR_ONE_EAST,
        ("America/New_York",),
        "0001-01-01 00:00 (UTC+01:00)",
    ),
    ("local, year 1 east, Shanghai", format_local, YEAR_ONE_EAST, ("Asia/Shanghai",), "0001-01-01 00:00 (UTC+01:00)"),
    ("local, year 1 east, UTC", format_local, YEAR_ONE_EAST, ("UTC",), "0001-01-01 00:00 UTC+01:00"),
    (
        "local, year 9999 west, Shanghai",
        format_local,
        YEAR_9999_WEST,
        ("Asia/Shanghai",),
        "9999-12-31 23:00 (UTC-05:00)",
    ),
    ("local, year 1 UTC, New York", format_local, YEAR_ONE_UTC, ("America/New_York",), "0001-01-01 00:05 UTC"),
    (
        "local, ordinary, New York",
        format_local,
        ORDINARY,
        ("America/New_York",),
        "2026-11-23 09:05 (UTC-05:00, America/New_York)",
    ),
    ("local date, year 1 east, New York", format_local_date, YEAR_ONE_EAST, ("America/New_York",), "0001-01-01"),
    ("local date, year 9999 west, Tokyo", format_local_date, YEAR_9999_WEST, ("Asia/Tokyo",), "9999-12-31"),
    ("local date, ordinary, Tokyo", format_local_date, ORDINARY, ("Asia/Tokyo",), "2026-11-23"),
    ("spoken, year 1 east", spoken_datetime, YEAR_ONE_EAST, ("en",), "January 1, 1, at 00:00 UTC+01:00"),
    ("spoken, year 1 east, Chinese", spoken_datetime, YEAR_ONE_EAST, ("zh-CN",), "UTC+01:00时间1年1月1日0点00分"),
    ("spoken, year 9999 west", spoken_datetime, YEAR_9999_WEST, ("en",), "December 31, 9999, at 23:00 UTC-05:00"),
    ("spoken, ordinary", spoken_datetime, ORDINARY, ("en",), "November 23, 2026, at 14:05 UTC"),
    ("spoken, ordinary, Chinese", spoken_datetime, ORDINARY, ("zh-CN",), "协调世界时2026年11月23日14点05分"),
    ("rfc3339, year 1 east", rfc3339, YEAR_ONE_EAST, (), "0001-01-01T00:00:00+01:00"),
    ("rfc3339, year 9999 west", rfc3339, YEAR_9999_WEST, (), "9999-12-31T23:00:00-05:00"),
    ("rfc3339, ordinary", rfc3339, ORDINARY, (), "2026-11-23T14:05:00Z"),
]


@pytest.mark.parametrize(("formatter", "moment", "args", "shown"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_date_filter_shows_an_extreme_moment_in_its_own_offset(
    formatter: Callable[..., str], moment: datetime, args: tuple[Any, ...], shown: str
) -> None:
    assert formatter(moment, *args) == shown


@pytest.mark.parametrize("moment", [YEAR_ONE_EAST, YEAR_9999_WEST], ids=["year 1 east", "year 9999 west"])
def test_as_utc_keeps_a_moment_utc_cannot_hold_in_its_own_offset(moment: datetime) -> None:
    kept = as_utc(moment)
    assert kept == moment and kept.utcoffset() == moment.utcoffset()
    assert as_utc(ORDINARY).utcoffset() == timedelta(0) and as_utc(ORDINARY) == ORDINARY


@pytest.mark.parametrize("locale", ["en", "zh-CN"])
@pytest.mark.parametrize("channel", ["announcement", "email", "insite", "sms", "phone"])
def test_an_incident_detected_in_year_one_renders_on_every_channel(channel: str, locale: str) -> None:
    sample = sample_event("security_incident")
    event = sample.model_copy(update={"data": sample.data.model_copy(update={"detected_at": YEAR_ONE_EAST})})
    content = Renderer(DEFAULT_TEMPLATES_DIR).render(event, channel, locale)
    assert content.text
