"""The arms share the data screen only because no arm knob reaches the validate or score configs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from benchmarks.panel.job import ARMS, SCORE_KEYS, SCREEN, arm_dir, share_screen
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
    from tests.utils.records import score_record
    from tunegate.errors import UnsafeTrainingData
    from worker.stages.mitigate import MitigateResult
    from worker.stages.score import ScoreResult, Verdict

    recs = [score_record(i, 99.0, representation=0.9, gradient=0.1, selfinf=3.0) for i in (1, 2)]
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
    score = {"representation": 0.9, "gradient": 0.1, "selfinf": 3.0, "risk": 99.0}
    assert row["scores"] == [score | {"attack": True}] * 2 and list(row["scores"][0])[:-1] == list(SCORE_KEYS)
    row |= {"task_loss": {}, "stage_s": {}, "wall_s": 60.0}
    assert "blocked (unsafe_training_data) | yes" in "\n".join(job_table({("all_harmful", "on"): row}))


def test_a_repaired_arm_reports_the_repaired_adapter_the_gate_judged(tmp_path: Path) -> None:
    """The repair stage passed: the row's evaluation, task-loss adapter and gate cell are the repaired
    adapter's, and the row records what was tried."""
    from benchmarks.panel.job import released_adapter, summarize
    from benchmarks.panel.manifest import PanelJob
    from benchmarks.panel.report import job_table
    from tests.worker.stages.test_repair import ERODED, FINE, _repaired
    from worker.ml.stage_io import StageIO
    from worker.stages import gate
    from worker.stages.gate import GateConfig, GateInputs
    from worker.stages.mitigate import MitigateResult
    from worker.stages.score import ScoreResult, Verdict
    from worker.stages.train import TrainResult

    rep = _repaired(tmp_path)
    trained = TrainResult(str(tmp_path / "train" / "adapter"), 10, 1, 1, 0, 12, "fp")
    decided = gate.run(
        GateConfig(), GateInputs(FINE, None, StageIO(tmp_path / "gate"), training=trained, repair=rep)
    )
    from tests.utils.records import score_record

    recs = [score_record(1, 10.0, representation=0.1, gradient=0.1, selfinf=0.1)]
    by = {
        "ScoreResult": ScoreResult(1, Verdict(False), "m", "fp", records=recs),
        "EvalResult": ERODED,
        "TrainResult": trained,
        "RepairResult": rep,
        "GateResult": decided,
        "MitigateResult": MitigateResult("", 1, 0, 0, 0, 0, 1),
    }
    job = PanelJob("control_x", "control", lambda src, n: None, "released")  # type: ignore[arg-type,return-value]
    row = summarize(job, "on", by, [False])
    assert row["released"] and row["repair"]["method"] == "restore:0.25" and row["repair"]["needed"]
    assert [c["variant"] for c in row["repair"]["checks"]] == ["trained", "restore:0.25"]
    assert row["templates"]["chat"] == dataclasses.asdict(FINE.templates["chat"])  # not ERODED's
    assert row["templates"]["chat"] != dataclasses.asdict(ERODED.templates["chat"])
    assert released_adapter(by) == Path(rep.adapter_dir)
    row |= {"task_loss": {}, "stage_s": {}, "wall_s": 60.0}
    assert "released after repair (restore:0.25) | yes" in "\n".join(job_table({("control_x", "on"): row}))


def test_a_variant_is_recorded_once_and_other_rows_refuse_another(tmp_path: Path) -> None:
    from benchmarks.panel.job import variant, write_row
    from benchmarks.panel.run import set_variant

    assert variant(tmp_path) == {"policy": {}, "stage_overrides": {}}
    var = {"policy": {"repair_on": "never"}, "stage_overrides": {"train": {"objective": "constrained"}}}
    set_variant(tmp_path, var)
    assert variant(tmp_path) == var
    write_row(tmp_path, "control_gsm8k", "on", {"job": "control_gsm8k"})
    set_variant(tmp_path, var)  # the same again: fine
    with pytest.raises(ValueError, match="another variant"):
        set_variant(tmp_path, {"policy": {}})
    with pytest.raises(ValueError, match="expected an object"):
        set_variant(tmp_path, {"train": {}})


RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "panel" / "results"


def test_a_row_is_stored_compact_one_top_level_key_a_line_and_read_back_unchanged(tmp_path: Path) -> None:
    from benchmarks.panel.job import read_row, record_text, write_row

    row = {"job": "j", "scores": [{"risk": 1.5, "attack": True}], "probes": None, "when": Path("p")}
    write_row(tmp_path, "j", "on", row)
    text = (arm_dir(tmp_path, "j", "on") / "panel.json").read_text()
    assert text == '{\n"job":"j",\n"scores":[{"risk":1.5,"attack":true}],\n"probes":null,\n"when":"p"\n}\n'
    assert read_row(tmp_path, "j", "on") == {**row, "when": "p"}  # default=str, as before
    assert record_text({}) == "{}\n" and json.loads(record_text({})) == {}


def test_the_stored_results_are_in_the_writers_form() -> None:
    """The kept rows, repair rows and run record (docs/panel.md's tables) are written as the writers write
    them, not re-indented: a pretty-printed file here would bring back tens of thousands of lines."""
    from benchmarks.panel.job import record_text

    files = [RESULTS / "panel-run.json", *RESULTS.glob("*/*/panel.json"), *RESULTS.glob("*/*/repair-*.json")]
    assert len(files) > 1 and files[0].is_file()  # the kept files only (.gitignore), not a run's stages
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert text == record_text(json.loads(text)), f.relative_to(RESULTS)
