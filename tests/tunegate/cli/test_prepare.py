"""``tunegate models prepare --aligned`` builds only what is missing (``--force`` rebuilds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.utils.tiny_model import build_tiny_model, tiny_align_config
from tunegate.cli import app
from tunegate.settings import get_settings, reset_settings
from worker.stages.align import prepare_aligned


def test_prepare_aligned_keeps_a_built_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = build_tiny_model(tmp_path / "tiny")
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(
        "TUNEGATE_MODELS",
        json.dumps({"smollm2-135m": str(path), "smollm2-135m-aligned": "embedded:smollm2-aligned"}),
    )
    reset_settings()
    try:
        cfg = tiny_align_config(n_refusals=4, n_distill=2, distill_max_new_tokens=4)
        target = prepare_aligned(get_settings(), progress=False, cfg=cfg)
        stamp = (target / "align_result.json").stat().st_mtime_ns
        res = CliRunner().invoke(app, ["models", "prepare", "--model", "smollm2-135m", "--aligned"])
        assert res.exit_code == 0, res.output
        assert "already built; --force rebuilds it" in res.output
        assert (target / "align_result.json").stat().st_mtime_ns == stamp  # not rebuilt
    finally:
        reset_settings()
