"""Alembic migrations: the only way tunegate's schema is created or changed.

``upgrade()`` / ``downgrade()`` run Alembic programmatically on the configured database; the script location
is this package's directory, so it works from a source checkout and from an installed wheel alike.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from models.db import normalize_url
from tunegate.settings import get_settings

HERE = Path(__file__).resolve().parent


def alembic_config(url: str | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    # '%' must be doubled for ConfigParser interpolation (URL-encoded options contain it).
    cfg.set_main_option("sqlalchemy.url", normalize_url(url or get_settings().db_url).replace("%", "%%"))
    return cfg


def upgrade(revision: str = "head", url: str | None = None) -> None:
    if url is None and get_settings().db_url.startswith("sqlite"):
        get_settings().home_dir.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), revision)


def downgrade(revision: str = "base", url: str | None = None) -> None:
    command.downgrade(alembic_config(url), revision)
