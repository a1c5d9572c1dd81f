"""The command line of policy-change notices: `herald send` refuses a change that breaks the
week's promise and shows the schedule of one that keeps it; `herald schedule list | cancel`;
`herald scheduler` hands the due jobs to the workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from support import HERALD, Pipeline, env_for, policy_change, run

from worker.config import Settings
from worker.sandbox.smtp_sink import SmtpSink
from worker.store import schedules
from worker.store.schedules import JobState


def change(tmp_path: Path, ahead: timedelta, **data: object) -> Path:
    path = tmp_path / "change.json"
    path.write_text(json.dumps(policy_change(ahead=ahead, **data)))
    return path


def test_send_refuses_a_change_six_days_23_hours_ahead_naming_the_earliest_time(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    result = run(["send", str(change(tmp_path, timedelta(days=6, hours=23)))], env_for(make_settings()))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "must be public at least 7 days (168 h)" in result.stderr
    assert "earliest allowed effective_at is 20" in result.stderr


def test_send_shows_the_schedule_and_the_scheduler_sends_it_then_list_and_cancel(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    settings = make_settings(announcements_dir=tmp_path / "site")
    env = {**env_for(settings), "HERALD_ANNOUNCEMENTS_DIR": str(tmp_path / "site"), "COLUMNS": "200"}
    later = datetime.now(UTC) + timedelta(days=3)
    with Pipeline(settings) as pipeline:
        sent = run(["send", str(change(tmp_path, timedelta(days=8), remind_at=later.isoformat()))], env)
        assert sent.returncode == 0, sent.stderr
        assert "website notice goes public" in sent.stdout and "individual notices go out" in sent.stdout
        assert "reminder goes out" in sent.stdout and later.strftime("%Y-%m-%d %H:%M") in sent.stdout
        deadline = time.monotonic() + 30
        while True:
            listed = json.loads(run(["schedule", "list", "--json", "--tz", "Europe/Berlin"], env).stdout)
            if len(listed) == 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sorted(j["job"] for j in listed) == ["publish_notice", "reminder", "send_notices"]
        assert all(j["due_local"].endswith(("+01:00", "+02:00")) for j in listed)

        scheduler = subprocess.Popen(
            [HERALD, "scheduler", "--interval", "0.5"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            assert smtp_sink.wait_for(4, timeout=60), "the scheduler did not hand the notices over"
        finally:
            os.killpg(scheduler.pid, signal.SIGTERM)
            scheduler.wait(timeout=30)
        reminder = next(j for j in listed if j["job"] == "reminder")
        cancelled = run(
            ["schedule", "cancel", str(reminder["id"]), "--operator", "C. Ops", "--reason", "not needed"], env
        )
        assert cancelled.returncode == 0, cancelled.stderr
        with pipeline.engine.connect() as conn:
            states = {j.job.value: j.state for j in schedules.of_event(conn, reminder["event_id"])}
        refused = run(["schedule", "cancel", "999999", "--operator", "C. Ops"], env)
    assert states == {"publish_notice": JobState.DONE, "send_notices": JobState.DONE, "reminder": JobState.CANCELLED}
    assert refused.returncode == 2 and "no scheduled job 999999" in refused.stderr
    assert scheduler.returncode == 0
