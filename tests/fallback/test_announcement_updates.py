"""The public announcement: one per incident, updated in place as the incident moves on, and
published at once for a notice to everybody that is too big to wait for."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import feedparser
import httpx
from sqlalchemy import select
from support import Pipeline, incident, write_routing

from worker.announce.site import page_path
from worker.config import Settings
from worker.service.http import create_app
from worker.service.serving import ServerThread, free_port
from worker.store.schema import announcements, recipients

REACHABLE = [{"user_id": f"r{i}", "email": f"r{i}@example.com", "locale": "en"} for i in range(3)]
NOBODY = [{"user_id": f"n{i}", "locale": "zh-CN"} for i in range(2)]


def update_of(first: dict[str, Any], status: str, situation: str, minutes: int) -> dict[str, Any]:
    """A later event of the same incident (same incident_id, new event_id)."""
    later = incident(REACHABLE, severity="critical", incident_id=first["data"]["incident_id"], status=status)
    later["data"]["situation"] = situation
    later["occurred_at"] = (datetime.fromisoformat(first["occurred_at"]) + timedelta(minutes=minutes)).isoformat()
    return later


def announcement_rows(pipeline: Pipeline) -> list[Any]:
    with pipeline.engine.connect() as conn:
        return list(conn.execute(select(announcements)))


def wait_published(pipeline: Pipeline, revision: int, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = announcement_rows(pipeline)
        if rows and rows[0].published_revision >= revision:
            return rows[0]
        time.sleep(0.1)
    raise AssertionError(f"revision {revision} never went public: {announcement_rows(pipeline)}")


def test_updates_of_an_incident_append_to_its_timeline_and_keep_its_url(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(announcements_dir=tmp_path / "site", public_url=f"http://127.0.0.1:{free_port()}")
    first = incident(REACHABLE + NOBODY, severity="critical", incident_id="INC-2026-0777")
    first["data"]["situation"] = "We are investigating unusual sign-ins."
    identified = update_of(first, "identified", "A leaked support password was used.", 30)
    resolved = update_of(first, "resolved", "The password is revoked and sessions are reset.", 90)
    site = settings.resolved_announcements_dir

    with (
        Pipeline(settings) as pipeline,
        ServerThread(create_app(settings), port=int(settings.public_url.rsplit(":", 1)[1])),
    ):
        pipeline.publish(first)
        pipeline.wait_terminal([first["event_id"]], timeout=60)
        row = wait_published(pipeline, 1)
        assert pipeline.outcomes(first["event_id"]) == {"reached": 3, "covered": 2}
        url_path = page_path(row.id, "en")
        page = site / url_path
        before = page.read_text(encoding="utf-8")
        assert "We are investigating unusual sign-ins." in before
        first_updated = feedparser.parse((site / "en" / "feed.atom").read_bytes()).entries[0].updated_parsed

        pipeline.publish(identified)
        pipeline.wait_terminal([identified["event_id"]], timeout=60)
        wait_published(pipeline, 2)
        pipeline.publish(resolved)
        pipeline.wait_terminal([resolved["event_id"]], timeout=60)
        row = wait_published(pipeline, 3)
        rows = [
            r
            for event in (first, identified, resolved)
            for r in pipeline.ledger_rows(event["event_id"])
            if r.status == "published"
        ]
        served = httpx.get(f"{settings.public_url}/announcements/{url_path}")
        zh_served = httpx.get(f"{settings.public_url}/announcements/{page_path(row.id, 'zh-CN')}")

    # One announcement for the incident, at the same URL, now with the whole timeline.
    assert len(announcement_rows(pipeline)) == 1
    assert (row.revision, row.published_revision) == (3, 3)
    after = page.read_text(encoding="utf-8")
    assert served.status_code == 200 and served.text == after
    for text in (
        "We are investigating unusual sign-ins.",
        "A leaked support password was used.",
        "The password is revoked and sessions are reset.",
    ):
        assert text in after
    # Newest first on the page.
    assert (
        after.index("The password is revoked") < after.index("A leaked support") < after.index("We are investigating")
    )
    assert zh_served.status_code == 200 and "已解决" in zh_served.text
    # The feed has one entry for the incident, updated later than before.
    feed = feedparser.parse((site / "en" / "feed.atom").read_bytes())
    assert feed.bozo == 0
    (entry,) = feed.entries
    assert entry.link.endswith(url_path)
    assert entry.updated_parsed > first_updated
    # Each revision's publication is on the ledger, under the event that brought it.
    assert sorted((r.step, r.event_id) for r in rows) == [
        (1, first["event_id"]),
        (2, identified["event_id"]),
        (3, resolved["event_id"]),
    ]


def test_a_notice_to_everybody_above_the_threshold_is_announced_at_once(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    routing = write_routing(
        tmp_path,
        "".join(
            f"  - name: {kind}\n    match: {{type: {kind}}}\n    stages: [{{channels: [email, insite], wait: 10m}}]\n"
            f"    announce: {'false' if kind == 'account_notice' else 'true'}\n"
            for kind in ("security_incident", "account_notice", "service_notice", "policy_change")
        ),
        announce_all_above=3,
    )
    settings = make_settings(routing_file=routing, announcements_dir=tmp_path / "site")
    now = datetime.now(UTC)
    notice = {
        "event_id": "maint-2026-12-06",
        "type": "service_notice",
        "occurred_at": now.isoformat(),
        "source": "tests",
        "data": {
            "kind": "maintenance",
            "title": "Database maintenance on Sunday",
            "starts_at": (now + timedelta(days=5)).isoformat(),
            "ends_at": (now + timedelta(days=5, hours=2)).isoformat(),
            "services": ["web", "api"],
            "audience": {"all": True},
        },
    }
    with Pipeline(settings) as pipeline:
        with pipeline.engine.begin() as conn:
            conn.execute(
                recipients.insert(),
                [
                    {
                        "ref": f"ref{i:02d}",
                        "user_id": f"u{i}",
                        "name": "",
                        "email": f"u{i}@example.com",
                        "locale": "en",
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in range(5)
                ],
            )
        pipeline.publish(notice)
        pipeline.wait_terminal([notice["event_id"]], timeout=60)
        row = wait_published(pipeline, 1)
        outcomes = pipeline.outcomes(notice["event_id"])
    # Everybody was also reached one by one; the announcement did not wait for a failure.
    assert outcomes == {"reached": 5}
    assert row.event_id == notice["event_id"]
    page = settings.resolved_announcements_dir / page_path(row.id, "en")
    assert "Database maintenance on Sunday" in page.read_text(encoding="utf-8")
