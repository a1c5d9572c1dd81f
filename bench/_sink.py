"""The benchmark's SMTP sink, in a process of its own, with its counters readable from outside.

``python -m worker.sandbox.smtp_sink --no-store`` still parses and prints every message (its
``on_message`` printer), and gives no way to read the count while it runs. This wrapper runs
``SmtpSink(store=False)`` (count only, no parsing) in a spawned process, so the sink never
shares a GIL with the code being measured, and answers ``count`` over a pipe.
"""

from __future__ import annotations

import multiprocessing
import signal
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any


def _serve(conn: Connection, host: str, port: int) -> None:
    # Ctrl-C reaches the whole foreground process group; the parent decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: conn.close())
    from worker.sandbox.smtp_sink import SmtpSink

    sink = SmtpSink(host, port, store=False)
    try:
        sink.start()
    except Exception as exc:  # report, do not hang the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    try:
        conn.send(("ready", sink.port))
        while True:
            try:
                if not conn.poll(1.0):
                    continue
                command = conn.recv()
            except (EOFError, OSError):
                break  # the parent is gone
            if command == "count":
                conn.send((sink.count, sink.connections))
            elif command == "stop":
                conn.send(("stopped", sink.count))
                break
    finally:
        sink.stop()


class SinkProcess:
    """An aiosmtpd sink (count only) in a separate process; ``count()`` reads its counters."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._ctx = multiprocessing.get_context("spawn")
        self._conn: Connection | None = None
        self._proc: Any = None

    def start(self, timeout: float = 30.0) -> SinkProcess:
        """Start the sink process and wait until it listens.

        Raises:
            RuntimeError: the sink did not start.
        """
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_serve, args=(child, self.host, self.port), name="bench-smtp-sink")
        self._proc.daemon = True
        self._proc.start()
        child.close()
        self._conn = parent
        if not parent.poll(timeout):
            self.stop()
            raise RuntimeError("the SMTP sink process did not start in time")
        kind, value = parent.recv()
        if kind != "ready":
            self.stop()
            raise RuntimeError(f"the SMTP sink could not start: {value}")
        self.port = int(value)
        return self

    @property
    def pid(self) -> int | None:
        """The sink process id."""
        return self._proc.pid if self._proc is not None else None

    def counts(self) -> tuple[int, int]:
        """(messages accepted, SMTP sessions greeted) since the sink started."""
        assert self._conn is not None, "sink not started"
        self._conn.send("count")
        messages, sessions = self._conn.recv()
        return int(messages), int(sessions)

    def count(self) -> int:
        """Messages accepted since the sink started."""
        return self.counts()[0]

    def stop(self) -> None:
        """Stop the sink process (politely, then by force)."""
        conn, self._conn = self._conn, None
        proc, self._proc = self._proc, None
        if conn is not None:
            try:
                conn.send("stop")
                if conn.poll(5.0):
                    conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                pass
            conn.close()
        if proc is not None:
            proc.join(5.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def __enter__(self) -> SinkProcess:
        return self.start()

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None) -> None:
        self.stop()
