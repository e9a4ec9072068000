"""Stage 1: score every training example for how much it would erode the base model's safety.

The scorers of ``tunegate.scorers.SCORERS`` (all of them unless the config names fewer) from one
forward+backward per example (see ``worker/scoring``): representation anchoring and bi-directional gradient
anchoring (He et al. 2024) and Self-Inf-N (Guan et al. 2025). Writes ``scores.jsonl`` (one record per
example, in file order) and ``summary.json`` (distributions, top flagged, agreement between scorers, dataset
verdict), then ``config.json`` and ``result.json``.

A safety scan (``worker/scan.py``) runs this same stage on a file before any job: ``configure`` is the one
place the stage's config is built, for a job and for a scan. A job's ``build`` looks for a completed scan of
its organization on the same file and model whose ``scores_key`` equals its own (file bytes, model
fingerprint, config); ``run`` then takes that scan's result instead of scoring again, and says so in an event
("score: reused the safety scan ss-...").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Self

from sqlalchemy.orm import Session

from models import scans, webhooks
from models.db import session_scope
from models.tables import Job
from tunegate import schema
from tunegate.artifacts import atomic_write_json, atomic_write_text, read_json
from tunegate.conversation import Conversation, load_examples
from tunegate.errors import InvalidConfig
from tunegate.jsontypes import JsonObject
from tunegate.records import RecordError, ScoreRecord
from tunegate.report import ScoreSummary, ScreenVerdict
from tunegate.scorers import SCORERS
from tunegate.settings import Settings
from worker.job_view import job_dir
from worker.ml.models import device_for, resolve_model
from worker.ml.stage_io import StageIO
from worker.scoring.report import FlagRules
from worker.scoring.score_all import score_examples
from worker.stages.base import StageResult, finish, result_exists
from worker.stages.spec import Applied, StageContext, StageSpec

SCORES_FILE = "scores.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class ScoreConfig:
    model: str
    scorers: tuple[str, ...] = field(default_factory=lambda: tuple(SCORERS))  # every registered scorer
    batch_size: int = 8
    batched: bool | None = None  # gradient scorers in batches; None: on CUDA only (see docs/scoring.md)
    seed: int = 0
    max_tokens: int = 0  # 0: the model's context length (and Settings.max_example_tokens)
    reason_percentile: float = 95.0
    flag_percentile: float = 99.0
    max_share_above: float = 0.30
    tail_share: float = 0.02
    tail_min_count: int = 3
    top_k: int = 20
    # closeness to harmful compliance counts only where the base reads the request as harmful (FlagRules)
    request_gate: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "scorers", tuple(self.scorers))
        bad = [s for s in self.scorers if s not in SCORERS]
        if bad or not self.scorers:
            raise InvalidConfig(
                f"scorers must be a non-empty subset of {', '.join(SCORERS)}; got {bad or 'none'}",
                param="scorers",
            )
        for name in ("batch_size", "top_k", "tail_min_count"):
            if getattr(self, name) < 1:
                raise InvalidConfig(f"{name} must be at least 1", param=name)
        if self.max_tokens < 0:
            raise InvalidConfig("max_tokens must be 0 (model limit) or positive", param="max_tokens")
        for name in ("reason_percentile", "flag_percentile"):
            if not 0.0 < getattr(self, name) <= 100.0:
                raise InvalidConfig(f"{name} must be in (0, 100]", param=name)
        for name in ("max_share_above", "tail_share", "request_gate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidConfig(f"{name} must be in [0, 1]", param=name)

    def rules(self) -> FlagRules:
        return FlagRules(
            self.reason_percentile,
            self.flag_percentile,
            self.max_share_above,
            self.tail_share,
            self.tail_min_count,
            self.top_k,
            request_gate=self.request_gate,
        )


@dataclass(frozen=True)
class ReusedScores:
    """A completed safety scan whose scores a job takes instead of scoring again (its ``scores_key``
    matched the job's)."""

    scan_id: str
    directory: Path  # the scan's score result (config.json, scores.jsonl, summary.json, result.json)


@dataclass
class ScoreInputs:
    examples: list[Conversation]
    io: StageIO
    settings: Settings  # the model registry and the scoring caches' location
    reuse: ReusedScores | None = None  # a safety scan's matching scores: taken instead of scoring


# the dataset screen's verdict (``worker.scoring.report``) as the stage's result holds it: the safety report's
# record, read and written back as the report reads and writes it
Verdict = ScreenVerdict


@dataclass
class ScoreResult(StageResult):
    """``result.json`` holds the counts and the verdict; the per-example records and the summary (the report's
    distributions, top flagged, agreement) are their own files, loaded with the result."""

    n_examples: int
    verdict: Verdict
    model: str
    fingerprint: str
    files: dict[str, str] = field(default_factory=lambda: {"scores": SCORES_FILE, "summary": SUMMARY_FILE})
    records: list[ScoreRecord] = field(default_factory=list)  # scores.jsonl, one a line, in file order
    summary: ScoreSummary = field(default_factory=ScoreSummary)  # summary.json
    reused_scan: str = ""  # the safety scan whose scores these are ("": scored here)

    def to_dict(self) -> JsonObject:
        """``result.json``: every field but the records and the summary (files of their own)."""
        return {
            f.name: schema.jsonable(getattr(self, f.name))
            for f in fields(self)
            if f.name not in ("records", "summary")
        }

    def save(self, out_dir: Path) -> Path:
        write_records(self.records, Path(out_dir) / SCORES_FILE)
        atomic_write_json(Path(out_dir) / SUMMARY_FILE, self.summary.to_dict())
        return super().save(out_dir)

    @classmethod
    def load(cls, out_dir: Path) -> Self:
        res = super().load(out_dir)
        res.records = load_score_records(out_dir)
        res.summary = ScoreSummary.from_dict(read_json(Path(out_dir) / SUMMARY_FILE))
        return res


def write_records(records: list[ScoreRecord], path: Path) -> None:
    atomic_write_text(path, "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records))


def run(cfg: ScoreConfig, inputs: ScoreInputs) -> ScoreResult:
    io = inputs.io
    out = Path(io.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if inputs.reuse is not None:
        return _reused(cfg, inputs, inputs.reuse)
    scored = score_examples(
        cfg.model,
        inputs.examples,
        scorers=cfg.scorers,
        batch_size=cfg.batch_size,
        batched=cfg.batched,
        seed=cfg.seed,
        rules=cfg.rules(),
        max_tokens=cfg.max_tokens,
        settings=inputs.settings,
        progress=lambda f, m: io.step(f, m),
    )
    summary = scored.summary
    assert summary.verdict is not None  # ``summarize`` always reaches one
    result = ScoreResult(
        n_examples=len(scored.records),
        verdict=summary.verdict,
        model=str(summary.model),
        fingerprint=str(summary.fingerprint),
        records=scored.records,
        summary=summary,
    )
    io.step(1.0, "scored", verdict=result.verdict.flagged)
    return finish(out, cfg, result)


def _reused(cfg: ScoreConfig, inputs: ScoreInputs, reuse: ReusedScores) -> ScoreResult:
    """The scan's result as this stage's own (saved with this stage's config): no model is loaded."""
    prior = ScoreResult.load(reuse.directory)
    result = ScoreResult(
        n_examples=prior.n_examples,
        verdict=prior.verdict,
        model=prior.model,
        fingerprint=prior.fingerprint,
        records=prior.records,
        summary=prior.summary,
        reused_scan=reuse.scan_id,
    )
    inputs.io.step(1.0, f"reused the safety scan {reuse.scan_id}", verdict=result.verdict.flagged)
    return finish(Path(inputs.io.out_dir), cfg, result)


def configure(ctx: StageContext) -> ScoreConfig:
    """The stage's config for ``ctx``'s job or safety scan (the one place it is built): the model and seed,
    then the provider's stage overrides and the effective safety policy (``StageContext.configure``)."""
    return ctx.configure(ScoreConfig(model=ctx.view.model, seed=ctx.view.seed), SPEC)


def scores_key(cfg: ScoreConfig, training_file: Path, fingerprint: str, settings: Settings) -> str:
    """A digest of everything that decides this stage's records and verdict: the file's bytes, the model's
    fingerprint, the config, the example-length limit and the device. Not the seed: it only seeds torch's
    global generator, which no scorer draws from (every random draw in ``worker/scoring`` has a generator of
    its own), so a job (whose seed is its own) and a scan of the same file score it the same."""
    digest = hashlib.sha256()
    with Path(training_file).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    config = {k: v for k, v in asdict(cfg).items() if k != "seed"}
    key = {
        "file_sha256": digest.hexdigest(),
        "fingerprint": fingerprint,
        "config": config,
        "max_example_tokens": settings.max_example_tokens,
        "device": device_for(settings),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def reusable_scan(ctx: StageContext, cfg: ScoreConfig) -> ReusedScores | None:
    """The newest completed safety scan of the job's organization on its training file and model whose
    ``scores_key`` equals the job's, with its result on disk; None when there is none. Only a worker's job
    (its directory is ``job_dir(settings, id)``) has a row to look up: a local run or a scan has not."""
    if ctx.job_dir != job_dir(ctx.settings, ctx.view.id):
        return None
    with session_scope() as s:
        found = scans.completed_for_job(s, job_id=ctx.view.id)
    if not found:
        return None
    fingerprint = resolve_model(cfg.model, ctx.settings).fingerprint
    key = scores_key(cfg, ctx.view.training_file, fingerprint, ctx.settings)
    for scan in found:
        if scan.score_key == key and result_exists(Path(scan.score_dir)):
            return ReusedScores(scan.scan_id, Path(scan.score_dir))
    return None


def build(ctx: StageContext, io: StageIO) -> tuple[ScoreConfig, ScoreInputs]:
    cfg = configure(ctx)
    examples = load_examples(ctx.view.training_file)
    return cfg, ScoreInputs(examples, io, ctx.settings, reuse=reusable_scan(ctx, cfg))


def apply(session: Session, job: Job, res: ScoreResult) -> Applied:
    if res.verdict.flagged:  # the organization's webhooks hear of it (same transaction; once per job)
        webhooks.emit(session, job, "fine_tuning.job.flagged")
    flagged = "flagged as high-risk" if res.verdict.flagged else "not flagged"
    how = f" (the scores of the safety scan {res.reused_scan}, reused)" if res.reused_scan else ""
    msg = f"scored {res.n_examples} examples{how}; dataset {flagged}: {res.verdict.reason}".rstrip(": ")
    data: JsonObject = {"verdict": res.verdict.to_dict()}
    if res.reused_scan:
        data["reused_scan"] = res.reused_scan
    return Applied(msg, data=data)


SPEC = StageSpec("score", "gpu", 0.18, ScoreResult, build, run, apply)


def load_score_records(out_dir: Path | str) -> list[ScoreRecord]:
    """The per-example records a finished score stage wrote, in file order (a record this version cannot
    read raises ``RecordError`` naming the file, its line and the key)."""
    path = Path(out_dir) / SCORES_FILE
    records = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    records.append(ScoreRecord.from_dict(json.loads(line)))
                except RecordError as exc:
                    raise RecordError(f"{path}, line {number}: {exc}") from exc
    return records
