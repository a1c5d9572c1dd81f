"""The announcements folder cannot be written: publishing waits, nothing else does.

Processes run as root here, so permissions cannot make a folder unwritable; a regular file
standing where the folder (or one of its parents) should be is a real fault that stops
every write. Publishing fails as a transient error, logged in one line (no traceback), and
is tried again; deliveries go on; ``herald serve`` keeps answering. Once the folder can be
written, the announcement goes up and the people waiting for it are covered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from support import Pipeline, Rig, incident, write_routing

from worker.announce.site import page_path

EMAIL_ONLY = "".join(
    f"  - name: {kind}\n    match: {{type: {kind}}}\n    stages: [{{channels: [email], wait: 10m}}]\n"
    f"    announce: {'false' if kind == 'account_notice' else 'true'}\n"
    for kind in ("security_incident", "account_notice", "service_notice", "policy_change")
)
REACHABLE = [{"user_id": f"r{i}", "email": f"r{i}@example.com", "locale": "en"} for i in range(3)]
NOBODY = [{"user_id": f"n{i}", "locale": "zh-CN" if i % 2 else "en"} for i in range(2)]


def block_the_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A regular file where the announcements folder should be."""
    site = tmp_path / "site"
    site.write_text("not a folder\n", encoding="utf-8")
    return site, site


def block_a_parent(tmp_path: Path) -> tuple[Path, Path]:
    """A regular file where a parent of the announcements folder should be."""
    parent = tmp_path / "public"
    parent.write_text("not a folder\n", encoding="utf-8")
    return parent / "announcements" / "site", parent


def wait_for(what: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, message
        time.sleep(0.1)


@pytest.mark.parametrize("block", [block_the_folder, block_a_parent], ids=["folder is a file", "parent is a file"])
def test_an_unwritable_site_holds_back_only_the_announcement_until_it_can_be_written(
    rig: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture, block: Callable[[Path], tuple[Path, Path]]
) -> None:
    site, blocker = block(tmp_path)
    settings = rig.settings(
        routing_file=write_routing(tmp_path, EMAIL_ONLY),
        announcements_dir=site,
        stuck_after_s=2.0,
        sweep_interval_s=0.5,
    )
    caplog.set_level(logging.INFO)
    event = incident(REACHABLE + NOBODY, severity="critical", incident_id="INC-BLOCKED")

    def failures() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "not published yet" in r.getMessage()]

    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        # Deliveries go on while the announcement cannot be written.
        wait_for(lambda: pipeline.outcomes(event["event_id"]) == {"reached": 3, "covering": 2}, 30, "no progress")
        wait_for(lambda: len(failures()) >= 3, 15, "no one-line publishing failure was logged")
        assert httpx.get(f"{rig.public_url}/health").status_code == 200
        assert httpx.get(f"{rig.public_url}/announcements/").status_code == 404
        assert pipeline.outcomes(event["event_id"]) == {"reached": 3, "covering": 2}
        # Each failure is one line that names the fault; nothing logs a traceback for it.
        for record in failures():
            line = record.getMessage()
            assert "\n" not in line and "incident-inc-blocked" in line
            assert "ENOTDIR" in line or "EEXIST" in line, line
        assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"

        # When the folder can be written again
        blocker.unlink()
        pipeline.wait_terminal([event["event_id"]], timeout=30)
        outcomes = pipeline.outcomes(event["event_id"])
        rows = pipeline.ledger_rows(event["event_id"])
        (published,) = [r for r in rows if r.status == "published"]
        served = httpx.get(f"{rig.public_url}/announcements/{page_path(published.provider_message_id, 'en')}")

    # Then the announcement is up and covers the people who were waiting for it.
    assert outcomes == {"reached": 3, "covered": 2}
    assert len([r for r in rows if r.status == "covered"]) == 2
    page = site / page_path(published.provider_message_id, "en")
    assert page.is_file() and "INC-BLOCKED" in page.read_text(encoding="utf-8")
    assert served.status_code == 200 and "INC-BLOCKED" in served.text
