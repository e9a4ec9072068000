"""``tunegate models prepare --scoring`` builds the per-model anchor and reference caches and the base's own
evaluation (so that the first job builds none of them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from tunegate.settings import reset_settings


def test_prepare_scoring_builds_caches(
    tiny_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNEGATE_MODELS", json.dumps({"tiny": str(tiny_path)}))
    monkeypatch.setenv("TUNEGATE_DEVICE", "cpu")
    small = '{"evaluate": {"max_new_tokens": 4, "borderline_max_new_tokens": 2, "n_direction": 4}}'
    monkeypatch.setenv("TUNEGATE_STAGE_OVERRIDES", small)
    reset_settings()
    try:
        res = CliRunner().invoke(app, ["models", "prepare", "--model", "tiny", "--scoring"])
        assert res.exit_code == 0, res.output
        caches = list((tmp_path / "home" / "models").glob("*/scoring-cache/*"))
        assert {p.name.split("-")[0] for p in caches} == {"anchors", "reference"}
        ref = json.loads(next(p for p in caches if p.name.startswith("reference")).read_text())
        assert set(ref["scores"]) == {"representation", "gradient", "selfinf"}
        assert all(len(v) == 250 for v in ref["scores"].values())
        assert list((tmp_path / "home" / "models").glob("*/contrast-cache/answers-*.json"))
        assert list((tmp_path / "home" / "models" / "eval-cache").glob("*.json"))  # the base's evaluation
        bad = CliRunner().invoke(app, ["models", "prepare", "--model", "nope"])
        assert bad.exit_code == 1 and "unknown model 'nope'" in bad.output
    finally:
        reset_settings()
