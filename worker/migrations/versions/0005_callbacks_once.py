"""provider callbacks: one waiting row per (provider id, status), none once applied

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Applied callbacks are no longer kept, and replays of a waiting one collapse to the first.
    op.execute("DELETE FROM provider_callbacks WHERE applied_at IS NOT NULL")
    op.execute(
        "DELETE FROM provider_callbacks WHERE id NOT IN "
        "(SELECT MIN(id) FROM provider_callbacks GROUP BY provider_message_id, status)"
    )
    with op.batch_alter_table("provider_callbacks", schema=None) as batch_op:
        batch_op.drop_index("ix_provider_callbacks_provider_message_id")
        batch_op.drop_column("applied_at")
        batch_op.create_unique_constraint("uq_provider_callbacks_sid_status", ["provider_message_id", "status"])


def downgrade() -> None:
    with op.batch_alter_table("provider_callbacks", schema=None) as batch_op:
        batch_op.drop_constraint("uq_provider_callbacks_sid_status", type_="unique")
        batch_op.add_column(sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_provider_callbacks_provider_message_id", ["provider_message_id"], unique=False)
