"""``tunegate models prepare --aligned`` builds only what is missing (``--force`` rebuilds)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from cli import app
from tests.utils.tiny_model import tiny_align_config
from tunegate.settings import get_settings
from worker.prepare.align import prepare_aligned


def test_prepare_aligned_keeps_a_built_base(tiny_registry: Path) -> None:
    cfg = tiny_align_config(n_refusals=4, n_distill=2, distill_max_new_tokens=4)
    target = prepare_aligned(get_settings(), cfg=cfg)
    stamp = (target / "align_result.json").stat().st_mtime_ns
    res = CliRunner().invoke(app, ["models", "prepare", "--model", "smollm2-135m", "--aligned"])
    assert res.exit_code == 0, res.output
    assert "already built; --force rebuilds it" in res.output
    assert (target / "align_result.json").stat().st_mtime_ns == stamp  # not rebuilt
