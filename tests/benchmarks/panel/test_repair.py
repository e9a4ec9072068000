"""The repair experiment on a finished smoke arm, through the pipeline's repair and gate stages: the tiny
model plays the aligned base (the shared tiny model plus a low-rank difference, its unaligned source
recorded), the results directory's variant makes the gate block the arm for erosion (``gate_delta`` 0), each
variant's row holds the repaired adapter's real evaluation, the gate's decision and the task loss, and a
second run skips what is done."""

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
    # every increase's bound is above 0: the arm is blocked for erosion; the arm's own repair tries nothing
    out.mkdir()
    arm = {"policy": {"gate_delta": 0.0}, "stage_overrides": {"repair": {"max_evaluations": 0}}}
    run.set_variant(out, arm)
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
        assert row.variant == variant and not row.summary.released
        assert row.summary.code == "safety_eval_failed" and row.summary.repair is None
        assert row.summary.templates["chat"].tuned.n == 8
        # the repaired adapter's evaluation, by the repair stage, in the variant's directory
        tried = json.loads((repair.work_dir(out, name, "on", variant) / "repair" / "result.json").read_text())
        assert [a["variant"] for a in tried["attempts"]] == [variant] and tried["repair_on"] == "always"
        assert row.task_loss is not None and row.task_loss.base > 0 and row.task_loss.tuned > 0
        # all linear layers adapted (2 blocks x 7); the alignment changed q_proj and down_proj only
        assert row.repair is not None and row.repair.n_layers == 14 and row.repair.n_changed == 4
    assert rows["restore:0.5"].repair is not None and rows["restore:0.5"].repair.method == "restore"
    stamp = repair.row_path(out, name, "on", "restore:0.5").stat().st_mtime_ns
    assert repair.main(args) == 0
    assert repair.row_path(out, name, "on", "restore:0.5").stat().st_mtime_ns == stamp


def test_an_unknown_variant_is_refused_by_name_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown repair variant 'melt:1'.*restore, merge, project"):
        repair.main(["--out", str(tmp_path), "--jobs", "control_json", "--variants", "restore:0.5,melt:1"])
    assert not any(tmp_path.iterdir())


def test_a_variant_on_an_arm_without_its_stages_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no finished validate stage"):
        repair.link_finished(tmp_path / "control_json" / "on", tmp_path / "work")
