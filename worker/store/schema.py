"""The database tables, as SQLAlchemy Core metadata; Alembic migrations follow this file.

Contact details live only in ``recipients`` (the stored record) and ``event_contacts``
(contacts an event gave inline, for that event); every other table names a person by the
pseudonymous ``recipient_ref``, so that a retention purge can erase contacts without
touching the evidence in ``ledger``.

Column lengths come from ``worker.core.limits``, the same numbers validation uses, so a value
herald accepted always fits.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from worker.core.limits import (
    CHANNEL_NAME_CHARS,
    EMAIL_CHARS,
    EVENT_TYPE_CHARS,
    IDENTIFIER_CHARS,
    LINE_CHARS,
    LOCALE_CHARS,
    NAME_CHARS,
    OPT_OUT_CHARS,
    PHONE_CHARS,
    TIME_ZONE_CHARS,
    TOPIC_CHARS,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments INTEGER PRIMARY KEY, so BigInteger falls back to Integer there.
Id = BigInteger().with_variant(Integer(), "sqlite")

intake = Table(
    "intake",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(IDENTIFIER_CHARS), nullable=True, index=True),
    Column("outcome", String(16), nullable=False, index=True),  # accepted | duplicate | conflict | rejected
    Column("reason", Text, nullable=True),
    Column("event_type", String(EVENT_TYPE_CHARS), nullable=True),
    Column("source", String(LINE_CHARS), nullable=True),
    Column("size_bytes", Integer, nullable=False),
    Column("excerpt", Text, nullable=True),  # refused payloads only: bounded, escaped, contacts masked
    Column("payload_sha256", String(64), nullable=True),  # of the raw bytes, to match a producer's copy
    Column("received_at", DateTime(timezone=True), nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("event_id", String(IDENTIFIER_CHARS), primary_key=True),
    Column("event_type", String(EVENT_TYPE_CHARS), nullable=False),
    Column("source", String(LINE_CHARS), nullable=False),
    Column("digest", String(64), nullable=False),  # of the body as received, contacts included
    Column("body", Text, nullable=False),  # as received, but an inline audience's contacts are in event_contacts
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("accepted_at", DateTime(timezone=True), nullable=False),
    Column("fanout_cursor", String(128), nullable=True),  # where the next audience page starts
    Column("fanout_done_at", DateTime(timezone=True), nullable=True),
    Column("recipients_total", Integer, nullable=True),
    Column("fanout_updated_at", DateTime(timezone=True), nullable=True),  # the dead-man check watches it
    Column("topic", String(TOPIC_CHARS), nullable=True, index=True),  # events of one topic share an announcement
    Column("plan", Text, nullable=True),  # the routing plan (JSON) the event is sent under, fixed at intake
)

recipients = Table(
    "recipients",
    metadata,
    Column("ref", String(32), primary_key=True),
    Column("user_id", String(IDENTIFIER_CHARS), nullable=False, unique=True),
    Column("name", String(NAME_CHARS), nullable=False, default=""),
    Column("email", String(EMAIL_CHARS), nullable=True),
    Column("phone", String(PHONE_CHARS), nullable=True),
    Column("locale", String(LOCALE_CHARS), nullable=False, default="en"),
    Column("email_problem", String(300), nullable=True),  # why a given address was unusable (masked)
    Column("phone_problem", String(300), nullable=True),
    Column("opt_out", String(OPT_OUT_CHARS), nullable=True),  # channels the person opted out of, comma-separated
    Column("time_zone", String(TIME_ZONE_CHARS), nullable=True),  # IANA zone times are shown in; null = the locale's
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# Contacts an event gave inline for one person: used for that event only, never copied into
# ``recipients`` (which only an import changes). A null column means "not given": the stored
# record's value applies. Opt-outs add to the stored ones, never replace them.
event_contacts = Table(
    "event_contacts",
    metadata,
    Column("event_id", String(IDENTIFIER_CHARS), primary_key=True),
    Column("recipient_ref", String(32), primary_key=True),
    Column("name", String(NAME_CHARS), nullable=True),
    Column("email", String(EMAIL_CHARS), nullable=True),
    Column("phone", String(PHONE_CHARS), nullable=True),
    Column("locale", String(LOCALE_CHARS), nullable=True),
    Column("email_problem", String(300), nullable=True),  # the given address was unusable (masked)
    Column("phone_problem", String(300), nullable=True),
    Column("opt_out", String(OPT_OUT_CHARS), nullable=True),
    Column("time_zone", String(TIME_ZONE_CHARS), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(IDENTIFIER_CHARS), nullable=False),
    Column("recipient_ref", String(32), nullable=False),
    Column("channel", String(CHANNEL_NAME_CHARS), nullable=False),
    Column("step", Integer, nullable=False, default=0),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    # Provider requests that may have reached the person (accepted, or outcome unknown); one is
    # counted in each claim, before the provider is called, and given back when nothing went out.
    Column("requests", Integer, nullable=False, default=0, server_default="0"),
    Column("claimed_by", String(64), nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("provider_message_id", String(255), nullable=True),
    Column("error_class", String(64), nullable=True),
    Column("error_code", String(32), nullable=True),
    Column("reason", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("event_id", "recipient_ref", "channel", "step", name="uq_deliveries_key"),
    Index("ix_deliveries_event_status", "event_id", "status"),
    Index("ix_deliveries_provider_message_id", "provider_message_id"),
    Index("ix_deliveries_ref_channel", "recipient_ref", "channel", "created_at"),  # frequency caps
    Index("ix_deliveries_status_updated", "status", "updated_at"),  # the dead-man check
)

ledger = Table(
    "ledger",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(IDENTIFIER_CHARS), nullable=False, index=True),
    Column("recipient_ref", String(32), nullable=False, index=True),
    Column("channel", String(CHANNEL_NAME_CHARS), nullable=False),
    Column("step", Integer, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("provider_message_id", String(255), nullable=True),
    Column("error_class", String(64), nullable=True),
    Column("error_code", String(32), nullable=True),
    Column("reason", Text, nullable=True),
    Column("tries", Integer, nullable=False, default=1),
    Column(
        "requests", Integer, nullable=True
    ),  # the key's count of requests that may have gone out, after this attempt
    Column("segments", Integer, nullable=True),  # SMS only: how many parts the carrier bills
    Column("provider", String(64), nullable=True),  # the backup provider that handled it; null = primary
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)

letters = Table(
    "letters",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(IDENTIFIER_CHARS), nullable=False),
    Column("recipient_ref", String(32), nullable=False, index=True),
    Column("locale", String(35), nullable=False),
    Column("subject", String(300), nullable=False),
    Column("body", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("read_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("event_id", "recipient_ref", name="uq_letters_event_recipient"),
)

# Callbacks whose delivery is not recorded yet, one per (provider id, status): a replay adds
# nothing, a row is deleted when it is applied, and the dead-man check drops the ones that
# never match (``HERALD_CALLBACK_RETENTION_S``).
provider_callbacks = Table(
    "provider_callbacks",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("provider_message_id", String(255), nullable=False),
    Column("status", String(16), nullable=False),
    Column("error_class", String(64), nullable=True),
    Column("error_code", String(32), nullable=True),
    Column("reason", Text, nullable=True),
    Column("received_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("provider_message_id", "status", name="uq_provider_callbacks_sid_status"),
)

# One row per (event, recipient): where that person stands on the event's routing plan.
routes = Table(
    "routes",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(IDENTIFIER_CHARS), nullable=False),
    Column("recipient_ref", String(32), nullable=False),
    Column("stage", Integer, nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("wait_until", DateTime(timezone=True), nullable=True),  # the stage's confirmation wait ends
    Column("reached_channel", String(CHANNEL_NAME_CHARS), nullable=True),
    Column("announcement_id", String(100), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("event_id", "recipient_ref", name="uq_routes_key"),
    Index("ix_routes_event_outcome", "event_id", "outcome"),
    Index("ix_routes_outcome_wait", "outcome", "wait_until"),
)

# One public announcement per topic (an incident and its updates, a policy version, a notice).
announcements = Table(
    "announcements",
    metadata,
    Column("id", String(100), primary_key=True),  # the URL slug; never changes
    Column("topic", String(TOPIC_CHARS), nullable=False, unique=True),
    Column("event_type", String(EVENT_TYPE_CHARS), nullable=False),
    Column("event_id", String(IDENTIFIER_CHARS), nullable=False),  # the event that first needed it
    Column("revision", Integer, nullable=False),  # bumped whenever its content changes
    Column("published_revision", Integer, nullable=False, default=0),
    Column("first_public_at", DateTime(timezone=True), nullable=True),
    Column("published_at", DateTime(timezone=True), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # Publications in a row whose pages could not be built (reset when a revision goes up or
    # a new one arrives), and the last one's reason: the bound on trying again.
    Column("failures", Integer, nullable=False, default=0, server_default="0"),
    Column("failure", Text, nullable=True),
)

# Periodic jobs shared by every worker process: whoever moves ``due_at`` on runs the job.
timers = Table(
    "timers",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("due_at", DateTime(timezone=True), nullable=False),
)

# The durable schedule: one row per job an event needs done at a time of its own (a policy
# change's website notice, its individual notices, a reminder, a withdrawal). Week-long
# waits live here, not in the broker.
schedules = Table(
    "schedules",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", String(IDENTIFIER_CHARS), nullable=False),
    Column("job", String(32), nullable=False),  # publish_notice | send_notices | reminder | withdraw
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("state", String(16), nullable=False),  # pending | claimed | enqueued | done | cancelled
    Column("claimed_by", String(64), nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Column("enqueued_at", DateTime(timezone=True), nullable=True),
    Column("enqueues", Integer, nullable=False, default=0),  # how often it was handed to the broker
    Column("done_at", DateTime(timezone=True), nullable=True),
    Column("note", Text, nullable=True),  # why it was cancelled, by whom
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("event_id", "job", name="uq_schedules_event_job"),
    Index("ix_schedules_state_due", "state", "due_at"),
)
