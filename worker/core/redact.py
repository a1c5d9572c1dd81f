"""Masking personal data before it reaches a log, an error message or a console line.

Logs never contain full email addresses, phone numbers or the names written with an
address; these helpers keep just enough to tell two values apart while debugging (first
letter and domain; country code and last two digits). They accept anything, including
malformed input, and never raise. This module is the one place the patterns live.

Phone numbers in free text follow one rule: 7 to 15 digits, bare (``13812345678``) or in
groups joined by single separators (``(415) 555-0123``, ``+44 20 7946 0958``), not part of
a word, an id, a path or a decimal number. Dates, times, IPv4 addresses and decimals are
matched first and kept, and so are counts with thousands separators (``2,000``).
"""

from __future__ import annotations

import re

from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

_MASK = "***"

# --- email addresses, with the display name written before one -------------------------
_ADDR_CHARS = r"[^\s<>()\[\],;:\"'@]"
#: An address inside free text, any script: ``alice@example.com``, ``用户@例子.中国``.
_ADDRESS = rf'(?:"[^"\r\n]{{1,64}}"|(?<!{_ADDR_CHARS}){_ADDR_CHARS}+)@{_ADDR_CHARS}+'
_EMAIL_IN_TEXT = re.compile(_ADDRESS)
#: An address in angle brackets; the display name before it (``Ann Smith <ann@…>``, up to
#: four words, or ``"Smith, Ann" <ann@…>``) is looked for only where one is found.
_BRACKETED = re.compile(rf"<({_ADDRESS})>")
_NAME_WORD = r"[^\W\d_][\w.'\-]*"
_TRAILING_WORDS = re.compile(rf"(?<![\w.'\-])(?:{_NAME_WORD}[ \t]+){{0,3}}{_NAME_WORD}\Z")
_TRAILING_QUOTED = re.compile(r'"[^"\r\n]{1,200}"\Z')
_WORD = re.compile(r"\S+")

# --- phone numbers, and the number-like things that are not ----------------------------
_KEPT = (
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"  # ISO date/time
    r"|\d{4}/\d{1,2}/\d{1,2}|\d{1,2}[./]\d{1,2}[./]\d{2,4}(?![\d.])"  # other dates
    r"|\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?"  # IPv4, with a port
    r"|\d+\.\d+(?!\.?\d)"  # a decimal number
)
#: One group joiner (``-``, ``.``, ``/``, a space, a parenthesis), after a group of at most
#: five digits: a longer run ends the number, so two numbers in a row stay two numbers.
_JOINER = r"(?<!\d{6})(?:\)[ .\-]?\(?|[ .\-/]\(?|\()"
_NUMBERS = re.compile(
    rf"(?<![\w+.,/\-])(?:(?P<kept>{_KEPT})|(?P<phone>(?:\+|\()?\d+(?:{_JOINER}\d+)*\)?))"
    r"(?![\w+\-]|[.,:/]\d)"
)
_MIN_DIGITS, _MAX_DIGITS = 7, 15


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
    country = _country_code(digits) if value.strip().startswith("+") else ""
    rest = digits[len(country) :]
    hidden = max(len(rest) - 2, 1)
    prefix = f"+{country}" if country else ""
    return f"{prefix}{'*' * hidden}{rest[-2:]}"


def mask_emails_in(text: str) -> str:
    """Every email address inside free text masked, e.g. a server reply that echoes one."""
    if "@" not in text:
        return text
    if "<" in text:
        text = _mask_named_addresses(text)
    return _EMAIL_IN_TEXT.sub(lambda match: mask_email(match.group(0)), text)


def mask_phones_in(text: str) -> str:
    """Every phone number inside free text masked, in international or national format."""
    return _NUMBERS.sub(_mask_number, text)


def redact(text: str) -> str:
    """Free text with every email address, display name and phone number masked (for logs)."""
    return mask_phones_in(mask_emails_in(text))


def _mask_named_addresses(text: str) -> str:
    parts: list[str] = []
    done = 0
    for match in _BRACKETED.finditer(text):
        parts += [_mask_trailing_name(text[done : match.start()]), f"<{mask_email(match.group(1))}>"]
        done = match.end()
    return "".join(parts) + text[done:] if parts else text


def _mask_trailing_name(head: str) -> str:
    """``head`` with the display name it ends in (before an address) cut to its first letter."""
    stripped = head.rstrip(" \t")
    window = stripped[-220:]
    quoted = _TRAILING_QUOTED.search(window)
    if quoted is not None:
        name = quoted.group(0)
        return f'{stripped[: len(stripped) - len(name)]}"{name[1]}{_MASK}"{head[len(stripped) :]}'
    found = _TRAILING_WORDS.search(window)
    if found is None:
        return head
    words = list(_WORD.finditer(found.group(0)))
    first = len(words)
    while first > 0 and _looks_like_a_name(words[first - 1].group(0)):
        first -= 1
    if first == len(words):
        return head
    start = len(stripped) - len(found.group(0)) + words[first].start()
    return f"{stripped[:start]}{stripped[start]}{_MASK}{head[len(stripped) :]}"


def _looks_like_a_name(word: str) -> bool:
    # Capitalised (Ann, O'Neil) or in a script without case (张三); "to" or "send" are not.
    return not word[0].islower()


def _mask_number(match: re.Match[str]) -> str:
    found = match.group(0)
    if match.group("kept") is not None:
        return found
    digits = sum(ch.isdigit() for ch in found)
    if not _MIN_DIGITS <= digits <= _MAX_DIGITS:
        return found
    return mask_phone(found)


def _country_code(digits: str) -> str:
    # Calling codes are prefix-free (ITU E.164), so the first known prefix is the code.
    for length in (1, 2, 3):
        if int(digits[:length]) in COUNTRY_CODE_TO_REGION_CODE:
            return digits[:length]
    return ""


def _strip_controls(text: str) -> str:
    return "".join(ch for ch in text if ch.isprintable())
