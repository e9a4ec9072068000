"""The repair experiment on a finished smoke arm: the tiny model plays the aligned base (the shared tiny model
plus a low-rank difference, its unaligned source recorded), each variant's row holds the real evaluation,
the gate's decision and the task loss, and a second run skips what is done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.panel import repair, run
from benchmarks.panel.job import record_text
from benchmarks.panel.manifest import smoke_jobs
from benchmarks.panel.records import RepairRow


def _aligned_tiny(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.utils.tiny_model import aligned_copy
    from tunegate.settings import reset_settings
    from worker.ml.models import resolve_model

    aligned_copy(resolve_model("tiny").path, tmp / "aligned-tiny", modules=("q_proj", "down_proj"))
    monkeypatch.setenv("TUNEGATE_MODELS", json.dumps({"tiny": str(tmp / "aligned-tiny")}))
    reset_settings()


def test_each_variant_is_judged_like_the_arm_and_a_second_run_skips_it(
    tiny: str, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _aligned_tiny(tmp_path, monkeypatch)
    out = tmp_path / "panel"
    control = [j for j in smoke_jobs(12) if j.kind == "control"]
    assert run.run_panel(out, control, ["on"], model=tiny, data=data_dir, pool_size=40, parallel=0)
    name = control[0].name
    args = ["--out", str(out), "--jobs", name, "--variants", "restore:0.5,project:1.0", "--model", tiny]
    assert repair.main(args) == 0
    rows = {
        v: RepairRow.from_dict(json.loads(repair.row_path(out, name, "on", v).read_text()))
        for v in ("restore:0.5", "project:1.0")
    }
    for variant, row in rows.items():
        text = repair.row_path(out, name, "on", variant).read_text()
        assert text == record_text(row.to_dict())  # compact, as stored
        assert row.variant == variant and isinstance(row.summary.released, bool)
        assert row.summary.templates["chat"].tuned.n == 8
        assert row.task_loss is not None and row.task_loss.base > 0 and row.task_loss.tuned > 0
        # all linear layers adapted (2 blocks x 7); the alignment changed q_proj and down_proj only
        assert row.repair.n_layers == 14 and row.repair.n_changed == 4
    assert rows["restore:0.5"].repair.method == "restore"
    stamp = repair.row_path(out, name, "on", "restore:0.5").stat().st_mtime_ns
    assert repair.main(args) == 0
    assert repair.row_path(out, name, "on", "restore:0.5").stat().st_mtime_ns == stamp


def test_an_unknown_variant_is_refused_by_name() -> None:
    with pytest.raises(SystemExit, match="unknown repair variant 'merge:1'"):
        repair.variant_config("merge:1")
