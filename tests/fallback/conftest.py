"""A whole herald for fallback tests: SMTP sink, Twilio sandbox, and `herald serve` for callbacks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from worker.config import Settings
from worker.http import create_app
from worker.sandbox.twilio import TwilioSandbox
from worker.serving import ServerThread, free_port

SID = "AC" + "7" * 32
TOKEN = "fallback-test-token"

#: A chain one channel at a time, so that every failure shows as a hand-on.
SEQUENTIAL = """\
  - name: incident
    match: {type: security_incident}
    stages:
      - {channels: [email, insite], wait: 10m}
      - {channels: [sms], wait: 10m}
      - {channels: [phone], wait: 10m}
    announce: true
  - name: account
    match: {type: account_notice}
    stages:
      - {channels: [email, insite], wait: 10m}
      - {channels: [sms], wait: 10m}
  - name: service
    match: {type: service_notice}
    stages:
      - {channels: [email, insite], wait: 10m}
      - {channels: [sms], wait: 10m}
    announce: true
  - name: policy
    match: {type: policy_change}
    stages: [{channels: [email, insite], wait: 10m}]
    announce: true
"""


@dataclass
class Rig:
    """The parts of one test's herald; ``settings()`` also starts `herald serve` with them."""

    sandbox: TwilioSandbox
    public_url: str
    build: Callable[..., Settings]
    server: ServerThread | None = None

    def settings(self, **overrides: Any) -> Settings:
        """This test's settings; the callback app runs with the same ones (same queues)."""
        assert self.server is None, "one set of settings per test"
        settings = self.build(**overrides)
        self.server = ServerThread(create_app(settings), port=int(self.public_url.rsplit(":", 1)[1])).start()
        return settings


@pytest.fixture
def rig(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Rig]:
    """All four channels against a Twilio sandbox, with herald serve taking its callbacks."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    with TwilioSandbox(account_sid=SID, auth_token=TOKEN) as sandbox:

        def build(**overrides: Any) -> Settings:
            values: dict[str, Any] = {
                "channels": ("email", "insite", "sms", "phone"),
                "twilio_account_sid": SID,
                "twilio_auth_token": TOKEN,
                "twilio_base_url": sandbox.url,
                "public_url": public,
                "sms_rate_per_second": 500.0,
                "phone_rate_per_second": 500.0,
                "announcements_dir": tmp_path / "site",
                "sweep_interval_s": 1.0,
            }
            values.update(overrides)
            return make_settings(**values)

        rig = Rig(sandbox, public, build)
        try:
            yield rig
        finally:
            if rig.server is not None:
                rig.server.stop()
