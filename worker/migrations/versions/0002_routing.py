"""routing and announcements: routes, announcements, timers; plans and topics on events

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 08:00:00
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fanout_updated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("topic", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("plan", sa.Text(), nullable=True))
        batch_op.create_index(batch_op.f("ix_events_topic"), ["topic"], unique=False)
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.add_column(sa.Column("email_problem", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("phone_problem", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("opt_out", sa.String(length=200), nullable=True))
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.create_index("ix_deliveries_ref_channel", ["recipient_ref", "channel", "created_at"], unique=False)
        batch_op.create_index("ix_deliveries_status_updated", ["status", "updated_at"], unique=False)
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider", sa.String(length=64), nullable=True))

    op.create_table(
        "routes",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("recipient_ref", sa.String(length=32), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("wait_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reached_channel", sa.String(length=32), nullable=True),
        sa.Column("announcement_id", sa.String(length=100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routes")),
        sa.UniqueConstraint("event_id", "recipient_ref", name="uq_routes_key"),
    )
    with op.batch_alter_table("routes", schema=None) as batch_op:
        batch_op.create_index("ix_routes_event_outcome", ["event_id", "outcome"], unique=False)
        batch_op.create_index("ix_routes_outcome_wait", ["outcome", "wait_until"], unique=False)

    op.create_table(
        "announcements",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("topic", sa.String(length=300), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("published_revision", sa.Integer(), nullable=False),
        sa.Column("first_public_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_announcements")),
        sa.UniqueConstraint("topic", name=op.f("uq_announcements_topic")),
    )
    timers = op.create_table(
        "timers",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_timers")),
    )
    op.bulk_insert(timers, [{"name": "sweep", "due_at": datetime(2000, 1, 1, tzinfo=UTC)}])


def downgrade() -> None:
    op.drop_table("timers")
    op.drop_table("announcements")
    with op.batch_alter_table("routes", schema=None) as batch_op:
        batch_op.drop_index("ix_routes_outcome_wait")
        batch_op.drop_index("ix_routes_event_outcome")
    op.drop_table("routes")
    with op.batch_alter_table("ledger", schema=None) as batch_op:
        batch_op.drop_column("provider")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_status_updated")
        batch_op.drop_index("ix_deliveries_ref_channel")
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.drop_column("opt_out")
        batch_op.drop_column("phone_problem")
        batch_op.drop_column("email_problem")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_events_topic"))
        batch_op.drop_column("plan")
        batch_op.drop_column("topic")
        batch_op.drop_column("fanout_updated_at")
