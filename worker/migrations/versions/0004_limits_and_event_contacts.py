"""column lengths from worker.core.limits; contacts given inline kept per event; intake hashes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 23:00:00

The lengths are written out here, as they were when this migration was made: a migration
must do the same thing whenever it runs, whatever ``worker.core.limits`` says later.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("intake", schema=None) as batch_op:
        batch_op.add_column(sa.Column("payload_sha256", sa.String(length=64), nullable=True))
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.alter_column("opt_out", existing_type=sa.String(length=200), type_=sa.String(length=264))
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.alter_column("topic", existing_type=sa.String(length=300), type_=sa.String(length=200))
    with op.batch_alter_table("announcements", schema=None) as batch_op:
        batch_op.alter_column(
            "topic", existing_type=sa.String(length=300), type_=sa.String(length=200), existing_nullable=False
        )
    op.create_table(
        "event_contacts",
        sa.Column("event_id", sa.String(length=128), nullable=False),
        sa.Column("recipient_ref", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("phone", sa.String(length=32), nullable=True),
        sa.Column("locale", sa.String(length=35), nullable=True),
        sa.Column("email_problem", sa.String(length=300), nullable=True),
        sa.Column("phone_problem", sa.String(length=300), nullable=True),
        sa.Column("opt_out", sa.String(length=264), nullable=True),
        sa.Column("time_zone", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", "recipient_ref", name=op.f("pk_event_contacts")),
    )


def downgrade() -> None:
    op.drop_table("event_contacts")
    with op.batch_alter_table("announcements", schema=None) as batch_op:
        batch_op.alter_column(
            "topic", existing_type=sa.String(length=200), type_=sa.String(length=300), existing_nullable=False
        )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.alter_column("topic", existing_type=sa.String(length=200), type_=sa.String(length=300))
    with op.batch_alter_table("recipients", schema=None) as batch_op:
        batch_op.alter_column("opt_out", existing_type=sa.String(length=264), type_=sa.String(length=200))
    with op.batch_alter_table("intake", schema=None) as batch_op:
        batch_op.drop_column("payload_sha256")
