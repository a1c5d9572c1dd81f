"""Logging set-up: one handler on the root logger, and every record it writes redacted.

Code should never log a contact or a payload in the first place; the filter is the second
line of defence for the cases nobody foresaw (a vendor's error text echoing an address, an
exception carrying an argument). It sits on the handler, so records from every logger pass
through it, dramatiq's and third parties' included, with their exceptions and stacks.

dramatiq writes the message it is processing into its lines (``Failed to process message
ingest('{…the whole event…}')``): the filter shows such a message as its actor and id only.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from dramatiq import Message
from dramatiq.broker import MessageProxy

from worker.core.redact import redact

FORMAT = "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"
_TRACEBACKS = logging.Formatter()


class RedactingFilter(logging.Filter):
    """Rewrites each record: message, exception and stack masked, dramatiq messages by id only."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(_message_of(record)), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def configure_logging(level: int = logging.INFO) -> None:
    """Make one redacting handler on stderr the root logger's only handler; idempotent.

    Handlers installed before (dramatiq's ``basicConfig`` in a worker process) are removed,
    so no record is written twice and none unredacted.
    """
    root = logging.getLogger()
    kept = next((h for h in root.handlers if _is_ours(h)), None)
    for handler in root.handlers[:]:
        if handler is not kept:
            root.removeHandler(handler)
    if kept is None:
        handler = logging.StreamHandler(sys.stderr)  # in a dramatiq worker: the pipe to its supervisor
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    root.setLevel(level)


def _is_ours(handler: logging.Handler) -> bool:
    return (
        isinstance(handler, logging.StreamHandler)
        and handler.stream is sys.stderr
        and any(isinstance(f, RedactingFilter) for f in handler.filters)
    )


def _message_of(record: logging.LogRecord) -> str:
    if isinstance(record.args, tuple):
        from_dramatiq = record.name.startswith("dramatiq")
        record.args = tuple(_loggable(arg, from_dramatiq) for arg in record.args)
    try:
        return record.getMessage()
    except Exception:  # wrong arguments for the format: keep the format, never the arguments
        return f"{record.msg} (arguments could not be formatted)"


def _loggable(arg: Any, from_dramatiq: bool) -> Any:
    if isinstance(arg, Message | MessageProxy):
        return f"{arg.actor_name}[{arg.message_id}]"
    if from_dramatiq and isinstance(arg, tuple | list | dict):
        return f"<{len(arg)} {type(arg).__name__} items>"  # an actor's arguments
    return arg
