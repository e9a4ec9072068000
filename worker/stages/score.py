"""Stage 1: score every training example for how much it would erode the base model's safety.

Three scorers from one forward+backward per example (see ``worker/scoring``): representation anchoring and
bi-directional gradient anchoring (He et al. 2024) and Self-Inf-N (Guan et al. 2025). Writes
``scores.jsonl`` (one record per example, in file order) and ``summary.json`` (distributions, top flagged,
agreement between scorers, dataset verdict), then ``config.json`` and ``result.json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from sqlalchemy.orm import Session

from models import webhooks
from models.tables import Job
from tunegate.artifacts import atomic_write_json, atomic_write_text
from tunegate.conversation import Conversation, load_examples
from tunegate.errors import InvalidConfig
from tunegate.settings import Settings
from worker.ml.stage_io import StageIO
from worker.scoring.engine import SCORERS
from worker.scoring.report import FlagRules
from worker.scoring.score_all import score_examples
from worker.stages.base import StageResult, finish
from worker.stages.spec import Applied, StageContext, StageSpec

SCORES_FILE = "scores.jsonl"
SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class ScoreConfig:
    model: str
    scorers: tuple[str, ...] = SCORERS
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
        for name in ("max_share_above", "tail_share"):
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
        )


@dataclass
class ScoreInputs:
    examples: list[Conversation]
    io: StageIO
    settings: Settings  # the model registry and the scoring caches' location


@dataclass
class Verdict:
    """The dataset screen's verdict (``worker.scoring.report``)."""

    flagged: bool
    reason: str = ""
    share_above_p99: float = 0.0
    share_beyond_reference_max: float = 0.0
    n_above_p99: int = 0
    n_beyond_reference_max: int = 0
    cluster: bool = False  # the high-risk examples form a coherent cluster (worker/scoring/cluster.py)
    cluster_lines: list[int] = field(default_factory=list)  # its lines (empty when not coherent)
    cluster_test: dict[str, Any] = field(default_factory=dict)  # statistic, null mean, p-value, method


@dataclass
class ScoreResult(StageResult):
    """``result.json`` holds the counts and the verdict; the per-example records and the summary (the report's
    distributions, top flagged, agreement) are their own files, loaded with the result."""

    n_examples: int
    verdict: Verdict
    model: str
    fingerprint: str
    files: dict[str, str] = field(default_factory=lambda: {"scores": SCORES_FILE, "summary": SUMMARY_FILE})
    records: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_dict().items() if k not in ("records", "summary")}

    def save(self, out_dir: Path) -> Path:
        write_records(self.records, Path(out_dir) / SCORES_FILE)
        atomic_write_json(Path(out_dir) / SUMMARY_FILE, self.summary)
        return super().save(out_dir)

    @classmethod
    def load(cls, out_dir: Path) -> Self:
        res = super().load(out_dir)
        res.records = load_score_records(out_dir)
        res.summary = json.loads((Path(out_dir) / SUMMARY_FILE).read_text(encoding="utf-8"))
        return res


def write_records(records: list[dict[str, Any]], path: Path) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def run(cfg: ScoreConfig, inputs: ScoreInputs) -> ScoreResult:
    io = inputs.io
    out = Path(io.out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
    result = ScoreResult(
        n_examples=len(scored.records),
        verdict=Verdict(**summary["verdict"]),
        model=str(summary.get("model")),
        fingerprint=str(summary.get("fingerprint")),
        records=scored.records,
        summary=summary,
    )
    io.step(1.0, "scored", verdict=result.verdict.flagged)
    return finish(out, cfg, result)


def build(ctx: StageContext, io: StageIO) -> tuple[ScoreConfig, ScoreInputs]:
    cfg = ctx.configure(ScoreConfig(model=ctx.view.model, seed=ctx.view.seed), SPEC)
    return cfg, ScoreInputs(load_examples(ctx.view.training_file), io, ctx.settings)


def apply(session: Session, job: Job, res: ScoreResult) -> Applied:
    if res.verdict.flagged:  # the organization's webhooks hear of it (same transaction; once per job)
        webhooks.emit(session, job, "fine_tuning.job.flagged")
    flagged = "flagged as high-risk" if res.verdict.flagged else "not flagged"
    msg = f"scored {res.n_examples} examples; dataset {flagged}: {res.verdict.reason}".rstrip(": ")
    return Applied(msg, data={"verdict": res.to_dict()["verdict"]})


SPEC = StageSpec("score", "gpu", 0.18, ScoreResult, build, run, apply)


def load_score_records(out_dir: Path | str) -> list[dict[str, Any]]:
    """The per-example records a finished score stage wrote, in file order."""
    path = Path(out_dir) / SCORES_FILE
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
