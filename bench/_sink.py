"""The benchmark's SMTP sink, in a process of its own, with its counters readable from outside.

``python -m worker.sandbox.smtp_sink --no-store`` still parses and prints every message (its
``on_message`` printer), and gives no way to read the count while it runs. This wrapper runs
``SmtpSink(store=False)`` (count only, no parsing) in a spawned process, so the sink never
shares a GIL with the code being measured, and answers ``count`` over a pipe.
"""

from __future__ import annotations

from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from _common import ChildProcess, ignore_interrupts, serve_commands


def _serve(conn: Connection, host: str, port: int) -> None:
    ignore_interrupts(conn)
    from worker.sandbox.smtp_sink import SmtpSink

    sink = SmtpSink(host, port, store=False)

    def answer(command: str) -> Any:
        if command == "count":
            return (sink.count, sink.connections)
        if command == "stop":
            return ("stopped", sink.count)
        return None

    serve_commands(conn, sink, answer)


class SinkProcess(ChildProcess):
    """An aiosmtpd sink (count only) in a separate process; ``count()`` reads its counters.

    ``start()`` raises RuntimeError when the sink does not start.
    """

    label = "the SMTP sink"
    error = RuntimeError

    def target(self) -> tuple[Callable[..., None], tuple[Any, ...], str]:
        return _serve, (self.port,), "bench-smtp-sink"

    def counts(self) -> tuple[int, int]:
        """(messages accepted, SMTP sessions greeted) since the sink started."""
        messages, sessions = self.ask("count")
        return int(messages), int(sessions)

    def count(self) -> int:
        """Messages accepted since the sink started."""
        return self.counts()[0]
