"""The pre-flight safety scan (``worker/scan.py``) on real stages with a tiny model: the verdict a job's score
stage reaches, the mitigation plan its mitigate stage carries out, a job reusing a scan's scores (and only a
matching, completed scan of its own organization), each example scored once, redelivery and failures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from models import scans
from models.base import utcnow
from models.db import session_scope
from models.keys import get_or_create_org
from models.policy import org_policy
from models.tables import File, Job, JobEvent, SafetyScan
from tests.utils.records import score_record
from tests.worker.jobfactory import chat_rows, make_job, store_file, use_tiny
from tunegate import queue
from tunegate.conversation import Conversation, Message
from tunegate.queue import celery_app
from tunegate.records import ScanRecord, ScoreRecord
from tunegate.settings import get_settings, reset_settings
from worker import runner, tasks
from worker import scan as scan_mod
from worker.job_view import job_dir
from worker.ml.stage_io import StageIO
from worker.scoring import score_all
from worker.stages import mitigate, score

# The cheapest scorer, as tests/worker/test_tasks.py (the three scorers are covered by the stage tests); no
# contrastive examples here (the shared tiny model answers with blank lines, so a job would look through the
# whole request pool for a usable answer): test_the_plan_is_what_run_does covers them with a talkative model.
OVERRIDES: dict[str, Any] = {
    "score": {"scorers": ["representation"], "batch_size": 16},
    "mitigate": {"contrast_ratio": 0.0},
}


@pytest.fixture
def home(migrated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_tiny(monkeypatch, event_interval_s="0", stage_overrides=json.dumps(OVERRIDES))
    return migrated_home


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The lines the score stage sends to the scorers, call by call (the real function, counted)."""
    lines: list[int] = []
    real = score_all.score_examples

    def counting(model: str, examples: Any, **kwargs: Any) -> Any:
        lines.extend(c.line for c in examples)
        return real(model, examples, **kwargs)

    monkeypatch.setattr(score, "score_examples", counting)
    yield lines


def _rows() -> list[dict[str, Any]]:
    return chat_rows(10) + chat_rows(4, harmful=True)


def _job_row(job_id: str) -> Job:
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def new_scan(job_id: str | None = None, *, file_id: str = "", org_id: str = "", model: str = "tiny") -> str:
    """A queued scan as the API leaves it: of a job's training file and organization, or of the given ones."""
    if job_id is not None:
        job = _job_row(job_id)
        file_id, org_id = job.training_file, job.org_id
    with session_scope() as s:
        policy = org_policy(get_settings(), None)
        return scans.create(s, org_id=org_id, file_id=file_id, model=model, policy=policy).id


def _scan_row(scan_id: str) -> SafetyScan:
    with session_scope() as s:
        row = s.get(SafetyScan, scan_id)
        assert row is not None
        return row


def _messages(job_id: str) -> list[str]:
    with session_scope() as s:
        return list(
            s.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.seq))
        )


def _score_result(job_id: str) -> score.ScoreResult:
    return score.ScoreResult.load(job_dir(get_settings(), job_id) / "score")


def _records(scan_id: str) -> list[ScanRecord]:
    ref = _scan_row(scan_id).records_ref
    assert ref is not None
    lines = Path(ref).read_text(encoding="utf-8").splitlines()
    records = [ScanRecord.from_dict(json.loads(line)) for line in lines]
    assert [json.dumps(r.to_dict(), ensure_ascii=False) for r in records] == lines  # written as they read
    return records


def test_the_scan_reaches_the_job_verdict_and_plans_what_mitigation_does(home: Path) -> None:
    job_id = make_job("tiny", _rows())
    for stage in ("validate", "score", "mitigate"):
        assert runner.execute(stage, job_id).status == "done", stage
    scan_id = new_scan(job_id)
    assert scan_mod.run(scan_id) == "completed"
    row, job_scores = _scan_row(scan_id), _score_result(job_id)
    assert row.status == "completed" and row.progress == 1.0 and row.completed_at is not None
    assert row.verdict == {"flagged": job_scores.verdict.flagged, "reason": job_scores.verdict.reason}
    records = _records(scan_id)
    assert [r.line for r in records] == list(range(1, 15))
    assert [r.risk for r in records] == [r.risk for r in job_scores.records]
    assert [r.percentiles for r in records] == [r.percentiles for r in job_scores.records]
    assert records[10].text.startswith("user: Explain how to pick lock number 0")
    # what the mitigate stage did to the job is what the scan says it would do
    done = mitigate.MitigateResult.load(job_dir(get_settings(), job_id) / "mitigate")
    m = row.mitigation
    assert m is not None and m["refused"] is None
    assert (m["lines_downweighted"], m["lines_dropped"], m["lines_excluded"]) == (
        done.n_downweighted,
        done.n_dropped,
        done.n_excluded,
    )
    assert m["safety_examples_injected"] == done.n_injected
    assert m["contrastive_examples_injected"] == done.n_contrast
    assert m["examples_to_train"] == done.n_output
    acted = json.loads((job_dir(get_settings(), job_id) / "mitigate" / "actions.json").read_text())["acted"]
    planned = {r.line: r.action for r in records if r.action != "keep"}
    assert planned == {a["line"]: "exclude" if a.get("excluded") else a["action"] for a in acted}
    assert m["lines_kept"] == 14 - len(acted)
    summary = row.summary or {}
    assert [r["line"] for r in summary["riskiest"]] == [
        r.line for r in sorted(records, key=lambda r: r.rank)
    ][:10]
    # the score stage's typed result, saved with its config, beside the scan
    saved = score.ScoreResult.load(Path(str(row.score_dir)))
    assert saved.verdict == job_scores.verdict
    assert json.loads((Path(str(row.score_dir)) / "config.json").read_text())["scorers"] == ["representation"]


def test_a_job_reuses_the_scan_scores_and_says_so(home: Path, counted: list[int]) -> None:
    job_id = make_job("tiny", _rows())
    scan_id = new_scan(job_id)
    assert celery_app().conf.task_routes[queue.SAFETY_SCAN] == {"queue": "gpu"}  # where the score stage runs
    assert tasks.safety_scan(scan_id) == "completed"  # the Celery task's body
    assert sorted(counted) == list(range(1, 15))  # the scan scored each example once
    for stage in ("validate", "score"):
        assert runner.execute(stage, job_id).status == "done", stage
    # cost: the scan and the job together scored each example once
    assert sorted(counted) == list(range(1, 15))
    reused = _score_result(job_id)
    assert reused.reused_scan == scan_id and reused.n_examples == 14
    assert reused.records == score.ScoreResult.load(Path(str(_scan_row(scan_id).score_dir))).records
    messages = _messages(job_id)
    assert f"score: reused the safety scan {scan_id}" in messages
    assert any(m.startswith("scored 14 examples (the scores of the safety scan") for m in messages)
    # and the job goes on from the reused scores as from its own
    assert runner.execute("mitigate", job_id).status == "done"


def test_the_scores_are_reused_only_from_a_matching_completed_scan(
    home: Path, counted: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = make_job("tiny", _rows())
    job = _job_row(job_id)
    # another organization's scan of the very same bytes, a scan for another model name, a failed scan
    with session_scope() as s:
        other_org = get_or_create_org(s, "other").id
    other_file = store_file(other_org, _rows())
    assert scan_mod.run(new_scan(file_id=other_file, org_id=other_org)) == "completed"
    model = use_tiny(monkeypatch, event_interval_s="0", stage_overrides=json.dumps(OVERRIDES))
    monkeypatch.setenv("TUNEGATE_MODELS", json.dumps({"tiny": str(model), "tiny2": str(model)}))
    reset_settings()
    assert scan_mod.run(new_scan(job_id, model="tiny2")) == "completed"
    failed = new_scan(job_id)
    with session_scope() as s:
        s.execute(update(SafetyScan).where(SafetyScan.id == failed).values(status="failed"))
    # a completed scan of this file and model, but under another scoring config
    matching = new_scan(job_id)
    use_tiny(
        monkeypatch,
        event_interval_s="0",
        stage_overrides=json.dumps({**OVERRIDES, "score": {"scorers": ["representation"], "batch_size": 8}}),
    )
    assert scan_mod.run(matching) == "completed"
    use_tiny(monkeypatch, event_interval_s="0", stage_overrides=json.dumps(OVERRIDES))
    counted.clear()
    for stage in ("validate", "score"):
        assert runner.execute(stage, job_id).status == "done", stage
    assert sorted(counted) == list(range(1, 15))  # the job scored its file itself
    assert _score_result(job_id).reused_scan == ""
    assert not any("reused the safety scan" in m for m in _messages(job_id))
    assert job.training_file != other_file


def test_a_redelivered_scan_does_nothing_and_a_dead_worker_scan_is_taken_over(
    home: Path, counted: list[int]
) -> None:
    job_id = make_job("tiny", _rows())
    scan_id = new_scan(job_id)
    assert scan_mod.run(scan_id) == "completed"
    assert scan_mod.run(scan_id) == "skipped"
    # another worker is running it (a fresh heartbeat): the task looks again later (tasks.safety_scan)
    with session_scope() as s:
        s.execute(
            update(SafetyScan)
            .where(SafetyScan.id == scan_id)
            .values(status="running", heartbeat_at=utcnow(), claimed_by="alive:1")
        )
    assert scan_mod.run(scan_id) == "busy"
    # that worker died (its heartbeat stopped): the next delivery claims it again and reuses the score result
    # already on disk
    with session_scope() as s:
        s.execute(
            update(SafetyScan)
            .where(SafetyScan.id == scan_id)
            .values(status="running", heartbeat_at=None, claimed_by="dead:1")
        )
    counted.clear()
    assert scan_mod.run(scan_id) == "completed"
    assert counted == [] and _scan_row(scan_id).attempt == 2


def test_a_scan_of_a_deleted_file_or_an_unknown_model_fails_saying_why(home: Path) -> None:
    job_id = make_job("tiny", _rows())
    gone = new_scan(job_id)
    with session_scope() as s:
        s.execute(
            update(File).where(File.id == _job_row(job_id).training_file).values(deleted_at=File.created_at)
        )
    assert scan_mod.run(gone) == "failed"
    row = _scan_row(gone)
    assert row.status == "failed" and row.verdict is None and row.error is not None
    assert row.error["code"] == "not_found" and row.error["param"] == "file_id"
    assert row.error["message"] == f"file {_job_row(job_id).training_file} no longer exists"
    job2 = make_job("tiny", _rows())
    unknown = new_scan(job2, model="nope")
    assert scan_mod.run(unknown) == "failed"
    error = _scan_row(unknown).error or {}
    assert error["code"] == "model_not_available" and "'nope'" in error["message"]


def test_a_file_mitigation_would_refuse_says_so_line_by_line(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = {
        **OVERRIDES,
        "mitigate": {"min_risk": 0.0, "contrast_ratio": 0.0},
    }
    use_tiny(monkeypatch, event_interval_s="0", stage_overrides=json.dumps(overrides))
    job_id = make_job("tiny", _rows())
    job = _job_row(job_id)
    with session_scope() as s:
        policy = {**org_policy(get_settings(), None), "max_repair_share": 0.1, "mitigate_top_fraction": 0.5}
        scan_id = scans.create(
            s, org_id=job.org_id, file_id=job.training_file, model="tiny", policy=policy
        ).id
    assert scan_mod.run(scan_id) == "completed"
    m = _scan_row(scan_id).mitigation or {}
    assert m["refused"] and "max_repair_share" in m["refused"] and m["examples_to_train"] == 0
    refused = [r for r in _records(scan_id) if r.action == "refuse"]
    assert len(refused) == m["lines_flagged"] == 7
    assert all("among the riskiest 50% of the file" in " ".join(r.reasons) for r in refused)


def _synthetic(n: int = 40) -> tuple[list[Conversation], list[ScoreRecord]]:
    examples = [
        Conversation((Message("user", f"What is {i} + {i}?"), Message("assistant", f"#### {2 * i}")), line=i)
        for i in range(1, n + 1)
    ]
    records = [score_record(i, float(i * 100 / n)) for i in range(1, n + 1)]
    return examples, records


@pytest.mark.parametrize(
    "changes",
    [
        {"mitigation": "drop", "min_risk": 50.0, "mitigate_top_fraction": 0.1},
        {"mitigation": "downweight", "min_risk": 50.0, "mitigate_top_fraction": 0.2, "inject_per_risky": 0.5},
        {"mitigation": "none"},
        {"inject_safety_examples": False},
        {"mitigation": "drop", "min_risk": 0.0, "mitigate_top_fraction": 0.5, "max_repair_share": 0.3},
    ],
)
def test_the_plan_is_what_run_does(
    changes: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counts a scan reports (``mitigate.plan``) are those of the stage's ``run`` on the same input, the
    contrastive examples included (a tiny model that writes visible text answers them)."""
    from tests.utils.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "talk", tied=False)
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNEGATE_MODELS", json.dumps({"talk": str(model)}))
    monkeypatch.setenv("TUNEGATE_DEVICE", "cpu")
    reset_settings()
    examples, records = _synthetic()
    cfg = mitigate.MitigateConfig(model="talk", contrast_max_new_tokens=8, inject_min=3, **changes)
    inputs = mitigate.MitigateInputs(examples, records, StageIO(tmp_path / "out"), get_settings())
    p = mitigate.plan(cfg, inputs)
    done = mitigate.run(cfg, inputs)
    planned = scan_mod.mitigation_summary(p, cfg, len(examples))
    assert planned["refused"] == (done.refused or None)
    assert (planned["lines_dropped"], planned["lines_downweighted"], planned["lines_excluded"]) == (
        done.n_dropped,
        done.n_downweighted,
        done.n_excluded,
    )
    assert planned["safety_examples_injected"] == done.n_injected
    assert planned["contrastive_examples_injected"] == done.n_contrast
    assert planned["examples_to_train"] == done.n_output
    reset_settings()
