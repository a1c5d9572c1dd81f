"""SMS length as a carrier counts it, and cutting a long SMS without breaking a character."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.sms_text import GSM7_BASIC, GSM7_EXTENSION, SegmentInfo, encoding_of, fit, segments

LINK = "https://example.com/inbox"
CJK = "中"
EMOJI = "😀"  # outside the BMP: a surrogate pair, two UTF-16 units


# --- encoding -------------------------------------------------------------------------------


def test_the_gsm_alphabet_is_the_real_one() -> None:
    assert len(GSM7_BASIC) == 127  # 128 code points, one of them the escape
    assert frozenset("\f^{}\\[~]|€") == GSM7_EXTENSION
    assert not GSM7_BASIC & GSM7_EXTENSION
    for ch in "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./09:;<=>?¡AZÄÖÑÜ§¿azäöñüà":
        assert ch in GSM7_BASIC, repr(ch)


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        ("", "GSM-7"),
        ("Hello, world! 50% off @ £5 & ¥5: é à ü ß Δ Ω", "GSM-7"),
        ("Braces {} [] ~ | ^ \\ and €", "GSM-7"),
        ("Line one\r\nline two", "GSM-7"),
        ("Ellipsis…", "UCS-2"),
        ("It’s curly", "UCS-2"),
        ("back`tick", "UCS-2"),
        ("en–dash", "UCS-2"),
        ("中文", "UCS-2"),
        (f"emoji {EMOJI}", "UCS-2"),
        ("escape \x1b char", "UCS-2"),
    ],
)
def test_encoding(text: str, encoding: str) -> None:
    assert encoding_of(text) == encoding
    assert segments(text).encoding == encoding


# --- counting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", SegmentInfo("GSM-7", 0, 0, 160)),
        ("a", SegmentInfo("GSM-7", 1, 1, 160)),
        ("a" * 160, SegmentInfo("GSM-7", 160, 1, 160)),
        ("a" * 161, SegmentInfo("GSM-7", 161, 2, 153)),
        ("a" * 306, SegmentInfo("GSM-7", 306, 2, 153)),
        ("a" * 307, SegmentInfo("GSM-7", 307, 3, 153)),
        ("a" * 459, SegmentInfo("GSM-7", 459, 3, 153)),
        ("a" * 460, SegmentInfo("GSM-7", 460, 4, 153)),
        # extension characters take two septets
        ("{" * 80, SegmentInfo("GSM-7", 160, 1, 160)),
        ("{" * 81, SegmentInfo("GSM-7", 162, 2, 153)),
        ("a" * 158 + "€", SegmentInfo("GSM-7", 160, 1, 160)),
        ("a" * 159 + "€", SegmentInfo("GSM-7", 161, 2, 153)),
        # an escape sequence never straddles two segments: "[" moves whole to the next one
        ("a" * 152 + "[" + "a" * 152, SegmentInfo("GSM-7", 306, 3, 153)),
        ("a" * 151 + "[" + "a" * 153, SegmentInfo("GSM-7", 306, 2, 153)),
        # UCS-2
        (CJK * 70, SegmentInfo("UCS-2", 70, 1, 70)),
        (CJK * 71, SegmentInfo("UCS-2", 71, 2, 67)),
        (CJK * 134, SegmentInfo("UCS-2", 134, 2, 67)),
        (CJK * 135, SegmentInfo("UCS-2", 135, 3, 67)),
        ("a" * 69 + CJK, SegmentInfo("UCS-2", 70, 1, 70)),
        ("a" * 70 + CJK, SegmentInfo("UCS-2", 71, 2, 67)),
        # a character outside the BMP is two units and is never split
        (EMOJI * 35, SegmentInfo("UCS-2", 70, 1, 70)),
        (EMOJI * 36, SegmentInfo("UCS-2", 72, 2, 67)),
        (EMOJI * 67, SegmentInfo("UCS-2", 134, 3, 67)),  # 33 pairs fill 66 units of each segment
        (CJK * 66 + EMOJI + CJK * 66, SegmentInfo("UCS-2", 134, 3, 67)),
        (CJK * 65 + EMOJI + CJK * 67, SegmentInfo("UCS-2", 134, 2, 67)),
    ],
    ids=lambda value: f"{len(value)}ch" if isinstance(value, str) else None,
)
def test_segments_are_counted_as_a_carrier_counts_them(text: str, expected: SegmentInfo) -> None:
    assert segments(text) == expected


# --- fit ------------------------------------------------------------------------------------


def split_suffix(result: str, link: str | None) -> tuple[str, str]:
    """(body, ellipsis) of a cut result."""
    tail = f" {link}" if link else ""
    assert result.endswith(tail)
    head = result[: len(result) - len(tail)]
    for ellipsis in ("...", "…"):
        if head.endswith(ellipsis):
            return head[: -len(ellipsis)], ellipsis
    raise AssertionError(f"no ellipsis in {result!r}")


def assert_cut_safely(original: str, body: str) -> None:
    assert original.startswith(body)
    if body:
        assert not "\ud800" <= body[-1] <= "\udbff", "ends with a lone high surrogate"
    if len(body) < len(original):
        following = original[len(body)]
        assert not unicodedata.combining(following), "a combining mark was cut from its base"
        assert unicodedata.category(following) not in ("Mn", "Me", "Mc")
        assert following != "\u200d" and not body.endswith("\u200d")


def test_a_text_that_fits_is_returned_unchanged() -> None:
    text = "a" * 459
    assert fit(text, 3, LINK) is text
    assert fit("", 1, LINK) == ""


def test_a_long_gsm_text_is_cut_with_three_dots_and_the_link() -> None:
    text = "Lorem ipsum dolor sit amet, " * 30

    result = fit(text, 3, LINK)

    assert result.endswith(f"... {LINK}")
    info = segments(result)
    assert info.encoding == "GSM-7" and info.segments <= 3
    assert info.units > 3 * 153 - 12, "cut much shorter than it had to be"
    body, _ = split_suffix(result, LINK)
    assert_cut_safely(text, body)


def test_a_long_gsm_text_never_becomes_ucs2_because_of_the_ellipsis() -> None:
    text = "x" * 1000

    result = fit(text, 1)

    assert result == "x" * 157 + "..."
    assert segments(result) == SegmentInfo("GSM-7", 160, 1, 160)


def test_a_long_chinese_text_is_cut_with_one_ellipsis_character() -> None:
    text = "我们的客服数据库遭到未经授权的访问" * 20

    result = fit(text, 3, LINK)

    assert result.endswith(f"… {LINK}")
    info = segments(result)
    assert info.encoding == "UCS-2" and info.segments <= 3 and info.units >= 3 * 67 - 1
    assert fit(text, 2) == text[:133] + "…"


def test_a_link_outside_gsm_makes_the_whole_message_ucs2_and_it_still_fits() -> None:
    link = "https://例子.cn/收件箱"
    result = fit("a" * 1000, 2, link)

    assert result.endswith(f"… {link}")
    assert segments(result).encoding == "UCS-2" and segments(result).segments <= 2


def test_the_cut_falls_between_words_when_one_ends_nearby() -> None:
    text = "notification " * 100

    body, _ = split_suffix(fit(text, 1, LINK), LINK)

    assert body.endswith("notification") and text.startswith(body + " ")


def test_a_word_longer_than_the_window_is_cut_inside() -> None:
    text = "a" * 1000
    body, _ = split_suffix(fit(text, 1, LINK), LINK)
    assert len(body) == 160 - 3 - 1 - len(LINK)


@pytest.mark.parametrize(
    "unit",
    [
        "e\u0301",  # e + combining acute
        "a\u0308\u0323",  # two combining marks
        EMOJI,
        "👍🏽",  # emoji + skin tone modifier
        "👨‍👩‍👧",  # ZWJ sequence
        "🇨🇳",  # flag: two regional indicators
        "❤️",  # emoji + variation selector
        "क्षि",  # Devanagari conjunct with virama and vowel sign
    ],
)
@pytest.mark.parametrize("max_segments", [1, 2, 3])
def test_a_cut_never_splits_a_character(unit: str, max_segments: int) -> None:
    text = unit * 300

    result = fit(text, max_segments, LINK)

    assert segments(result).segments <= max_segments
    body, ellipsis = split_suffix(result, LINK)
    assert ellipsis == "…"
    assert body and len(body) % len(unit) == 0 and body == unit * (len(body) // len(unit))


def test_a_lone_high_surrogate_is_not_left_at_the_end() -> None:
    text = CJK * 68 + "\ud83d" + CJK * 100

    body, _ = split_suffix(fit(text, 1), None)

    assert body == CJK * 68


def test_a_link_too_long_to_fit_is_left_out() -> None:
    link = "https://example.com/" + "x" * 400

    result = fit("a" * 1000, 2, link)

    assert link not in result and result.endswith("...")
    assert segments(result).segments == 2


def test_max_segments_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        fit("text", 0)


ALPHABET = st.sampled_from(
    ["a", "Z", " ", "\n", "é", "{", "€", "^", "中", "。", EMOJI, "\u0301", "\u200d", "🏽", "🇨", "🇳", "️", "…"]
)
_CHARS = ALPHABET | st.characters()
#: Short texts and long ones: a random head, then a random chunk repeated up to 80 times.
TEXTS = st.builds(
    lambda head, chunk, times: head + chunk * times,
    st.text(alphabet=_CHARS, max_size=60),
    st.text(alphabet=_CHARS, min_size=1, max_size=12),
    st.integers(min_value=0, max_value=80),
)
LINKS = st.none() | st.sampled_from([LINK, "https://例子.cn/x", "https://example.com/" + "y" * 200])


@settings(max_examples=400, deadline=None)
@given(text=TEXTS, max_segments=st.integers(min_value=1, max_value=5), link=LINKS)
def test_fit_always_fits_and_cuts_safely(text: str, max_segments: int, link: str | None) -> None:
    result = fit(text, max_segments, link)

    assert segments(result).segments <= max_segments
    if segments(text).segments <= max_segments:
        assert result == text
        return
    used_link = link if link and result.endswith(f" {link}") else None
    body, ellipsis = split_suffix(result, used_link)
    assert_cut_safely(text, body)
    assert ellipsis == ("..." if segments(result).encoding == "GSM-7" else "…")
    if ellipsis == "…":
        assert encoding_of(body + "..." + (f" {used_link}" if used_link else "")) == "UCS-2"
