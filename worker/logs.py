"""Logging set-up, with a filter that masks email addresses and phone numbers in every record.

Code should never log a contact in the first place; the filter is the second line of
defence for the cases nobody foresaw (a vendor's error text echoing an address, say).
"""

from __future__ import annotations

import logging

from worker.redact import redact


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with contacts masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(level: int = logging.INFO) -> None:
    """Log to stderr with contacts masked; idempotent."""
    root = logging.getLogger()
    if not any(isinstance(f, RedactingFilter) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(process)d %(message)s"))
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
    root.setLevel(level)
