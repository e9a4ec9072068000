"""api key roles: organization keys and provider-staff (admin) keys

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 19:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("role", sa.String(length=16), server_default="org", nullable=False))
        batch_op.add_column(sa.Column("name", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("name")
        batch_op.drop_column("role")
