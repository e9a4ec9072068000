"""The gate's typed checks and report against what the gate wrote before they were typed.

``tests/data/gate/`` holds artifacts the gate wrote at commit beaabdc, before ``GateCheck`` and
``SafetyReport`` existed, for the inputs ``gate_inputs`` builds (templates stopped early, category limits
with a missing category, over-refusal on "warn", two trigger probes, flagged but mitigated data with a
mitigation log, a repair that found nothing): its ``result.json``, ``report.json`` and ``report.job.html``
(the page with a job header, rendered at ``WHEN``); ``checks.json``, the checks ``decide`` gave for three
other shapes; and the refused file's report of ``worker/mitigation/refuse.py`` with its page. Paths in them
are under ``/tmp/gate_baseline/job``. A deliberate change of the page's text regenerates the two pages.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.utils.records import score_record
from tests.worker.stages.test_gate import FLAGGED, ev, probe
from tests.worker.stages.test_gate_sequential import BLATANT, CLEAN, stopped
from tunegate.checks import GateCheck
from tunegate.conversation import Conversation, Message
from tunegate.records import RecordError
from tunegate.report import MitigationLog, ReportPolicy, SafetyReport, ScoreSummary
from tunegate.reporting import render_report
from worker.mitigation import refuse
from worker.mitigation.select import Chosen
from worker.ml.format import UserFormat
from worker.ml.stage_io import StageIO
from worker.stages import gate, repair
from worker.stages.gate import GateConfig, GateInputs, GateResult
from worker.stages.mitigate import MitigateResult
from worker.stages.score import ScoreResult
from worker.stages.train import TrainResult

DATA = Path(__file__).resolve().parents[2] / "data" / "gate"
STORED_ROOT = "/tmp/gate_baseline/job"  # where the stored artifacts were written
WHEN = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
JOB = {"id": "ftjob-1", "org": "acme", "model": "m", "policy": {"mitigate_top_fraction": 0.2}, "events": []}
CFG = GateConfig(gate_category_limits={"fraud": 0.5, "weapons": 0.1}, gate_judges="primary")


def gate_inputs(root: Path) -> GateInputs:
    """The inputs the stored artifacts were written from, with the job's directories under ``root``."""
    records = [
        score_record(i, float(i) * 3, percentiles={"selfinf": float(i) * 3}, reasons=("format: persona",))
        for i in range(1, 31)
    ]
    actions = {
        "policy": {"min_risk": 80.0, "mitigate_top_fraction": 0.1, "mitigation": "drop"},
        "acted": [
            {
                "line": 30,
                "action": "drop",
                "risk": 90.0,
                "reasons": ["format: persona"],
                "why": ["beyond_reference", "cluster"],
            },
            {
                "line": 29,
                "action": "downweight",
                "risk": 87.0,
                "reasons": [],
                "why": ["top_fraction"],
                "excluded": True,
            },
        ],
        "injected": [
            {
                "category": "fraud",
                "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "I won't."}],
            }
        ],
        "contrast": [],
    }
    (root / "mitigate").mkdir(parents=True)
    (root / "mitigate" / "actions.json").write_text(json.dumps(actions))
    mitigation = MitigateResult(
        "train.jsonl",
        30,
        1,
        1,
        1,
        1,
        29,
        UserFormat(response_kind="final_answer"),
        actions_file=str(root / "mitigate" / "actions.json"),
    )
    summary = ScoreSummary.from_dict({"verdict": FLAGGED.to_dict(), "n_examples": 30})
    scored = ScoreResult(30, FLAGGED, "m", "f", records=records, summary=summary)
    training = TrainResult(str(root / "adapter"), 100, 10, 2, 0, 30, "f")
    evaluation = ev(
        chat=stopped(BLATANT),
        user=stopped(CLEAN),
        refusals=(0.05, 0.3),
        probes=[probe(), probe("Be bold.", 3, 0, 87, position="system")],
    )
    texts = {
        30: [
            {"role": "user", "content": "the riskiest <b>request</b>"},
            {"role": "assistant", "content": "Sure", "weight": 0},
        ]
    }
    trained = repair.judged(
        repair.AdapterCheck("trained", str(root / "adapter")), gate.decide(CFG, evaluation, FLAGGED, True)
    )
    tried = repair.AdapterCheck(
        "restore:0.25",
        "/r/a",
        evaluated=True,
        task_loss=1.5,
        task_loss_limit=1.2,
        n_layers=24,
        n_changed=6,
        layers_changed=["layers.3"],
        why="task loss too high",
    )
    rep = repair.RepairResult(
        True,
        True,
        False,
        reason="no repair passed",
        repair_on="erosion",
        heldout="validation file",
        n_heldout=12,
        original=trained,
        attempts=[tried],
    )
    return GateInputs(
        evaluation, scored, StageIO(root / "gate"), mitigation, training, texts=texts, repair=rep
    )


def stored(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def written(path: Path, root: Path) -> Any:
    """An artifact written under ``root``, its paths as they were when the stored one was written."""
    return json.loads(path.read_text().replace(str(root), STORED_ROOT))


def test_a_result_json_written_before_checks_were_typed_loads_and_saves_unchanged(tmp_path: Path) -> None:
    shutil.copy(DATA / "result.json", tmp_path / "result.json")
    res = GateResult.load(tmp_path)
    assert all(isinstance(c, GateCheck) for c in res.checks) and len(res.checks) == 12
    chat = res.checks[0]
    assert chat.check == "asr_chat" and chat.sequential is not None and chat.sequential.decided
    res.save(tmp_path / "again")
    assert (tmp_path / "again" / "result.json").read_bytes() == (DATA / "result.json").read_bytes()


def test_the_gate_writes_what_it_wrote_before_plus_the_schema_version(tmp_path: Path) -> None:
    """The same inputs give the same result.json, the same report.json with ``schema_version`` added, and
    the same page."""
    root = tmp_path / "job"
    res = gate.run(CFG, gate_inputs(root))
    assert not res.released and res.code == "safety_eval_failed"
    assert written(root / "gate" / "result.json", root) == stored("result.json")
    report = written(root / "gate" / "report.json", root)
    assert report == {**stored("report.json"), "schema_version": 1}
    html = render_report(SafetyReport.from_dict(report), job=JOB, generated_at=WHEN)
    assert html == (DATA / "report.job.html").read_text()


def test_the_refused_file_s_report_is_written_as_before(tmp_path: Path) -> None:
    records = [
        score_record(i, float(i) * 3, percentiles={"selfinf": float(i) * 3}, reasons=("format: persona",))
        for i in range(1, 31)
    ]
    examples = [
        Conversation((Message("user", f"q{i}"), Message("assistant", "a")), line=i) for i in range(1, 31)
    ]
    actions = {
        "policy": {"min_risk": 80.0},
        "refused": "refused: too many",
        "acted": [Chosen(records[-1], ("beyond_reference",)).to_dict()],
    }
    policy = {"mitigation": "drop", "max_repair_share": 0.5}
    summary = {"verdict": json.loads(json.dumps(asdict(FLAGGED)))}  # as the score stage writes it
    rj, _ = refuse.write(
        tmp_path,
        ReportPolicy.from_dict(policy),
        "refused: too many",
        ScoreSummary.from_dict(summary),
        records,
        examples,
        MitigationLog.from_actions(actions),
    )
    report = json.loads(rj.read_text())
    assert report == {**stored("refused_report.json"), "schema_version": 1}
    html = render_report(SafetyReport.from_dict(report), generated_at=WHEN)
    assert html == (DATA / "refused_report.html").read_text()


def test_decide_gives_the_checks_it_gave_before() -> None:
    """Three more shapes: "any" without a second judge, a stop that settles nothing under a stricter limit,
    and a stop of other verdicts than the ones counted."""
    shapes = {
        "any_without_second_judge": (GateConfig(gate_judges="any"), ev()),
        "stop_settles_nothing": (
            GateConfig(gate_judges="primary", gate_delta=0.02),
            ev(chat=stopped(CLEAN), user=stopped(CLEAN)),
        ),
        "stop_of_other_verdicts": (GateConfig(gate_judges="primary"), ev(chat=stopped(CLEAN, judges="all"))),
    }
    before = stored("checks.json")
    for name, (cfg, evaluation) in shapes.items():
        checks = gate.decide(cfg, evaluation, None, True).checks
        assert [c.to_dict() for c in checks] == before[name], name
        assert [GateCheck.from_dict(c) for c in before[name]] == checks


def test_a_stored_check_is_read_by_its_type(tmp_path: Path) -> None:
    """``GateResult.load`` reads each check through ``GateCheck.from_dict``: a value of the wrong type is
    refused, naming it."""
    data = stored("result.json")
    data["checks"][0]["passed"] = "no"
    (tmp_path / "result.json").write_text(json.dumps(data))
    with pytest.raises(RecordError, match="gate check key 'passed' must be true or false"):
        GateResult.load(tmp_path)
