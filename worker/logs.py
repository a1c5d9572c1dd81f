"""Logging set-up, with a filter that masks email addresses and phone numbers in every record.

Code should never log a contact in the first place; the filter is the second line of
defence for the cases nobody foresaw (a vendor's error text echoing an address, say).
"""

from __future__ import annotations

import logging
import re

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_PHONE = re.compile(r"(?<![\w+])(\+\d{1,3})[\d\s().-]{5,}(\d{2})(?!\w)")


def redact(text: str) -> str:
    """Mask anything that looks like an email address or a phone number."""
    text = _EMAIL.sub(r"\1***@\2", text)
    return _PHONE.sub(r"\1******\2", text)


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
