"""The herald command line: exit codes, one-line errors, and the commands around the pipeline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import redis
from support import HERALD, Pipeline, env_for, incident, people, run

from worker.config import Settings
from worker.sandbox.smtp_sink import SmtpSink


def test_send_refuses_an_incomplete_incident_with_exit_2_and_one_line(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    event = incident()
    del event["data"]["advice"]
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    result = run(["send", str(path)], env_for(make_settings()))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "invalid event" in result.stderr and "missing or empty: advice" in result.stderr


def test_send_from_stdin_refuses_malformed_json(make_settings: Callable[..., Settings]) -> None:
    result = run(["send", "-"], env_for(make_settings()), stdin=b"{oops")
    assert result.returncode == 2
    assert "not valid JSON" in result.stderr


def test_send_reports_an_unreachable_broker_and_a_missing_file(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    path = tmp_path / "event.json"
    path.write_text(json.dumps(incident()))
    env = {**env_for(make_settings()), "HERALD_BROKER_URL": "redis://127.0.0.1:1/0"}
    unreachable = run(["send", str(path)], env)
    assert unreachable.returncode == 1
    assert "cannot reach the broker" in unreachable.stderr
    missing = run(["send", str(tmp_path / "nope.json")], env)
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_bad_configuration_is_one_line_and_exit_2(make_settings: Callable[..., Settings]) -> None:
    result = run(["events", "rejected"], {**env_for(make_settings()), "HERALD_BROKER_URL": "http://nope"})
    assert result.returncode == 2
    assert "HERALD_BROKER_URL must start with" in result.stderr


def test_sent_event_is_delivered_and_rejected_ones_are_listed(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    settings = make_settings()
    good = incident(people(5))
    path = tmp_path / "good.json"
    path.write_text(json.dumps(good))
    with Pipeline(settings) as pipeline:
        sent = run(["send", str(path)], env_for(settings))
        assert sent.returncode == 0, sent.stderr
        assert good["event_id"] in sent.stdout
        pipeline.publish('{"event_id": "x1", "type": "nonsense"}')
        pipeline.wait_terminal([good["event_id"]])
        deadline = time.monotonic() + 20
        while True:
            listed = run(["events", "rejected", "--json"], env_for(settings))
            rejected = json.loads(listed.stdout)
            if rejected or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert smtp_sink.count == 5
    assert [(r["event_id"], r["type"]) for r in rejected] == [("x1", "nonsense")]
    assert "unknown event type" in rejected[0]["reason"]
    table = run(["events", "rejected"], env_for(settings))
    assert table.returncode == 0 and "x1" in table.stdout
    shown = run(["events", "show", good["event_id"]], env_for(settings))
    assert shown.returncode == 0 and "delivered" in shown.stdout


def test_schema_is_json_and_names_every_event_type(tmp_path: Path) -> None:
    result = run(["schema"], {})
    assert result.returncode == 0
    text = json.dumps(json.loads(result.stdout))
    for kind in ("security_incident", "policy_change", "account_notice", "service_notice"):
        assert kind in text


def test_imported_recipients_are_reached_by_user_id(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    settings = make_settings()
    csv_path = tmp_path / "people.csv"
    csv_path.write_text(
        "user_id,name,email,phone,locale\n"
        "p1,Ann,ann@example.com,,en\n"
        "p2,李雷,lilei@example.com,,zh-CN\n"
        "p3,Bad,not-an-address,,en\n"
    )
    imported = run(["recipients", "import", str(csv_path)], env_for(settings))
    assert imported.returncode == 0, imported.stderr
    assert "imported 3 recipients" in imported.stdout
    assert "p3" in imported.stderr and "invalid email address" in imported.stderr
    event = incident(None)
    event["data"]["audience"] = {"user_ids": ["p1", "p2", "p3", "p4-unknown"]}
    with Pipeline(settings) as pipeline:
        pipeline.publish(event)
        pipeline.wait_terminal([event["event_id"]])
        counts = pipeline.counts(event["event_id"])
    assert counts == {("email", "delivered"): 2, ("email", "failed"): 2, ("insite", "delivered"): 4}
    assert sorted(a for m in smtp_sink.messages for a in m.rcpt_tos) == [
        "ann@example.com",
        "lilei@example.com",
    ]


def test_a_producer_in_any_language_can_publish_with_plain_redis_commands(
    make_settings: Callable[..., Settings], smtp_sink: SmtpSink
) -> None:
    """The README's wire contract, followed with nothing but HSET and RPUSH."""
    settings = make_settings()
    event = incident(people(3))
    with Pipeline(settings) as pipeline:
        message_id = str(uuid.uuid4())
        body = {
            "queue_name": "herald.ingest",
            "actor_name": "ingest",
            "args": [json.dumps(event)],
            "kwargs": {},
            "options": {"redis_message_id": message_id},
            "message_id": message_id,
            "message_timestamp": int(time.time() * 1000),
        }
        client = redis.Redis.from_url(settings.broker_url)
        ns = settings.broker_namespace
        client.hset(f"{ns}:herald.ingest.msgs", message_id, json.dumps(body))
        client.rpush(f"{ns}:herald.ingest", message_id)
        client.close()
        pipeline.wait_terminal([event["event_id"]])
        assert pipeline.counts(event["event_id"])[("email", "delivered")] == 3


def _redis_servers_for(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status", "cwd"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            text = " ".join(proc.info["cmdline"] or [])
            if "redis-server" in text and (
                str(data_dir) in text or str(proc.info["cwd"] or "").startswith(str(data_dir))
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_embedded_defaults_send_first_worker_later_then_nothing_left_running(
    tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    """No broker or database configured: `herald send` in one process, `herald worker` later."""
    data_dir = tmp_path / "herald-data"
    env = {
        "HERALD_DATA_DIR": str(data_dir),
        "HERALD_BROKER_URL": "",
        "HERALD_DATABASE_URL": "",
        "HERALD_SMTP_PORT": str(smtp_sink.port),
    }
    event = incident(people(4))
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    sent = run(["send", str(path)], env, cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    assert _redis_servers_for(data_dir) == [], "the embedded Redis outlived the last herald process"

    worker = subprocess.Popen(
        [HERALD, "worker", "--processes", "1", "--threads", "2"],
        env={**os.environ, **env},
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert smtp_sink.wait_for(4, timeout=60), "the event queued before the worker started was not delivered"
        assert len(_redis_servers_for(data_dir)) == 1, "the worker should be using one embedded Redis"
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
    deadline = time.monotonic() + 15
    while _redis_servers_for(data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _redis_servers_for(data_dir) == []
    assert sorted(a for m in smtp_sink.messages for a in m.rcpt_tos) == sorted(p["email"] for p in people(4))
