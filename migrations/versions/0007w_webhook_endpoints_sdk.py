"""webhook endpoints as the openai SDK manages them: a name, updated_at, a rotated secret kept for 24 hours

Revision ID: 0007w
Revises: 0006s
Create Date: 2026-12-09 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0007w"
down_revision = "0006s"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=256), nullable=True))
        batch_op.add_column(sa.Column("updated_at", models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("previous_secret", sa.String(length=128), nullable=True))
        batch_op.add_column(
            sa.Column("previous_secret_expires_at", models.base.UTCDateTime(timezone=True), nullable=True)
        )
    op.execute("UPDATE webhook_endpoints SET updated_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("webhook_endpoints", schema=None) as batch_op:
        batch_op.drop_column("previous_secret_expires_at")
        batch_op.drop_column("previous_secret")
        batch_op.drop_column("updated_at")
        batch_op.drop_column("name")
