"""The embedded Redis is shared by herald processes and outlives none of them.

Every test uses real processes on its own data directory: the promise is about processes
starting and exiting in any order, so nothing here is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import dramatiq
import psutil
import pytest
from dramatiq import Worker
from dramatiq.brokers.redis import RedisBroker

from worker.embedded_redis import embedded_redis_url, shutdown_if_last

ROOT = Path(__file__).resolve().parents[2]

#: Joins the embedded Redis of the data dir in argv[1]; ``r`` is a client, ``url`` its URL.
PRELUDE = """
import json, os, sys, time
from pathlib import Path
import redis
from worker.embedded_redis import embedded_redis_url
url = embedded_redis_url(Path(sys.argv[1]) / "redis.rdb")
r = redis.Redis.from_url(url)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _cmd(data: Path, code: str) -> list[str]:
    return [sys.executable, "-c", PRELUDE + textwrap.dedent(code), str(data)]


def _run(data: Path, code: str) -> str:
    """Run a snippet in a fresh herald process to completion; return its stdout."""
    done = subprocess.run(_cmd(data, code), env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _start(data: Path, code: str) -> subprocess.Popen[str]:
    """Start a snippet that keeps running; returns once it has printed its first line."""
    pipe = subprocess.PIPE
    proc = subprocess.Popen(_cmd(data, code), env=_env(), stdin=pipe, stdout=pipe, stderr=pipe, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
    return proc


def _servers(data: Path) -> list[psutil.Process]:
    """Running redis-servers serving ``data`` (redis chdirs into its data dir); zombies are gone."""
    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            running = proc.info["name"] == "redis-server" and proc.status() != psutil.STATUS_ZOMBIE
            if running and Path(proc.cwd()) == data:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def _registry(data: Path) -> dict[str, object]:
    result: dict[str, object] = json.loads((data / "redis.rdb.json").read_text())
    return result


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    """A data directory whose redis-server must be gone when the test ends."""
    directory = tmp_path / "data"
    yield directory
    left = _servers(directory)
    for proc in left:
        proc.kill()
    assert not left, f"redis-server left behind: {[p.pid for p in left]}"


def test_last_process_stops_the_server_and_the_next_one_sees_the_data(data: Path) -> None:
    code = """
        r.lpush("herald.test", "kept")
        print((Path(sys.argv[1]) / "redis.rdb.json").read_text())
    """
    registry = json.loads(_run(data, code))
    assert not _servers(data)
    server = registry["server_pid"]
    assert not psutil.pid_exists(server) or psutil.Process(server).status() == psutil.STATUS_ZOMBIE
    assert not (data / "redis.rdb.json").exists()
    assert not Path(registry["socket"]).exists()
    assert not Path(registry["redis_dir"]).exists()

    assert _run(data, 'print(r.lrange("herald.test", 0, -1))').strip() == "[b'kept']"
    assert not _servers(data)


def test_server_stays_up_while_any_process_uses_it(data: Path) -> None:
    code = """
        print("ready", flush=True)
        sys.stdin.readline()
        print(r.lrange("herald.test", 0, -1), flush=True)
    """
    holder = _start(data, code)
    try:
        _run(data, 'r.lpush("herald.test", "from-b")')
        assert len(_servers(data)) == 1
        out, err = holder.communicate("\n", timeout=60)
        assert holder.returncode == 0, err
        assert out.strip() == "[b'from-b']"
    finally:
        holder.kill()
    assert not _servers(data)


def test_a_killed_process_does_not_keep_the_server_forever(data: Path) -> None:
    victim = _start(data, 'print("ready", flush=True); time.sleep(120)')
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    assert len(_servers(data)) == 1  # nobody has left yet, so nobody noticed

    _run(data, 'r.set("after", "kill")')
    assert not _servers(data)
    assert _run(data, 'print(r.get("after"))').strip() == "b'kill'"


def test_sigterm_leaves_cleanly(data: Path) -> None:
    victim = _start(data, 'r.set("before", "term"); print("ready", flush=True); time.sleep(120)')
    victim.send_signal(signal.SIGTERM)
    victim.wait(30)
    assert not _servers(data)
    assert _run(data, 'print(r.get("before"))').strip() == "b'term'"


def test_a_forked_child_registers_itself(data: Path) -> None:
    code = """
        child = os.fork()
        if child == 0:
            quiet = os.open(os.devnull, os.O_WRONLY)  # let the test stop reading when the parent exits
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)
            time.sleep(2)
            r.set("child", "was here")
            sys.exit(0)
        print(child)
    """
    child = int(_run(data, code))
    assert len(_servers(data)) == 1, "the parent left while its child still used the server"
    deadline = time.monotonic() + 30
    while psutil.pid_exists(child) and psutil.Process(child).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    deadline = time.monotonic() + 30
    while _servers(data):
        assert time.monotonic() < deadline, "the child did not stop the server"
        time.sleep(0.1)
    assert _run(data, 'print(r.get("child"))').strip() == "b'was here'"


def test_long_data_dir_gets_a_short_socket(tmp_path: Path) -> None:
    data = tmp_path / ("d" * 120)
    try:
        socket = _run(data, "print(r.connection_pool.connection_kwargs['path'])").strip()
        assert len(os.fsencode(socket)) < 108
        assert not Path(socket).parent.exists()
        assert not _servers(data)
    finally:
        for proc in _servers(data):
            proc.kill()


def test_dramatiq_broker_on_the_url(data: Path) -> None:
    broker = RedisBroker(url=embedded_redis_url(data / "redis.rdb"), namespace="herald-embedded-test")
    seen: list[int] = []

    @dramatiq.actor(broker=broker, queue_name="embedded")
    def note(value: int) -> None:
        seen.append(value)

    worker = Worker(broker, worker_timeout=100, worker_threads=1)
    worker.start()
    try:
        note.send(42)
        broker.join("embedded", timeout=10_000)
        worker.join()
    finally:
        worker.stop()
        broker.close()
        shutdown_if_last()
    assert seen == [42]


def test_dramatiq_cli_workers_leave_no_server(data: Path, tmp_path: Path) -> None:
    """``herald worker`` is ``python -m dramatiq``: its forked workers end with os._exit."""
    (tmp_path / "embedded_app.py").write_text(
        textwrap.dedent("""
        import os
        from pathlib import Path
        import dramatiq
        from dramatiq.brokers.redis import RedisBroker
        from worker.embedded_redis import embedded_redis_url
        dramatiq.set_broker(RedisBroker(url=embedded_redis_url(Path(os.environ["DATA"]) / "redis.rdb")))
    """)
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "embedded_app", "--processes", "2", "--threads", "1"],
        cwd=tmp_path,
        env={**_env(), "DATA": str(data), "PYTHONPATH": f"{ROOT}{os.pathsep}{tmp_path}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "dramatiq exited early"
            assert time.monotonic() < deadline, "the workers never registered"
            if (data / "redis.rdb.json").exists() and len(_registry(data)["users"]) == 2:  # type: ignore[arg-type]
                break
            time.sleep(0.1)
        assert len(_servers(data)) == 1
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    assert not _servers(data)
