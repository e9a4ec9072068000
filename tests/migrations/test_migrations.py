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
