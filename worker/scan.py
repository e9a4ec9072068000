"""The pre-flight safety scan (``POST /v1/files/{id}/safety_scan``): what the gate would do with a file, line
by line, before anyone pays for training.

It runs on the scoring queue (``gpu``, ``tunegate.queue.SAFETY_SCAN``) and builds both stages exactly as a
job's worker builds them: a ``JobView`` of the scan (the file, the base model, the organization's effective
policy) in a ``StageContext`` whose directory is the scan's, then

- the score stage's own ``configure``/``build`` and ``run`` (its scoring cache: anchor features and
  reference distributions per model fingerprint, ``worker/scoring``), so the verdict is the one a job's score
  stage reaches on that file and model;
- the mitigate stage's ``build`` and ``plan``: which lines it would keep, down-weight or drop (or whether it
  would refuse the file) and how many examples it would inject, without generating them or training.

    <jobs_path>/safety-scans/<scan id>/score/          config.json, scores.jsonl, summary.json, result.json
                                      records.jsonl    one record a line: risk, reasons, text, action
                                      mitigation.json  what the mitigate stage would do

A job on the same file and model then reuses the scan's scores (``worker/stages/score.py``,
``reusable_scan``) when its ``scores_key`` is the scan's. ``run`` is idempotent: the scan is claimed with a
compare-and-set (``models/scans.py``); a redelivered message finds it running (and does nothing) or, after
its worker died, claims it again and reuses a finished score result.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TypedDict

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from models import scans
from models.db import session_scope
from models.records import ScanVerdict
from models.tables import File, Organization, SafetyScan
from tunegate import queue
from tunegate.artifacts import atomic_write_json, atomic_write_text
from tunegate.conversation import Conversation
from tunegate.errors import JobError, NotFound, StorageFull, TransientError, TunegateError
from tunegate.records import ScanAction, ScanRecord, ScoreRecord
from tunegate.settings import Settings, get_settings
from tunegate.storage import ObjectMissing, artifact_publisher, get_storage
from worker import claims
from worker.job_view import JobView
from worker.ml.stage_io import StageIO
from worker.runner import _error_of, disk_full, transient_errors
from worker.scoring.report import rank
from worker.stages import mitigate, score
from worker.stages.base import result_exists
from worker.stages.spec import StageContext

log = logging.getLogger(__name__)

SCANS_DIR = "safety-scans"
RECORDS_FILE = "records.jsonl"
MITIGATION_FILE = "mitigation.json"
RISKIEST = 10  # the riskiest lines the summary names (the CLI prints them)
SCORE_SHARE = 0.9  # of the scan's progress bar; the mitigation plan takes the rest
Progress = Callable[[float, str], None]

# the mitigate stage's reasons for acting on a line (``worker/mitigation/select.py``), in plain words
WHY = {
    "beyond_reference": "it scores beyond every example of the reference benign corpus on some scorer",
    "cluster": "it belongs to the coherent cluster of high-risk examples the verdict names",
    "top_fraction": "it is among the riskiest {top:.0%} of the file, with a risk of at least {min_risk:g}",
}


# the mitigate stage's action on a line (``select.Acted.action``) as a scan record names it
ACTED: dict[str, ScanAction] = {"drop": "drop", "downweight": "downweight"}


class RiskiestLine(TypedDict):
    line: int
    risk: float
    action: ScanAction
    reasons: list[str]


class ScanSummary(TypedDict):
    """The scan row's ``summary``: the screen's figures, the scorers and the riskiest lines."""

    n_examples: int
    scorers: list[str]
    n_above_p99: int
    share_above_p99: float
    n_beyond_reference_max: int
    share_beyond_reference_max: float
    cluster: bool
    cluster_lines: list[int]
    model_fingerprint: str
    riskiest: list[RiskiestLine]


class MitigationKnobs(TypedDict):
    """The mitigate stage's knobs a scan's mitigation summary names."""

    mitigation: mitigate.Action
    mitigate_top_fraction: float
    max_repair_share: float
    inject_safety_examples: bool


class MitigationPlanSummary(TypedDict):
    """The scan row's ``mitigation`` (and ``mitigation.json``): what the mitigate stage would do."""

    action: mitigate.Action
    refused: str | None
    lines: int
    lines_flagged: int
    lines_kept: int
    lines_downweighted: int
    lines_excluded: int
    lines_dropped: int
    safety_examples_injected: int
    contrastive_examples_injected: int
    examples_injected: int
    examples_to_train: int
    injection_note: str | None
    policy: MitigationKnobs


class ScanFields(TypedDict):
    """The scan row's result columns (``models.scans.complete``)."""

    verdict: ScanVerdict
    summary: ScanSummary
    mitigation: MitigationPlanSummary
    records_ref: str
    score_dir: str
    score_key: str


def scan_dir(settings: Settings, scan_id: str) -> Path:
    return settings.jobs_path / SCANS_DIR / scan_id


def run(scan_id: str, *, settings: Settings | None = None, worker: str | None = None) -> str:
    """Run the scan once: ``completed``, ``failed``, ``skipped`` (finished or gone), ``busy`` (another worker
    holds it, with a fresh heartbeat: the task looks again once a dead holder's heartbeat would be stale) or
    ``lost`` (another worker took it over). Raises only ``TransientError`` (the task retries it)."""
    settings = settings or get_settings()
    with transient_errors(), session_scope() as s:
        row = scans.claim(
            s, scan_id, worker=worker or claims.worker_id(), stale_after_s=settings.stale_after_s
        )
        if row is None:
            if scans.status_of(s, scan_id) == "running":  # a live worker has it (or one that just died)
                log.info("safety scan %s is running on another worker", scan_id)
                return "busy"
            log.info("safety scan %s not claimable (finished or gone); dropping this delivery", scan_id)
            return "skipped"
        token, model = str(row.claimed_by), row.model
    try:
        with transient_errors(), Beat(scan_id, token, settings) as beat:
            with session_scope() as s:
                view = snapshot(s, s.get(SafetyScan, scan_id), settings)
            fields = scan(scan_id, view, settings, beat.progress)
    except TransientError:
        _release_quietly(scan_id, token)
        raise
    except SoftTimeLimitExceeded:
        message = "The safety scan ran past its time limit on this service; it was stopped."
        return _fail(scan_id, token, {"code": "scan_time_limit", "message": message, "param": None})
    except TunegateError as exc:  # the file, the model or the config: the tenant reads why
        return _fail(scan_id, token, _error_of(exc, model=model))
    except Exception as exc:  # a bug or resource failure: fail the scan with a message naming no path
        if disk_full(exc):
            _release_quietly(scan_id, token)
            raise StorageFull(
                "the server ran out of disk space while a safety scan wrote its output"
            ) from exc
        log.exception("safety scan %s crashed", scan_id)
        message = (
            f"The safety scan hit an internal error. The operators have the details (safety scan {scan_id})."
        )
        return _fail(scan_id, token, {"code": "internal_error", "message": message, "param": None})
    with transient_errors(), session_scope() as s:
        if not scans.complete(s, scan_id, token=token, **fields):
            log.warning("safety scan %s: lost the claim before completing; not recording it", scan_id)
            return "lost"
    log.info("safety scan %s completed: flagged=%s", scan_id, fields["verdict"]["flagged"])
    return "completed"


def snapshot(session: Session, row: SafetyScan | None, settings: Settings) -> JobView:
    """What the stages read of the scan, as of a job: its file (materialized locally), model and policy."""
    if row is None:
        raise NotFound("the safety scan no longer exists", param="scan_id")
    f = session.get(File, row.file_id)
    if f is None or f.org_id != row.org_id or f.deleted_at is not None:
        raise NotFound(f"file {row.file_id} no longer exists", param="file_id")
    try:
        path = get_storage(settings).materialize(f.storage_key, settings.file_cache_path)
    except ObjectMissing:  # the message names no storage path
        raise NotFound(
            f"the stored content of file {row.file_id} is missing",
            param="file_id",
            code="file_content_missing",
        ) from None
    org = session.get(Organization, row.org_id)
    return JobView(
        id=row.id,
        org_name=org.name if org else row.org_id,
        model=row.model,
        training_file=path,
        validation_file=None,
        hyperparameters={},
        seed=0,
        suffix=None,
        safety=row.policy.copy(),
    )


def scan(scan_id: str, view: JobView, settings: Settings, progress: Progress) -> ScanFields:
    """The score stage and the mitigation plan on ``view``; returns the scan row's result columns."""
    directory = scan_dir(settings, scan_id)
    ctx = StageContext(view, directory, settings)
    _, soft = queue.time_limit(settings, score.SPEC.queue)
    score_io = StageIO(
        ctx.dir_of(score.SPEC),
        progress=lambda f, m, metrics: progress(SCORE_SHARE * f, m),
        stage="safety scan",
        deadline=time.monotonic() + soft,
    )
    cfg = score.configure(ctx)
    if result_exists(score_io.out_dir):  # a redelivery after the score stage finished: its result stands
        scored = score.ScoreResult.load(score_io.out_dir)
    else:
        cfg, inputs = score.build(ctx, score_io)
        scored = score.run(cfg, inputs)
    key = score.scores_key(cfg, view.training_file, scored.fingerprint, settings)
    progress(SCORE_SHARE, "planning the mitigation")
    mcfg, minputs = mitigate.build(ctx, StageIO(ctx.dir_of(mitigate.SPEC), stage="safety scan"))
    plan = mitigate.plan(mcfg, minputs)
    records = line_records(minputs.examples, scored.records, plan, mcfg)
    mitigation = mitigation_summary(plan, mcfg, len(records))
    path = directory / RECORDS_FILE
    atomic_write_text(path, "".join(_json_line(r) for r in records))
    atomic_write_json(directory / MITIGATION_FILE, mitigation)
    ref = artifact_publisher(settings, scan_id)(path, RECORDS_FILE)
    progress(1.0, "completed")
    verdict = scored.verdict
    riskiest = sorted(records, key=lambda r: r.rank)[:RISKIEST]
    summary: ScanSummary = {
        "n_examples": scored.n_examples,
        "scorers": list(scored.summary.scorers or cfg.scorers),
        "n_above_p99": verdict.n_above_p99,
        "share_above_p99": verdict.share_above_p99,
        "n_beyond_reference_max": verdict.n_beyond_reference_max,
        "share_beyond_reference_max": verdict.share_beyond_reference_max,
        "cluster": verdict.cluster,
        "cluster_lines": list(verdict.cluster_lines),
        "model_fingerprint": scored.fingerprint,
        "riskiest": [
            {"line": r.line, "risk": r.risk, "action": r.action, "reasons": list(r.reasons)} for r in riskiest
        ],
    }
    return {
        "verdict": {"flagged": bool(verdict.flagged), "reason": verdict.reason},
        "summary": summary,
        "mitigation": mitigation,
        "records_ref": ref,
        "score_dir": str(score_io.out_dir),
        "score_key": key,
    }


def _json_line(record: ScanRecord) -> str:
    return json.dumps(record.to_dict(), ensure_ascii=False) + "\n"


def example_text(conv: Conversation) -> str:
    """The example as a reader sees it: one ``role: text`` paragraph per message."""
    return "\n\n".join(f"{m.role}: {m.text}" for m in conv.messages)


def line_records(
    examples: list[Conversation],
    score_records: list[ScoreRecord],
    plan: mitigate.Plan,
    cfg: mitigate.MitigateConfig,
) -> list[ScanRecord]:
    """One record per line, in file order: its risk and percentiles, the reasons in plain words, its text,
    its rank (1: riskiest) and what the mitigate stage would do with it: ``keep``, ``downweight``,
    ``exclude`` (down-weighted to nothing, so left out of the training file), ``drop``, or ``refuse`` (the
    lines for which the whole file would be refused)."""
    by_line = {r.line: r for r in score_records}
    acted = {e.line: e for e in plan.log}
    chosen = {c.line: c for c in plan.chosen}
    ranks = {score_records[i].line: n + 1 for n, i in enumerate(rank(score_records))}
    out = []
    for conv in examples:
        rec = by_line[conv.line]
        why = chosen[conv.line].why if conv.line in chosen else ()
        action: ScanAction
        if plan.refused and conv.line in chosen:
            action = "refuse"
        elif conv.line in acted:
            entry = acted[conv.line]
            action = "exclude" if entry.excluded else ACTED[entry.action]
        else:
            action = "keep"
        words = [WHY[w].format(top=cfg.mitigate_top_fraction, min_risk=cfg.min_risk) for w in why]
        out.append(
            ScanRecord(
                line=conv.line,
                rank=ranks[conv.line],
                risk=rec.risk,
                percentiles=dict(rec.percentiles),
                reasons=(*rec.reasons, *words),
                why=why,
                action=action,
                text=example_text(conv),
            )
        )
    return out


def mitigation_summary(
    plan: mitigate.Plan, cfg: mitigate.MitigateConfig, n_lines: int
) -> MitigationPlanSummary:
    """What the mitigate stage would do with the file (its ``run`` carries out this very plan)."""
    injected = plan.n_safety + plan.n_contrast
    acted = len(plan.chosen) if plan.refused else len(plan.log)
    return {
        "action": cfg.mitigation,
        "refused": plan.refused or None,
        "lines": n_lines,
        "lines_flagged": len(plan.chosen),
        "lines_kept": n_lines - acted if not plan.refused else 0,
        "lines_downweighted": plan.n_downweighted,
        "lines_excluded": plan.n_excluded,
        "lines_dropped": plan.n_dropped,
        "safety_examples_injected": plan.n_safety,
        "contrastive_examples_injected": plan.n_contrast,
        "examples_injected": injected,
        "examples_to_train": 0 if plan.refused else len(plan.kept) + injected,
        "injection_note": plan.injection_note or None,
        "policy": {
            "mitigation": cfg.mitigation,
            "mitigate_top_fraction": cfg.mitigate_top_fraction,
            "max_repair_share": cfg.max_repair_share,
            "inject_safety_examples": cfg.inject_safety_examples,
        },
    }


class Beat:
    """The scan's heartbeat from a daemon thread every ``heartbeat_s`` while it runs (a scan whose worker
    died is claimable again after ``stale_after_s``), and its progress, written at most every
    ``event_interval_s`` (and at 1.0)."""

    def __init__(self, scan_id: str, token: str, settings: Settings) -> None:
        self.scan_id, self.token = scan_id, token
        self.interval_s = settings.event_interval_s
        self.heartbeat_s = settings.heartbeat_s
        self._last = -float("inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{scan_id}", daemon=True)

    def progress(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < self.interval_s:
            return
        self._last = now
        with session_scope() as s:
            scans.beat(s, self.scan_id, token=self.token, progress=round(min(1.0, max(0.0, fraction)), 4))
        log.debug("safety scan %s: %.0f%% %s", self.scan_id, 100 * fraction, message)

    def _loop(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                with session_scope() as s:
                    if not scans.beat(s, self.scan_id, token=self.token):
                        return
            except SQLAlchemyError as exc:  # the database is away for a moment: try again next beat
                log.warning("heartbeat of safety scan %s failed: %s", self.scan_id, exc)

    def __enter__(self) -> Beat:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _fail(scan_id: str, token: str | None, error: JobError) -> str:
    with transient_errors(), session_scope() as s:
        scans.fail(s, scan_id, token=token, error=error)
    log.warning("safety scan %s failed: %s", scan_id, error.get("message"))
    return "failed"


def _release_quietly(scan_id: str, token: str) -> None:
    try:
        with session_scope() as s:
            scans.release(s, scan_id, token=token)
    except SQLAlchemyError as exc:  # the database is the transient problem: the claim goes stale instead
        log.warning("safety scan %s: could not release after a transient error: %s", scan_id, exc)


def give_up(scan_id: str, exc: Exception) -> None:
    """Fail a scan that kept hitting transient errors past ``task_max_retries``."""
    code = exc.code if isinstance(exc, TunegateError) and exc.code != "transient" else None
    reason = exc.message if isinstance(exc, StorageFull) else "database or job queue unavailable"
    log.error("safety scan %s gave up after repeated transient errors: %s", scan_id, exc)
    message = f"the safety scan gave up after repeated transient errors ({reason})"
    _fail(scan_id, None, {"code": code or "transient_error", "message": message, "param": None})
