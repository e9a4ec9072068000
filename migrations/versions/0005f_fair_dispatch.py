"""fair share: when the dispatcher admitted a job, and each organization's last turn

Jobs active at the upgrade were all sent to the broker by the code before it: they count as admitted (at their
last heartbeat, else their creation), so the dispatcher neither sends them twice nor over-fills the workers,
and the reaper still watches them.

Revision ID: 0005f
Revises: 0004t
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0005f"
down_revision = "0004t"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("admitted_at", models.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_jobs_status_admitted_at", ["status", "admitted_at"], unique=False)
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("last_admitted_at", models.base.UTCDateTime(timezone=True), nullable=True)
        )
    jobs = sa.table(
        "jobs",
        sa.column("status", sa.String()),
        sa.column("admitted_at", models.base.UTCDateTime(timezone=True)),
        sa.column("heartbeat_at", models.base.UTCDateTime(timezone=True)),
        sa.column("created_at", models.base.UTCDateTime(timezone=True)),
    )
    op.execute(
        jobs.update()
        .where(jobs.c.status.in_(("validating_files", "queued", "running")))
        .values(admitted_at=sa.func.coalesce(jobs.c.heartbeat_at, jobs.c.created_at))
    )


def downgrade() -> None:
    with op.batch_alter_table("organizations", schema=None) as batch_op:
        batch_op.drop_column("last_admitted_at")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_admitted_at")
        batch_op.drop_column("admitted_at")
