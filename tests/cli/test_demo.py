"""`herald demo`: the whole pipeline on embedded parts, with people who fall back and one announcement."""

from __future__ import annotations

import json
from pathlib import Path

import feedparser
from support import run


def test_the_demo_reaches_most_people_hands_the_rest_down_the_chain_and_announces_once(
    tmp_path: Path, redis_url: str
) -> None:
    env = {"HERALD_DATA_DIR": str(tmp_path / "data"), "HERALD_BROKER_URL": redis_url, "HERALD_DATABASE_URL": ""}
    result = run(["demo", "--recipients", "200", "--json", "--processes", "1"], env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)

    # Of every hundred: 3 cannot be reached at all (STOP, unanswered, no contact).
    assert summary["people"] == {"covered": 6, "reached": 194}
    assert summary["reached_by"] == {"email": 188, "phone": 2, "sms": 4}
    assert summary["fallbacks"] == {"to stage 2": 8, "to the announcement": 6}
    assert summary["outcomes"]["insite"] == {"delivered": 200}
    page = Path(summary["announcement"]["file"])
    assert page.is_file() and "INC-2026-0042" in page.read_text(encoding="utf-8")
    feed = feedparser.parse((page.parent / "feed.atom").read_bytes())
    assert feed.bozo == 0 and len(feed.entries) == 1
