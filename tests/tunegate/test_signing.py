"""The console's signing secret: set in distributed mode, else made once in the home, private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tunegate.errors import InvalidConfig
from tunegate.settings import Settings
from tunegate.signing import console_secret


def test_embedded_secret_is_generated_once_private(tmp_path: Path) -> None:
    # explicit: the environment of other tests (a server fixture's database URL) must not leak in
    settings = Settings(home=tmp_path / "home", database_url=None, broker_url=None, console_secret=None)
    first = console_secret(settings)
    assert len(first) >= 32 and console_secret(settings) == first
    path = tmp_path / "home" / "console_secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert console_secret(Settings(home=tmp_path / "home", console_secret="set")) == b"set"


def test_distributed_mode_needs_the_setting(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, database_url="postgresql+psycopg://x@127.0.0.1/y")
    with pytest.raises(InvalidConfig, match="TUNEGATE_CONSOLE_SECRET"):
        console_secret(settings)
