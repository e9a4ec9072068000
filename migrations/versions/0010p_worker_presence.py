"""worker presence: one row per running Celery worker and its queues, refreshed every heartbeat, so a job
waiting on a queue that no worker serves says so (issue 28)

Revision ID: 0010p
Revises: 0009r
Create Date: 2026-12-11 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0010p"
down_revision = "0009r"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "worker_presence",
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("queues", sa.String(length=256), nullable=False),
        sa.Column("stage_queues", sa.JSON(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("seen_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_worker_presence")),
    )


def downgrade() -> None:
    op.drop_table("worker_presence")
