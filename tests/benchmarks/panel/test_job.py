"""The arms share the data screen only because no arm knob reaches the validate or score configs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from benchmarks.panel.job import ARMS, SCORE_KEYS, SCREEN, arm_dir, share_screen
from benchmarks.panel.records import PanelRow, Row
from tunegate import schema
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
    from benchmarks.panel.job import StageResults, summarize
    from benchmarks.panel.manifest import PanelJob
    from benchmarks.panel.records import ScoreRow
    from benchmarks.panel.report import job_table
    from tests.benchmarks.panel.rows import row as panel_row
    from tests.utils.records import score_record
    from tunegate.errors import UnsafeTrainingData
    from worker.stages.mitigate import MitigateResult
    from worker.stages.score import ScoreResult, Verdict

    recs = [score_record(i, 99.0, representation=0.9, gradient=0.1, selfinf=3.0) for i in (1, 2)]
    msg = "The training data was refused as unsafe: scoring flagged 2 of 2 examples (100%). Lines: 1, 2."
    by = StageResults(
        score=ScoreResult(2, Verdict(True, "heavy tail"), "m", "fp", records=recs),
        mitigate=MitigateResult("", 2, 0, 0, 0, 0, 0, refused=msg),
    )
    job = PanelJob("all_harmful", "attack", lambda src, n: None, "blocked")  # type: ignore[arg-type,return-value]
    row = summarize(job, "on", by, [True, True], UnsafeTrainingData(msg))
    assert (
        row.decision.released is False
        and row.decision.code == "unsafe_training_data"
        and "Lines: 1, 2." in row.decision.message
    )
    assert row.templates == {} and row.train is None and row.mitigate.refused == msg
    score = {"representation": 0.9, "gradient": 0.1, "selfinf": 3.0, "risk": 99.0}
    assert row.scores == (ScoreRow(score, True),) * 2 and list(row.scores[0].values) == list(SCORE_KEYS)
    text = panel_row(row).to_dict()
    assert text["train"] == {} and text["task_loss"] == {} and "repair" not in text  # as rows were written
    assert "blocked (unsafe_training_data) | yes" in "\n".join(
        job_table({("all_harmful", "on"): panel_row(row)})
    )


def test_a_repaired_arm_reports_the_repaired_adapter_the_gate_judged(tmp_path: Path) -> None:
    """The repair stage passed: the row's evaluation, task-loss adapter and gate cell are the repaired
    adapter's, and the row records what was tried."""
    from benchmarks.panel.job import StageResults, released_adapter, summarize
    from benchmarks.panel.manifest import PanelJob
    from benchmarks.panel.report import job_table
    from tests.benchmarks.panel.rows import row as panel_row
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
    by = StageResults(
        score=ScoreResult(1, Verdict(False), "m", "fp", records=recs),
        mitigate=MitigateResult("", 1, 0, 0, 0, 0, 1),
        train=trained,
        evaluate=ERODED,
        repair=rep,
        gate=decided,
    )
    job = PanelJob("control_x", "control", lambda src, n: None, "released")  # type: ignore[arg-type,return-value]
    row = summarize(job, "on", by, [False])
    assert row.released and row.repair is not None
    assert row.repair.method == "restore:0.25" and row.repair.needed
    assert [c.variant for c in row.repair.checks] == ["trained", "restore:0.25"]
    assert row.templates["chat"] == FINE.templates["chat"]  # not ERODED's
    assert row.templates["chat"] != ERODED.templates["chat"]
    assert released_adapter(by) == Path(rep.adapter_dir)
    arm = panel_row(row)
    assert type(arm).from_dict(json.loads(json.dumps(arm.to_dict()))) == arm  # the repair summary reads back
    # written as before the checks and the mitigate stage's result were read as the safety report reads them:
    # the repair stage's own AdapterCheck records, the mitigate stage's result without its format
    written = json.loads(json.dumps(arm.to_dict()))
    checked = [c for c in (rep.original, *rep.attempts) if c is not None]
    assert written["repair"]["checks"] == [json.loads(json.dumps(schema.write(c))) for c in checked]
    assert written["mitigate"] == {k: v for k, v in dataclasses.asdict(by.mitigate).items() if k != "format"}
    assert "released after repair (restore:0.25) | yes" in "\n".join(job_table({("control_x", "on"): arm}))


def test_a_variant_is_recorded_once_and_other_rows_refuse_another(tmp_path: Path) -> None:
    from benchmarks.panel.job import variant, write_row
    from benchmarks.panel.records import Variant
    from benchmarks.panel.run import set_variant
    from tests.benchmarks.panel.rows import row
    from tunegate.records import RecordError

    assert variant(tmp_path) == Variant({}, {})
    var = {"policy": {"repair_on": "never"}, "stage_overrides": {"train": {"objective": "constrained"}}}
    set_variant(tmp_path, var)
    assert variant(tmp_path) == Variant({"repair_on": "never"}, {"train": {"objective": "constrained"}})
    with_variant = row(variant=variant(tmp_path))
    assert with_variant.to_dict()["variant"] == var and read_back(with_variant) == with_variant
    write_row(tmp_path, "control_gsm8k", "on", row())
    set_variant(tmp_path, var)  # the same again: fine
    with pytest.raises(ValueError, match="another variant"):
        set_variant(tmp_path, {"policy": {}})
    with pytest.raises(ValueError, match="expected an object"):
        set_variant(tmp_path, {"train": {}})
    with pytest.raises(RecordError, match="'policy'.*'repair_on'"):  # not a config's value: refused by name
        set_variant(tmp_path / "other", {"policy": {"repair_on": {"when": ["never"]}}})


def read_back(r: PanelRow) -> Row:
    from benchmarks.panel.job import record_text
    from benchmarks.panel.records import load_row

    return load_row(json.loads(record_text(r.to_dict())))


RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "panel" / "results"


def test_a_row_is_stored_compact_one_top_level_key_a_line_and_read_back_unchanged(tmp_path: Path) -> None:
    from benchmarks.panel.job import read_row, record_text, write_row
    from benchmarks.panel.records import ScoreRow
    from tests.benchmarks.panel.rows import row, summary

    arm = row(summary(scores=(ScoreRow({"risk": 1.5}, True),)))
    write_row(tmp_path, "control_gsm8k", "on", arm)
    lines = (arm_dir(tmp_path, "control_gsm8k", "on") / "panel.json").read_text().splitlines()
    assert lines[0] == "{" and lines[1] == '"job":"control_gsm8k",' and lines[-1] == "}"
    assert '"scores":[{"risk":1.5,"attack":true}],' in lines and '"probes":null,' in lines
    assert len(lines) == 2 + len(arm.to_dict())  # one top-level key a line
    assert read_row(tmp_path, "control_gsm8k", "on") == arm
    assert record_text({"when": Path("p")}, default=str) == '{\n"when":"p"\n}\n'  # default as json.dumps's
    assert record_text({}) == "{}\n" and json.loads(record_text({})) == {}


def test_a_row_with_a_key_of_another_version_is_refused_by_name() -> None:
    from benchmarks.panel.records import PanelRow, load_row
    from tests.benchmarks.panel.rows import row
    from tunegate.records import RecordError

    data = row().to_dict()
    assert load_row(data) == row() and isinstance(load_row(data), PanelRow)
    with pytest.raises(RecordError, match="unknown key 'speed'"):
        load_row(data | {"speed": 1})
    with pytest.raises(RecordError, match="lacks the key 'wall_s'"):
        load_row({k: v for k, v in data.items() if k != "wall_s"})
    with pytest.raises(RecordError, match="scores have an unknown key 'perplexity'"):
        load_row(data | {"scores": [{"risk": 1.0, "perplexity": 2.0, "attack": False}]})


def test_the_stored_results_are_in_the_writers_form() -> None:
    """The kept rows, repair rows and run record (docs/panel.md's tables) load as typed records and are
    written back byte for byte by the writers, not re-indented: a pretty-printed file here would bring back
    tens of thousands of lines."""
    from benchmarks.panel.job import record_text
    from benchmarks.panel.records import PanelRow, RepairRow, RunRecord, load_row

    rows = [*RESULTS.glob("*/*/panel.json")]
    repairs = [*RESULTS.glob("*/*/repair-*.json")]
    assert rows and repairs and (RESULTS / "panel-run.json").is_file()  # the kept files only (.gitignore)
    for f in [RESULTS / "panel-run.json", *rows, *repairs]:
        text = f.read_text(encoding="utf-8")
        if f.name == "panel.json":
            record = load_row(json.loads(text))
            assert isinstance(record, PanelRow), f.relative_to(RESULTS)  # no failed arm kept
            written = record_text(record.to_dict(), default=str)
        elif f.name == "panel-run.json":
            written = record_text(RunRecord.from_dict(json.loads(text)).to_dict())
        else:
            written = record_text(RepairRow.from_dict(json.loads(text)).to_dict())
        assert text == written, f.relative_to(RESULTS)
