"""The broker and the database failing under a running fan-out: Redis killed and restarted
(append-only file on, fsync always), PostgreSQL's connections terminated by the server."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest
from faults import ONE_BACKEND, QUICK, ChaosRun, OwnRedis, Received
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from support import incident, people

from worker.config import Settings
from worker.sandbox.smtp_sink import SmtpSink

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

RECIPIENTS = 400
REDIS_DOWN_S = 2.0
PG_KILLS = 3


@pytest.mark.parametrize("database_url", [ONE_BACKEND], indirect=True)
def test_redis_restarted_mid_run_with_its_append_only_file_loses_nothing(
    chaos: Callable[[Settings], ChaosRun],
    make_settings: Callable[..., Settings],
    smtp_sink: SmtpSink,
    own_redis: OwnRedis,
    backend: str,
) -> None:
    settings = make_settings(**QUICK, broker_url=own_redis.url)
    smtp_sink.latency(0.03)
    run = chaos(settings)
    event_id = run.publish(incident(people(RECIPIENTS)))
    run.start_workers(threads=3)
    run.wait_for(lambda: smtp_sink.count >= RECIPIENTS // 4, "the fan-out to start")
    own_redis.kill()  # SIGKILL: no shutdown save; the append-only file has every acknowledged write
    run.fault("Redis killed", [event_id])
    at_kill = smtp_sink.count
    time.sleep(REDIS_DOWN_S)
    own_redis.start()
    done = run.settle([event_id], 120.0)

    result = run.figures([event_id], expected=RECIPIENTS, received=Received.of(smtp_sink))
    print("\n" + result.line("redis-restart", backend, f"Redis SIGKILLed at {at_kill} emails, down {REDIS_DOWN_S:g} s"))
    assert at_kill < RECIPIENTS, "the restart came too late to land mid fan-out"
    assert done or result.lost, "not settled, yet nothing lost?"
    result.check()
    assert len({a for m in smtp_sink.messages for a in m.rcpt_tos}) == RECIPIENTS


#: pg_terminate_backend is PostgreSQL's: SQLite has no server whose connections could be killed.
POSTGRESQL_ONLY = [
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not os.environ.get("HERALD_TEST_DATABASE_URL"),
            reason="needs PostgreSQL: run with HERALD_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test"
            " (as .ci/run does)",
        ),
    )
]


@pytest.mark.parametrize("database_url", POSTGRESQL_ONLY, indirect=True)
def test_postgresql_connections_terminated_mid_run_lose_nothing(
    chaos: Callable[[Settings], ChaosRun],
    make_settings: Callable[..., Settings],
    smtp_sink: SmtpSink,
    database_url: str,
    backend: str,
) -> None:
    settings = make_settings(**QUICK)
    smtp_sink.latency(0.03)
    run = chaos(settings)
    event_id = run.publish(incident(people(RECIPIENTS)))
    run.start_workers(threads=3)
    database = make_url(database_url).database
    admin = create_engine(os.environ["HERALD_TEST_DATABASE_URL"], isolation_level="AUTOCOMMIT")
    terminated: list[int] = []
    try:
        for kill in range(1, PG_KILLS + 1):
            target = kill * RECIPIENTS // (PG_KILLS + 2)
            run.wait_for(lambda n=target: smtp_sink.count >= n, f"{target} emails")  # type: ignore[misc]
            with admin.connect() as conn:
                killed = conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": database},
                ).scalar_one()
            terminated.append(int(killed))
            run.fault(f"pg_terminate_backend × {killed}", [event_id])
            time.sleep(0.5)
    finally:
        admin.dispose()
    done = run.settle([event_id], 120.0)

    result = run.figures([event_id], expected=RECIPIENTS, received=Received.of(smtp_sink))
    note = f"{PG_KILLS} rounds of pg_terminate_backend killed {'+'.join(map(str, terminated))} connections"
    print("\n" + result.line("pg-terminate", backend, note))
    assert all(terminated), "a round found no connection to kill: the fault tested nothing"
    assert done or result.lost, "not settled, yet nothing lost?"
    result.check()
    assert len({a for m in smtp_sink.messages for a in m.rcpt_tos}) == RECIPIENTS
