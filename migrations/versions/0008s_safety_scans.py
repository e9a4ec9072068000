"""safety scans: a file's pre-flight scan for one base model (issue 28), its verdict, summary and plan

Revision ID: 0008s
Revises: 0007w
Create Date: 2026-12-10 12:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import models.base

revision = "0008s"
down_revision = "0007w"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "safety_scans",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("file_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("verdict", sa.JSON(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=True),
        sa.Column("mitigation", sa.JSON(), nullable=True),
        sa.Column("records_ref", sa.String(length=1024), nullable=True),
        sa.Column("score_dir", sa.String(length=1024), nullable=True),
        sa.Column("score_key", sa.String(length=64), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("claimed_by", sa.String(length=256), nullable=True),
        sa.Column("heartbeat_at", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("created_at", models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", models.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_safety_scans_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_safety_scans")),
    )
    op.create_index("ix_safety_scans_org_id_id", "safety_scans", ["org_id", "id"])
    op.create_index("ix_safety_scans_org_id_file_id", "safety_scans", ["org_id", "file_id"])


def downgrade() -> None:
    op.drop_index("ix_safety_scans_org_id_file_id", table_name="safety_scans")
    op.drop_index("ix_safety_scans_org_id_id", table_name="safety_scans")
    op.drop_table("safety_scans")
