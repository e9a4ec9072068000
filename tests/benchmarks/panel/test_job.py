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
