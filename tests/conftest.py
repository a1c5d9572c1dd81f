"""Real services for the whole suite, started once per session.

Redis: ``HERALD_TEST_REDIS_URL`` when set (CI), else herald's embedded Redis. Each test gets
its own dramatiq namespace, so tests never see each other's messages.
Databases: SQLite always; PostgreSQL too when ``HERALD_TEST_DATABASE_URL`` is set (CI),
each test on a fresh database cloned from a migrated template.
SMTP: a real aiosmtpd server (herald's SmtpSink) per test, on a free port.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from support import Rig

from worker.config import Settings
from worker.sandbox.smtp_sink import SmtpSink
from worker.sandbox.twilio import TwilioSandbox
from worker.service.serving import free_port
from worker.store.engine import make_engine, migrate

PG_URL = os.environ.get("HERALD_TEST_DATABASE_URL", "")
BACKENDS = ["sqlite", "postgresql"] if PG_URL else ["sqlite"]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Redis every test's broker talks to."""
    url = os.environ.get("HERALD_TEST_REDIS_URL", "")
    if url:
        return url
    from worker.embedded_redis import embedded_redis_url

    return embedded_redis_url(tmp_path_factory.mktemp("redis") / "redis.rdb")


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str | None]:
    """A migrated PostgreSQL database that per-test databases are cloned from."""
    if not PG_URL:
        yield None
        return
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"herald_tmpl_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(make_url(PG_URL).set(database=name).render_as_string(hide_password=False))
    migrate(engine)
    engine.dispose()
    yield name
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path, pg_template: str | None) -> Iterator[str]:
    """A fresh, migrated database for one test, on each backend in turn."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'herald.db'}"
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        yield url
        return
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"herald_t_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"'))
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A real SMTP server (aiosmtpd) that keeps what it receives."""
    sink = SmtpSink(host="127.0.0.1", port=0)
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture
def make_settings(tmp_path: Path, redis_url: str, database_url: str, smtp_sink: SmtpSink) -> Callable[..., Settings]:
    """Settings pointing at this test's services; keyword arguments override any field."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "broker_url": redis_url,
            "broker_namespace": f"herald-test-{uuid.uuid4().hex[:8]}",
            "database_url": database_url,
            "smtp_host": smtp_sink.host,
            "smtp_port": smtp_sink.port,
            "smtp_timeout_s": 5.0,
            "retry_min_backoff_ms": 200,
            "retry_max_backoff_ms": 2_000,
            "page_size": 100,
            "batch_size": 50,
        }
        values.update(overrides)
        return Settings(**values)

    return build


#: The Twilio sandbox's credentials in tests that use the ``rig``.
TWILIO_SID = "AC" + "7" * 32
TWILIO_TOKEN = "rig-test-token"


@pytest.fixture
def rig(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Rig]:
    """All four channels against a Twilio sandbox, with herald serve taking its callbacks."""
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    with TwilioSandbox(account_sid=TWILIO_SID, auth_token=TWILIO_TOKEN) as sandbox:

        def build(**overrides: Any) -> Settings:
            values: dict[str, Any] = {
                "channels": ("email", "insite", "sms", "phone"),
                "twilio_account_sid": TWILIO_SID,
                "twilio_auth_token": TWILIO_TOKEN,
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
