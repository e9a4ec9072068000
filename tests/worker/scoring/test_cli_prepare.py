"""``tunegate models prepare --scoring`` builds the per-model anchor and reference caches."""

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
        bad = CliRunner().invoke(app, ["models", "prepare", "--model", "nope"])
        assert bad.exit_code == 1 and "unknown model 'nope'" in bad.output
    finally:
        reset_settings()
