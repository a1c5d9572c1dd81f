"""Which Twilio ``<Say>`` voice reads a notice aloud in each locale.

``voice_for(locale)`` gives the ``voice`` and ``language`` attributes of ``<Say>``; the
TwiML itself is built by the phone channel. Locales resolve like templates do: an exact
match, then the same language (``zh``, ``zh-TW`` → Mandarin), then English.
"""

from __future__ import annotations

#: The voice and language Twilio uses for each locale herald has phone templates for.
VOICES: dict[str, tuple[str, str]] = {
    "en": ("Polly.Joanna", "en-US"),
    "zh-CN": ("Polly.Zhiyu", "cmn-CN"),
}
FALLBACK_VOICE_LOCALE = "en"


def voice_for(locale: str) -> tuple[str, str]:
    """``(voice, language)`` for ``<Say>``, e.g. ``("Polly.Zhiyu", "cmn-CN")`` for ``zh-CN``."""
    wanted = (locale or "").strip().replace("_", "-").lower()
    by_key = {key.lower(): value for key, value in VOICES.items()}
    if wanted in by_key:
        return by_key[wanted]
    language = wanted.split("-", 1)[0]
    for key, value in sorted(by_key.items()):
        if key.split("-", 1)[0] == language:
            return value
    return VOICES[FALLBACK_VOICE_LOCALE]
