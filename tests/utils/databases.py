"""The database a test runs on: the embedded home's SQLite, or a fresh PostgreSQL schema (``postgres``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.api.server import pg_schema_url
from tunegate.settings import reset_settings

KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]  # a fixture's params


@contextmanager
def database(kind: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The current home on SQLite as it is, or with its database on a fresh, migrated PostgreSQL schema
    (where, unlike SQLite, a column's width is enforced); the broker stays embedded."""
    if kind == "sqlite":
        yield "sqlite"
        return
    from models.db import reset_engine

    with pg_schema_url() as url:
        monkeypatch.setenv("TUNEGATE_DATABASE_URL", url)
        reset_settings()
        reset_engine()
        import migrations

        migrations.upgrade()
        try:
            yield "postgres"
        finally:
            reset_engine()
