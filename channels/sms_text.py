"""SMS length, counted as a carrier counts it, and truncation that never breaks a character.

An SMS is sent in one of two encodings:

* **GSM-7** when every character is in the GSM 03.38 default alphabet (``GSM7_BASIC``, one
  septet each) or its extension table (``GSM7_EXTENSION``: ``^{}\\[~]|€`` and form feed, two
  septets each: an escape and the character). One segment holds 160 septets; a concatenated
  message holds 153 per segment, the rest going to the user data header.
* **UCS-2** otherwise, counted in UTF-16 code units: 70 in one segment, 67 per segment when
  concatenated. A character outside the Basic Multilingual Plane (most emoji) is a surrogate
  pair, two units.

A segment boundary never falls inside an escape sequence or a surrogate pair: such a
character moves whole to the next segment, which is why segments are counted by packing the
characters in order rather than by dividing the total. National language shift tables are
not used.

Everything here is pure: no I/O, no settings.
"""

from __future__ import annotations

import unicodedata
from typing import Literal, NamedTuple

Encoding = Literal["GSM-7", "UCS-2"]

#: The GSM 03.38 default alphabet: one septet each (0x1B, the escape, is not a character).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
#: The GSM 03.38 extension table: two septets each (an escape, then the character).
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE = 160
GSM7_CONCATENATED = 153
UCS2_SINGLE = 70
UCS2_CONCATENATED = 67

#: How far back (in characters) ``fit`` looks for a space rather than cut a word in two.
WORD_BOUNDARY_WINDOW = 15

_ELLIPSIS_GSM = "..."
_ELLIPSIS_UCS = "…"
_ZWJ = "\u200d"
#: What may dangle at the end of a cut text before the ellipsis goes on.
_TRAILING_SEPARATORS = " \t\r\n\f\v,;:-–—/([{，、；：（【《"


class SegmentInfo(NamedTuple):
    """How a carrier sees a text: its encoding, its length in that encoding's units
    (septets or UTF-16 code units), how many segments it takes, and how many units each
    segment holds (the single-message size when it fits in one)."""

    encoding: Encoding
    units: int
    segments: int
    per_segment: int


def encoding_of(text: str) -> Encoding:
    """``"GSM-7"`` when every character is in the GSM default alphabet or its extension
    table; ``"UCS-2"`` otherwise."""
    for ch in text:
        if ch not in GSM7_BASIC and ch not in GSM7_EXTENSION:
            return "UCS-2"
    return "GSM-7"


def _unit_sizes(text: str, encoding: Encoding) -> list[int]:
    """The units each character takes; a character is never split across segments."""
    if encoding == "GSM-7":
        return [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def _pack(sizes: list[int], single: int, concatenated: int) -> tuple[int, int]:
    """(total units, segments) when characters of ``sizes`` are packed in order."""
    total = sum(sizes)
    if total == 0:
        return 0, 0
    if total <= single:
        return total, 1
    count, used = 1, 0
    for size in sizes:
        if used + size > concatenated:
            count += 1
            used = 0
        used += size
    return total, count


def segments(text: str) -> SegmentInfo:
    """How many SMS segments ``text`` takes, counted as a carrier counts them.

    An empty text takes no segments (there is nothing to send).
    """
    encoding = encoding_of(text)
    single, concatenated = (GSM7_SINGLE, GSM7_CONCATENATED) if encoding == "GSM-7" else (UCS2_SINGLE, UCS2_CONCATENATED)
    units, count = _pack(_unit_sizes(text, encoding), single, concatenated)
    return SegmentInfo(encoding, units, count, single if count <= 1 else concatenated)


# --- safe truncation ------------------------------------------------------------------------


def _extends(ch: str) -> bool:
    """Whether ``ch`` belongs to the character before it (a combining mark and the like)."""
    cp = ord(ch)
    return (
        unicodedata.combining(ch) != 0
        or unicodedata.category(ch) in ("Mn", "Me", "Mc")
        or ch == _ZWJ
        or 0x1F3FB <= cp <= 0x1F3FF  # emoji skin-tone modifiers
        or 0xE0020 <= cp <= 0xE007F  # emoji tag sequences
        or 0x1160 <= cp <= 0x11FF  # Hangul conjoining vowels and final consonants
        or 0xD7B0 <= cp <= 0xD7FF
    )


def _is_regional_indicator(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def clusters(text: str) -> list[str]:
    """``text`` split into user-perceived characters, closely enough to cut it safely.

    A cut between two clusters never separates a base character from its combining marks,
    the halves of a surrogate pair, CR from LF, the parts of an emoji ZWJ sequence or of a
    flag, an emoji from its modifier or variation selector, or the consonants of an Indic
    conjunct (joined by a virama).
    """
    out: list[str] = []
    for ch in text:
        if out:
            last = out[-1]
            joins = (
                _extends(ch)
                or last.endswith(_ZWJ)
                or (last == "\r" and ch == "\n")
                or (unicodedata.combining(last[-1]) == 9 and unicodedata.category(ch) == "Lo")  # conjunct
                or ("\ud800" <= last[-1] <= "\udbff" and "\udc00" <= ch <= "\udfff")
                or (
                    _is_regional_indicator(ch)
                    and _is_regional_indicator(last[-1])
                    and sum(map(_is_regional_indicator, last)) % 2 == 1
                )
            )
            if joins:
                out[-1] = last + ch
                continue
        out.append(ch)
    return out


def _trim(body: str) -> str:
    """The cut text without what would dangle before an ellipsis (spaces, commas, a lone
    high surrogate left by a broken input)."""
    while True:
        trimmed = body.rstrip(_TRAILING_SEPARATORS)
        while trimmed and "\ud800" <= trimmed[-1] <= "\udbff":
            trimmed = trimmed[:-1]
        if trimmed == body:
            return body
        body = trimmed


def _with_suffix(body: str, link: str | None) -> str:
    """``body`` cut, then an ellipsis ("..." while the whole stays GSM-7), then the link."""
    body = _trim(body)
    tail = f" {link}" if link else ""
    ellipsis = _ELLIPSIS_GSM if encoding_of(body + tail) == "GSM-7" else _ELLIPSIS_UCS
    return f"{body}{ellipsis}{tail}"


def _splits_a_word(before: str, after: str) -> bool:
    def wordlike(cluster: str) -> bool:
        ch = cluster[0]
        return ch.isalnum() and unicodedata.east_asian_width(ch) not in ("W", "F")

    return wordlike(before) and wordlike(after)


def fit(text: str, max_segments: int, link: str | None = None) -> str:
    """``text`` unchanged if it fits in ``max_segments``; otherwise cut so that it does.

    The cut text ends with an ellipsis and then, if given, `` link`` (where the full notice
    is). The ellipsis is "..." while the result is GSM-7 ("…" is not in the GSM alphabet and
    would turn the whole message into UCS-2) and "…" otherwise. The cut falls between
    user-perceived characters (``clusters``), and, if that would split a word, at the last
    space within ``WORD_BOUNDARY_WINDOW`` characters when there is one. If even the link
    cannot fit, it is left out.

    Raises:
        ValueError: ``max_segments`` is less than 1.
    """
    if max_segments < 1:
        raise ValueError(f"max_segments must be at least 1, not {max_segments}")
    if segments(text).segments <= max_segments:
        return text
    link = link.strip() if link else None
    parts = clusters(text)
    offsets = [0]
    for part in parts:
        offsets.append(offsets[-1] + len(part))

    def candidate(count: int, tail: str | None) -> str:
        return _with_suffix(text[: offsets[count]], tail)

    def fits(count: int, tail: str | None) -> bool:
        return segments(candidate(count, tail)).segments <= max_segments

    for tail in (link, None) if link else (None,):
        if not fits(0, tail):
            continue
        # The longest prefix that fits: more text never takes fewer segments.
        low, high = 0, len(parts)
        while low < high:
            middle = (low + high + 1) // 2
            if fits(middle, tail):
                low = middle
            else:
                high = middle - 1
        count = low
        if 0 < count < len(parts) and _splits_a_word(parts[count - 1], parts[count]):
            for back in range(count - 1, max(count - WORD_BOUNDARY_WINDOW, 0) - 1, -1):
                if parts[back].isspace():
                    if fits(back, tail):
                        count = back
                    break
        return candidate(count, tail)
    raise AssertionError("unreachable: an ellipsis alone fits in one segment")  # pragma: no cover
