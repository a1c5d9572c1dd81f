"""The chaos suite's fixtures: one scenario's herald in real worker processes, and a Redis of
the scenario's own for the faults that must not touch the machine's."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from faults import ChaosRun, OwnRedis

from worker.config import Settings


@pytest.fixture
def backend(database_url: str) -> str:
    """The database backend this run of the test uses, for the printed line."""
    return "sqlite" if database_url.startswith("sqlite") else "postgresql"


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A redis-server of this test's own (append-only file, fsync always), to kill and restart."""
    with OwnRedis(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Callable[[Settings], ChaosRun]]:
    """Start a scenario's herald with given settings; everything it started stops afterwards."""
    runs: list[ChaosRun] = []

    def start(settings: Settings) -> ChaosRun:
        run = ChaosRun(settings, tmp_path)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.close()
