"""Alembic alone makes the schema: ``upgrade head`` equals the models; ``downgrade base`` empties it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

import migrations
from models.base import Base
from tests.api.server import pg_schema_url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
    else:
        with pg_schema_url() as url:
            yield url


def _diff(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            opts = {"compare_type": True, "compare_server_default": True}
            ctx = MigrationContext.configure(conn, opts=opts)
            return list(compare_metadata(ctx, Base.metadata))
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_head_matches_models_and_downgrade_base_empties(db_url: str) -> None:
    migrations.upgrade("head", url=db_url)
    assert _diff(db_url) == []
    assert set(Base.metadata.tables) <= _tables(db_url)
    migrations.downgrade("base", url=db_url)
    assert _tables(db_url) <= {"alembic_version"}
    migrations.upgrade("head", url=db_url)  # and back up again
    assert _diff(db_url) == []


def test_db_upgrade_command_uses_settings(tunegate_home: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert _diff(f"sqlite:///{tunegate_home / 'tunegate.db'}") == []


ORG_ROW = (
    "INSERT INTO organizations (id, name, policy, created_at) VALUES ('o', 'o', '{}', '2026-12-01 10:00')"
)
JOB_ROW = (
    "INSERT INTO jobs (id, org_id, model, training_file, status, hyperparameters, method, seed, safety, "
    "result_files, created_at, cancel_requested, progress, attempt, released, event_count, heartbeat_at) "
    "VALUES (:id, 'o', 'm', 'f', :status, '{}', '{}', 0, '{}', '[]', '2026-12-01 10:00:00', false, 0, 0, "
    "false, 0, :beat)"
)


def test_jobs_active_at_the_fair_share_upgrade_count_as_admitted(db_url: str) -> None:
    """0005f: jobs the code before it had already sent to the broker are admitted (the dispatcher neither
    sends them again nor over-fills the workers, and the reaper keeps watching them); others are not."""
    from sqlalchemy import text

    migrations.upgrade("0004t", url=db_url)
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(ORG_ROW))
            for job_id, status, beat in (
                ("j-new", "validating_files", None),
                ("j-run", "running", "2026-12-01 11:00:00"),
                ("j-paused", "paused", "2026-12-01 11:00:00"),
                ("j-done", "succeeded", "2026-12-01 11:00:00"),
            ):
                conn.execute(text(JOB_ROW), {"id": job_id, "status": status, "beat": beat})
        migrations.upgrade("0005f", url=db_url)
        with engine.connect() as conn:
            rows = dict(conn.execute(text("SELECT id, admitted_at FROM jobs")).all())
    finally:
        engine.dispose()
    assert {job_id for job_id, at in rows.items() if at is not None} == {"j-new", "j-run"}
    assert str(rows["j-run"]).startswith("2026-12-01 11:00:00")  # its last heartbeat
    assert str(rows["j-new"]).startswith("2026-12-01 10:00:00")  # never touched: its creation
