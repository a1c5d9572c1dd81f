"""The command line around routing: a bad policy stops `herald worker` with the line to fix,
`herald routing check` shows the routes, and events show where everyone ended up."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from support import Pipeline, env_for, incident, people, run

from worker.config import DEFAULT_ROUTING_FILE, DEFAULT_TEMPLATES_DIR, Settings
from worker.sandbox.smtp_sink import SmtpSink


def broken_copy(tmp_path: Path, old: str, new: str) -> Path:
    """The shipped routing file with one text replaced."""
    text = DEFAULT_ROUTING_FILE.read_text(encoding="utf-8")
    assert old in text
    path = tmp_path / "routing.yaml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


@pytest.mark.parametrize(
    ("old", "new", "needle", "message"),
    [
        ("[email, insite, sms], wait: 10m", "[email, fax, sms], wait: 10m", "fax", "unknown channel 'fax'"),
        ("{channels: [phone], wait: 30m}", "{channels: [email], wait: 30m}", "[email], wait: 30m", "must not loop"),
    ],
    ids=["unknown-channel", "cycle"],
)
def test_a_bad_routing_file_stops_the_worker_naming_the_line(
    make_settings: Callable[..., Settings], tmp_path: Path, old: str, new: str, needle: str, message: str
) -> None:
    path = broken_copy(tmp_path, old, new)
    env = {**env_for(make_settings()), "HERALD_ROUTING_FILE": str(path)}
    result = run(["worker", "--processes", "1"], env)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"routing.yaml line {line_of(path, needle)}:" in result.stderr
    assert message in result.stderr


def test_a_template_missing_for_a_needed_locale_stops_the_worker_naming_the_line(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(DEFAULT_TEMPLATES_DIR, templates)
    (templates / "security_incident" / "zh-CN" / "sms.txt").unlink()
    env = {
        **env_for(make_settings()),
        "HERALD_TEMPLATES_DIR": str(templates),
        "HERALD_CHANNELS": "email,insite,sms,phone",
    }
    result = run(["worker", "--processes", "1"], env)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert f"line {line_of(DEFAULT_ROUTING_FILE, 'channels: [email, insite, sms]')}:" in result.stderr
    assert "security_incident/zh-CN/sms.txt" in result.stderr and "zh-CN" in result.stderr


def test_routing_check_lists_the_routes_and_refuses_a_bad_file(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    env = {**env_for(make_settings()), "HERALD_CHANNELS": "email,insite,sms,phone", "COLUMNS": "200"}
    good = run(["routing", "check"], env)
    assert good.returncode == 0, good.stderr
    for name in ("critical-incident", "account-action", "routine-service-notice"):
        assert name in good.stdout
    assert "email+insite+sms (10m) → phone (30m)" in good.stdout
    bad = run(["routing", "check", "--file", str(broken_copy(tmp_path, "version: 1", "version: 2"))], env)
    assert bad.returncode == 2 and "version" in bad.stderr


def test_events_show_and_announcements_list_tell_where_everyone_ended_up(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    settings = make_settings(announcements_dir=tmp_path / "site")
    event = incident([*people(3), {"user_id": "nobody", "locale": "en"}], severity="critical")
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]])
    env = {**env_for(settings), "HERALD_ANNOUNCEMENTS_DIR": str(tmp_path / "site"), "COLUMNS": "200"}
    shown = run(["events", "show", event["event_id"]], env)
    assert shown.returncode == 0, shown.stderr
    assert "reached" in shown.stdout and "covered" in shown.stdout and "email 3" in shown.stdout
    assert "announcement incident-inc-1: public since" in " ".join(shown.stdout.split())
    listed = run(["announcements", "list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    (announcement,) = json.loads(listed.stdout)
    assert announcement["id"] == "incident-inc-1" and announcement["published_revision"] == 1
    assert announcement["url"].endswith("/en/incident-inc-1.html")
