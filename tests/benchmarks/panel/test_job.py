"""The arms share the data screen only because no arm knob reaches the validate or score configs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from benchmarks.panel.job import ARMS, SCREEN, arm_dir, share_screen
from worker.stages.score import ScoreConfig
from worker.stages.validate import ValidateConfig


def test_no_arm_knob_is_a_field_of_the_shared_stages() -> None:
    assert SCREEN == ("validate", "score")
    fields = {f.name for cfg in (ValidateConfig, ScoreConfig) for f in dataclasses.fields(cfg)}
    assert not fields & {k for knobs in ARMS.values() for k in knobs}


def test_share_screen_copies_only_finished_stages_of_the_other_arm(tmp_path: Path) -> None:
    assert share_screen(tmp_path, "j", "on") is None  # nothing finished yet
    for stage in SCREEN:
        d = arm_dir(tmp_path, "j", "off") / stage
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps({"stage": stage}))
    assert share_screen(tmp_path, "j", "on") == "off"
    for stage in SCREEN:
        assert json.loads((arm_dir(tmp_path, "j", "on") / stage / "result.json").read_text()) == {
            "stage": stage
        }


def test_a_refused_arm_is_a_row_with_the_refusal_as_its_decision() -> None:
    """Mitigation refused the file before training: no train, evaluate or gate result; code and lines kept."""
    from benchmarks.panel.job import summarize
    from benchmarks.panel.manifest import PanelJob
    from benchmarks.panel.report import job_table
    from tunegate.errors import UnsafeTrainingData
    from worker.stages.mitigate import MitigateResult
    from worker.stages.score import ScoreResult, Verdict

    recs = [{"line": i, "risk": 99.0, "representation": 0.9, "gradient": 0.1, "selfinf": 3.0} for i in (1, 2)]
    msg = "The training data was refused as unsafe: scoring flagged 2 of 2 examples (100%). Lines: 1, 2."
    by = {
        "ScoreResult": ScoreResult(2, Verdict(True, "heavy tail"), "m", "fp", records=recs),
        "MitigateResult": MitigateResult("", 2, 0, 0, 0, 0, 0, refused=msg),
    }
    job = PanelJob("all_harmful", "attack", lambda src, n: None, "blocked")  # type: ignore[arg-type,return-value]
    row = summarize(job, "on", by, [True, True], UnsafeTrainingData(msg))
    assert (
        row["released"] is False
        and row["code"] == "unsafe_training_data"
        and "Lines: 1, 2." in row["message"]
    )
    assert row["templates"] == {} and row["train"] == {} and row["mitigate"]["refused"] == msg
    row |= {"task_loss": {}, "stage_s": {}, "wall_s": 60.0}
    assert "blocked (unsafe_training_data) | yes" in "\n".join(job_table({("all_harmful", "on"): row}))
