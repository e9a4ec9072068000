"""Fixtures of the models' tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.databases import KINDS, database


@pytest.fixture(params=KINDS)
def any_db(
    request: pytest.FixtureRequest, migrated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """``migrated_home`` on SQLite, or with its database on a fresh PostgreSQL schema."""
    with database(request.param, monkeypatch) as kind:
        yield kind
