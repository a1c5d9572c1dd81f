"""Masking personal data before it reaches a log, an error message or a console line.

Logs never contain full email addresses or phone numbers; these helpers keep just enough
to tell two values apart while debugging (first letter and domain; country code and last
two digits). They accept anything, including malformed input, and never raise.
"""

from __future__ import annotations

import re

import phonenumbers

#: Something that looks like an email address inside free text (e.g. an SMTP reply).
_EMAIL_IN_TEXT = re.compile(r"[^\s<>()\[\],;:\"'@]+@[^\s<>()\[\],;:\"'@]+")
_MASK = "***"


def mask_email(value: str | None) -> str:
    """``alice@example.com`` → ``a***@example.com``, so a log line identifies no one."""
    if not value:
        return _MASK
    text = value.strip()
    local, sep, domain = text.rpartition("@")
    if not sep or not local:
        return _MASK
    return f"{local[0]}{_MASK}@{_strip_controls(domain)}"


def mask_phone(value: str | None) -> str:
    """``+8613812345678`` → ``+86*********78``: country code and last two digits only."""
    if not value:
        return _MASK
    digits = "".join(ch for ch in value if ch.isdigit())
    if len(digits) <= 2:
        return _MASK
    country = ""
    try:
        number = phonenumbers.parse(value.strip(), None)
    except phonenumbers.NumberParseException:
        number = None
    if number is not None and number.country_code and digits.startswith(str(number.country_code)):
        country = str(number.country_code)
    rest = digits[len(country) :]
    hidden = max(len(rest) - 2, 1)
    prefix = f"+{country}" if country else ""
    return f"{prefix}{'*' * hidden}{rest[-2:]}"


def mask_emails_in(text: str) -> str:
    """Every email address inside free text masked, e.g. a server reply that echoes one."""
    return _EMAIL_IN_TEXT.sub(lambda match: mask_email(match.group(0)), text)


def _strip_controls(text: str) -> str:
    return "".join(ch for ch in text if ch.isprintable())
