"""Shared fixtures: an isolated TUNEGATE_HOME per test (settings, engines and the Celery app reset)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunegate.queue import reset_celery
from tunegate.settings import reset_settings


def pytest_configure(config: pytest.Config) -> None:
    """This test process counts its Prometheus metrics (the API app factory sets them up once, maybe at
    collection) into a directory of its own, never a shared ``~/.tunegate/metrics``."""
    if "TUNEGATE_METRICS_DIR" not in os.environ:
        os.environ["TUNEGATE_METRICS_DIR"] = tempfile.mkdtemp(prefix="tunegate-metrics-")
        config.add_cleanup(lambda: shutil.rmtree(os.environ.pop("TUNEGATE_METRICS_DIR"), ignore_errors=True))


def _reset_all() -> None:
    reset_settings()
    reset_celery()
    from models.db import reset_engine

    reset_engine()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama + ChatML tokenizer directory built once per session; tests only read it."""
    from tests.utils.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "m")


@pytest.fixture
def tunegate_home(tmp_path: Path) -> Iterator[Path]:
    """A fresh, empty TUNEGATE_HOME (embedded mode: SQLite database and broker inside it).

    The caches are reset again after the environment is restored, so later tests never see this home.
    """
    home = tmp_path / "tunegate-home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEGATE_HOME", str(home))
        for var in ("TUNEGATE_DATABASE_URL", "TUNEGATE_BROKER_URL"):
            mp.delenv(var, raising=False)
        _reset_all()
        yield home
    _reset_all()


@pytest.fixture
def migrated_home(tunegate_home: Path) -> Path:
    """``tunegate_home`` with the schema created by the migrations (``alembic upgrade head``)."""
    import migrations

    migrations.upgrade()
    return tunegate_home


@pytest.fixture
def tiny_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh home whose registry maps the embedded base names to a tiny model (the aligned one unbuilt)."""
    import json

    from tests.utils.tiny_model import build_tiny_model

    path = build_tiny_model(tmp_path / "tiny")
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(
        "TUNEGATE_MODELS",
        json.dumps({"smollm2-135m": str(path), "smollm2-135m-aligned": "embedded:smollm2-aligned"}),
    )
    reset_settings()
    yield path
    reset_settings()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server (moto's server mode) on 127.0.0.1 for the whole test session."""
    from tests.utils.s3 import moto_server

    with moto_server() as url:
        yield url


@pytest.fixture
def own_readers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One reader thread of this test's own for ``api.deps.read_db``'s PostgreSQL reads, so consecutive reads
    run on one thread and its kept connection: the process's pool may hold threads of earlier tests, and a
    pool's thread counts as idle only after the awaiting loop already has its result, so a next read may
    start another thread (seen under load)."""
    from api import deps

    monkeypatch.setattr(deps, "_READERS", None)
    monkeypatch.setattr(deps, "READERS", 1)
    yield
    if deps._READERS is not None:
        deps._READERS.shutdown()
