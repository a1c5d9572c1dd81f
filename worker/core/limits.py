"""What herald accepts and stores, declared once: lengths, the date range, character classes.

Validation (``worker.intake.events``) and the database schema (``worker.store.schema``) both read
these numbers, so a value that passes validation always fits its column: an event can never
be accepted and then fail to be stored, fanned out or rendered because of its size. A test
compares the migrated database with the schema, so a limit changed here without a migration
fails the suite.

This module imports nothing of herald's: every layer may use it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

# --- lengths, in characters -------------------------------------------------------------

#: event_id, incident_id, user_id: letters, digits and ``._:@/-``.
IDENTIFIER_CHARS = 128
#: A one-line field: titles, ``source``, service names, the operator of an override.
LINE_CHARS = 300
#: A free-text field: an incident's five parts, a policy change's summary, a reason.
TEXT_CHARS = 20_000
#: A person's name.
NAME_CHARS = 200
#: An email address (RFC 5321's path limit) and a phone number as given.
EMAIL_CHARS = 320
PHONE_CHARS = 32
#: A BCP 47 tag as stored (``zh-CN``); a longer well-formed tag keeps only its language.
LOCALE_CHARS = 35
#: An IANA time zone name (``America/Argentina/ComodRivadavia`` is 32).
TIME_ZONE_CHARS = 64
#: A channel's name, and how many a person may opt out of.
CHANNEL_NAME_CHARS = 32
OPT_OUT_CHANNELS = 8
#: The opt-outs as stored: channel names joined by commas.
OPT_OUT_CHARS = OPT_OUT_CHANNELS * (CHANNEL_NAME_CHARS + 1)
#: An event type's name.
EVENT_TYPE_CHARS = 64
#: A policy document's name and version (they make the announcement's topic).
DOCUMENT_CHARS = 128
VERSION_CHARS = 64
#: An absolute http(s) URL in an event.
URL_CHARS = 2_000
#: Services a service notice may list, and recipients an inline audience may list.
SERVICES_MAX = 100
INLINE_RECIPIENTS_MAX = 20_000

#: The longest topic (what an announcement is about; see ``worker.intake.events.topic_of``):
#: ``policy:<document key>:<version>``, ``incident:<incident_id>`` or ``event:<event_id>``.
TOPIC_CHARS = max(
    len("policy:") + DOCUMENT_CHARS + 1 + VERSION_CHARS,
    len("incident:") + IDENTIFIER_CHARS,
    len("event:") + IDENTIFIER_CHARS,
)

# --- the payload as a whole --------------------------------------------------------------

#: Deepest nesting of JSON arrays and objects in a payload; an event needs about six.
MAX_JSON_DEPTH = 32

# --- time ---------------------------------------------------------------------------------

#: Every date in an event lies in [EARLIEST, LATEST): far enough apart for any real notice,
#: and far enough from datetime's own ends (years 1 and 9999) that adding a week, a time
#: zone or a reminder to one can never overflow.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)

# --- character classes -------------------------------------------------------------------

#: Characters no text field keeps: C0 controls but tab and newline, DEL, C1 controls, and
#: the non-characters U+FFFE/U+FFFF. None of them can be shown, several break XML (TwiML,
#: Atom) and PostgreSQL refuses NUL in text.
CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffe\uffff]")
#: The same, and tab and newline too: what a one-line field drops before collapsing spaces.
LINE_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\ufffe\uffff]")
#: Half of a UTF-16 surrogate pair on its own: JSON can spell one (``"\\ud800"``), but it is
#: not a character, cannot be encoded in UTF-8 and so cannot be stored, sent or shown.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def in_time_range(moment: datetime) -> bool:
    """Whether an aware datetime lies in [EARLIEST, LATEST), without arithmetic that could overflow."""
    if not EARLIEST.year <= moment.year < LATEST.year:
        return False
    return EARLIEST <= moment < LATEST
