"""`herald serve` as a real process: uvicorn's records and herald's go through one redacting
handler, each written once in herald's format."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from test_worker_logs import RECORD, wait_for_text

from worker.config import Settings
from worker.service.serving import free_port

HERALD = str(Path(sys.executable).with_name("herald"))


def test_herald_serve_writes_every_record_once_through_the_redacting_handler(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    port = free_port()
    settings = make_settings(http_port=port)
    log = tmp_path / "serve.log"
    server = subprocess.Popen(
        [HERALD, "serve"],
        env={**os.environ, **settings.as_env()},
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
        start_new_session=True,
    )
    try:
        wait_for_text(log, "Uvicorn running on")
        refused = httpx.post(f"http://127.0.0.1:{port}/twilio/status", data={"MessageSid": "SM1"}, timeout=10)
        assert refused.status_code == 403
        wait_for_text(log, "refused an unsigned request")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    time.sleep(0.1)
    lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]

    assert [line for line in lines if not RECORD.match(line)] == []
    assert sum("Uvicorn running on" in line for line in lines) == 1
    assert sum("refused an unsigned request" in line for line in lines) == 1
