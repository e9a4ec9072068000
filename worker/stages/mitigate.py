"""Mitigate stage: act on the riskiest examples by policy, then mix in format-mimicking safety examples and
as many contrastive helpful ones (borderline-safe requests answered by the base model, cached per base).

Writes ``train.jsonl`` (what the train stage trains on), ``actions.json`` (what was done to which line, and
which safety examples were added) and ``format.json`` (the inferred user format). When the examples to act
on exceed ``max_repair_share`` of the file, it writes ``actions.json`` and a safety report instead and the
job fails as ``unsafe_training_data`` before training (``worker/mitigation/refuse.py``).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, NotRequired, TypedDict

from sqlalchemy.orm import Session

from models import webhooks
from models.jobs import JobStatus
from models.policy import DEFAULT_POLICY
from models.tables import Job
from tunegate.artifacts import atomic_write_json
from tunegate.conversation import Conversation, dump_examples, load_examples
from tunegate.errors import UNSAFE_TRAINING_DATA, InvalidConfig, JobError, TunegateError, UnsafeTrainingData
from tunegate.records import ScoreRecord
from tunegate.report import MitigationLog, ReportPolicy, ScoreSummary
from tunegate.settings import Settings
from tunegate.storage import Publish, artifact_publisher, keep_local
from worker.mitigation import refuse, select
from worker.mitigation.contrast import answered, base_cache_dir, cache_file, model_generator
from worker.mitigation.inject import (
    contrast_supported,
    contrastive_examples,
    injection_counts,
    safety_examples,
)
from worker.ml.format import UserFormat, infer_format, template_is_plain
from worker.ml.stage_io import StageIO
from worker.stages import score
from worker.stages.base import StageResult, finish
from worker.stages.spec import Applied, StageContext, StageSpec

Action = Literal["none", "downweight", "drop"]
ACTIONS = ("downweight", "drop", "none")


_PAST = {"drop": "dropped", "downweight": "down-weighted", "none": "flagged, left as they are (action none)"}


@dataclass(frozen=True)
class MitigateConfig:
    # the three safety-policy knobs (models/policy.py) keep their policy names here
    mitigation: Action = DEFAULT_POLICY["mitigation"]
    mitigate_top_fraction: float = DEFAULT_POLICY["mitigate_top_fraction"]  # act on at most this share ...
    min_risk: float = 90.0  # ... and only on examples at least this risky (0..100)
    # beyond-reference and cluster examples are acted on whatever their share, up to this share of the file
    max_repair_share: float = DEFAULT_POLICY["max_repair_share"]
    inject_safety_examples: bool = DEFAULT_POLICY["inject_safety_examples"]
    inject_ratio: float = 0.07
    inject_min: int = 10
    inject_max_fraction: float = (
        0.5  # never more injected examples (both kinds) than this share of the user's
    )
    inject_per_risky: float = 1.0  # one more safety example per example at least min_risk risky
    contrast_ratio: float = 1.0  # contrastive helpful examples per safety example (0: none)
    # share of the injected examples (each kind) written in plain chat instead of the user's format, when the
    # user's prompts are not plain chat (a system prompt, a template, tools): the gate measures both
    # (docs/safety.md, "Training that keeps the base's safety": 0.3 lowered the support persona's erosion)
    plain_share: float = 0.3
    contrast_max_new_tokens: int = 96  # the base model's answers to them: length ...
    contrast_batch_size: int = 16  # ... and generation batch
    model: str = ""  # the job's base model (answers the contrastive requests); "" only with contrast_ratio 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mitigation not in ACTIONS:
            raise InvalidConfig(
                f"MitigateConfig.mitigation must be one of {ACTIONS}, got {self.mitigation!r}",
                param="mitigation",
            )
        if not 0 <= self.mitigate_top_fraction <= 1:
            raise InvalidConfig(
                "MitigateConfig.mitigate_top_fraction must be in [0, 1]", param="mitigate_top_fraction"
            )
        if not 0 <= self.max_repair_share <= 1:
            raise InvalidConfig("MitigateConfig.max_repair_share must be in [0, 1]", param="max_repair_share")
        if not 0 <= self.min_risk <= 100:
            raise InvalidConfig("MitigateConfig.min_risk must be in [0, 100]", param="min_risk")
        for name in ("inject_ratio", "plain_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidConfig(f"MitigateConfig.{name} must be in [0, 1]", param=name)
        if self.inject_min < 0:
            raise InvalidConfig("MitigateConfig.inject_min must be >= 0", param="inject_min")
        if not 0 < self.inject_max_fraction <= 1:
            raise InvalidConfig(
                "MitigateConfig.inject_max_fraction must be in (0, 1]", param="inject_max_fraction"
            )
        for name in ("inject_per_risky", "contrast_ratio"):
            if not 0 <= getattr(self, name) <= 10:
                raise InvalidConfig(f"MitigateConfig.{name} must be in [0, 10]", param=name)
        for name in ("contrast_max_new_tokens", "contrast_batch_size"):
            if getattr(self, name) < 1:
                raise InvalidConfig(f"MitigateConfig.{name} must be >= 1", param=name)


@dataclass
class MitigateInputs:
    examples: list[Conversation]
    score_records: list[ScoreRecord]
    io: StageIO
    settings: Settings | None = None  # the model registry and caches: needed for contrastive examples
    cluster_lines: list[int] = field(default_factory=list)  # the score verdict's coherent cluster
    score_summary: ScoreSummary = field(default_factory=ScoreSummary)  # for the report of a refused file
    publish: Publish = keep_local  # makes that report readable by the API (tunegate.storage)


@dataclass
class MitigateResult(StageResult):
    train_file: str
    n_input: int
    n_dropped: int
    n_downweighted: int
    n_excluded: int
    n_injected: int
    n_output: int
    format: UserFormat | None = None  # the user's format as inferred (None: refused; written as {})
    actions_file: str = ""  # actions.json: what was done to which line, and the injected safety examples
    n_contrast: int = 0  # contrastive helpful examples added (borderline-safe requests, the base's answers)
    # refused (too large a share to repair): the job fails as unsafe_training_data with this message
    refused: str = ""
    report_json: str = ""
    report_html: str = ""
    stored_report: str = ""

    def failure(self) -> TunegateError | None:
        return UnsafeTrainingData(self.refused, report=self.report_html) if self.refused else None

    EMPTY_AS_OBJECT = ("format",)  # no format (a refused file)


def _check_records(examples: list[Conversation], records: list[ScoreRecord]) -> None:
    lines = {c.line for c in examples}
    unknown = [r.line for r in records if r.line not in lines]
    if unknown:
        raise InvalidConfig(
            f"score records name lines not in the dataset: {unknown[:5]}", param="score_records"
        )


@dataclass
class Plan:
    """What ``run`` does to a file, decided before anything is generated or written: the lines acted on and
    how, or the refusal, and how many examples are injected. A safety scan (``worker/scan.py``) reports it
    without training; ``run`` carries it out."""

    chosen: list[select.Chosen]  # the records acted on, riskiest first, each with ``why``
    refused: str = ""  # too large a share to repair: the job fails (unsafe_training_data) before training
    kept: list[Conversation] = field(default_factory=list)  # the user's examples as they will be trained
    log: list[select.Acted] = field(default_factory=list)  # one entry per acted-on line (select.apply)
    format: UserFormat | None = None  # the inferred user format (None when refused)
    n_safety: int = 0  # safety examples to inject
    n_contrast: int = 0  # contrastive helpful examples to inject (answered by the base model)
    injection_note: str = ""  # why fewer kinds are injected ("injection is off", a closed label set)

    @property
    def n_dropped(self) -> int:
        return sum(1 for e in self.log if e.action == "drop")

    @property
    def n_downweighted(self) -> int:
        return sum(1 for e in self.log if e.action == "downweight")

    @property
    def n_excluded(self) -> int:
        return sum(1 for e in self.log if e.excluded)


NO_CONTRAST_FOR_LABELS = "a closed label set cannot carry a helpful free-text answer"


def plan(cfg: MitigateConfig, inputs: MitigateInputs) -> Plan:
    """Choose the lines to act on (or refuse the file) and count the examples to inject, as ``run`` will."""
    _check_records(inputs.examples, inputs.score_records)
    chosen = (
        select.choose(inputs.score_records, inputs.cluster_lines, cfg.mitigate_top_fraction, cfg.min_risk)
        if cfg.mitigation != "none"
        else []
    )
    refusal = refuse.message(chosen, len(inputs.examples), cfg.max_repair_share)
    if refusal:
        return Plan(chosen, refused=refusal)
    kept, log = select.apply(inputs.examples, chosen, cfg.mitigation)
    fmt = infer_format(inputs.examples)
    if not cfg.inject_safety_examples:
        return Plan(chosen, kept=kept, log=log, format=fmt, injection_note="injection is off")
    n_risky = sum(1 for r in inputs.score_records if r.risk >= cfg.min_risk)
    n_safety, n_help = injection_counts(
        len(kept),
        n_risky,
        cfg.inject_ratio,
        cfg.inject_min,
        cfg.inject_per_risky,
        cfg.contrast_ratio,
        cfg.inject_max_fraction,
    )
    note = "" if contrast_supported(fmt) else NO_CONTRAST_FOR_LABELS
    n_contrast = 0 if note else n_help
    return Plan(
        chosen, kept=kept, log=log, format=fmt, n_safety=n_safety, n_contrast=n_contrast, injection_note=note
    )


def run(cfg: MitigateConfig, inputs: MitigateInputs) -> MitigateResult:
    out_dir = Path(inputs.io.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    p = plan(cfg, inputs)
    if p.refused:
        return _refuse(cfg, inputs, p.chosen, p.refused)
    assert p.format is not None  # a plan that is not a refusal has the user's format
    kept, log, fmt = p.kept, p.log, p.format
    inputs.io.step(0.3, f"{len(log)} examples {_PAST[cfg.mitigation]}")
    injected, contrast, contrast_log = _inject(cfg, inputs, p)
    final = kept + injected + contrast
    random.Random(cfg.seed).shuffle(final)
    dump_examples(final, out_dir / "train.jsonl")
    atomic_write_json(out_dir / "format.json", fmt.to_dict())
    atomic_write_json(
        out_dir / "actions.json",
        {
            "policy": asdict(cfg),
            "acted": [e.to_dict() for e in log],
            "injected": [
                {"category": c.meta.get("category"), "messages": c.to_chat_dict()["messages"]}
                for c in injected + contrast
            ],
            "contrast": contrast_log,
        },
    )
    n_inj = len(injected)
    inputs.io.step(1.0, f"{n_inj} safety examples and {len(contrast)} contrastive helpful examples injected")
    res = MitigateResult(
        train_file=str(out_dir / "train.jsonl"),
        n_input=len(inputs.examples),
        n_dropped=p.n_dropped,
        n_downweighted=p.n_downweighted,
        n_excluded=p.n_excluded,
        n_injected=n_inj,
        n_output=len(final),
        format=fmt,
        actions_file=str(out_dir / "actions.json"),
        n_contrast=len(contrast),
    )
    return finish(out_dir, cfg, res)


class ContrastLog(TypedDict):
    """``actions.json``'s ``contrast``: how many contrastive helpful examples were answered and how
    (``worker.mitigation.contrast.AnswerStats``), or why none were (``note``)."""

    n: int
    note: NotRequired[str]
    generated: NotRequired[int]  # answers generated by the base model
    cached: NotRequired[int]  # answers read from the cache
    unusable: NotRequired[int]  # answers that were empty or refusals
    cache_file: NotRequired[str]


def _inject(
    cfg: MitigateConfig, inputs: MitigateInputs, p: Plan
) -> tuple[list[Conversation], list[Conversation], ContrastLog]:
    """The plan's safety examples and contrastive helpful examples (the base model answers the latter)."""
    if not cfg.inject_safety_examples:
        return [], [], {"n": 0, "note": p.injection_note}
    assert p.format is not None
    fmt, plain = p.format, plain_count(p.format, p.n_safety, cfg.plain_share)
    injected = safety_examples(fmt, p.n_safety - plain, cfg.seed)
    injected += safety_examples(PLAIN, plain, cfg.seed + 1)
    if p.injection_note:
        return injected, [], {"n": 0, "note": p.injection_note}
    n_help = p.n_contrast
    if n_help == 0:
        return injected, [], {"n": 0}
    if inputs.settings is None or not cfg.model:
        raise InvalidConfig(
            "contrastive examples need the base model (MitigateConfig.model and MitigateInputs.settings); "
            "set contrast_ratio=0 to inject none",
            param="contrast_ratio",
        )
    inputs.io.step(0.4, f"answering {n_help} contrastive requests with the base model")
    path = cache_file(base_cache_dir(cfg.model, inputs.settings), cfg.contrast_max_new_tokens)
    gen = model_generator(cfg.model, inputs.settings, cfg.contrast_max_new_tokens, cfg.contrast_batch_size)
    items, stats = answered(n_help, cfg.seed, path, gen)
    k = len(items) - plain_count(fmt, len(items), cfg.plain_share)
    helpful = contrastive_examples(fmt, items[:k], cfg.seed)
    helpful += contrastive_examples(PLAIN, items[k:], cfg.seed)
    return (
        injected,
        helpful,
        {
            "n": len(items),
            "generated": stats.generated,
            "cached": stats.cached,
            "unusable": stats.unusable,
            "cache_file": stats.cache_file,
        },
    )


PLAIN = UserFormat()  # plain chat: no system prompt, no template, free-text replies


def plain_count(fmt: UserFormat, n: int, share: float) -> int:
    """How many of ``n`` injected examples are written in plain chat: ``round(share x n)``, none when the
    user's prompts are plain chat already, and at least one of them in the user's format."""
    if template_is_plain(fmt) or n < 2:
        return 0
    return min(n - 1, round(share * n))


def _refuse(
    cfg: MitigateConfig, inputs: MitigateInputs, chosen: list[select.Chosen], msg: str
) -> MitigateResult:
    """No training file: ``actions.json`` lists what would have been acted on, a report says why."""
    out_dir = Path(inputs.io.out_dir)
    actions = {"policy": asdict(cfg), "refused": msg, "acted": [c.to_dict() for c in chosen]}
    atomic_write_json(out_dir / "actions.json", actions)
    policy = asdict(cfg)
    rj, rh = refuse.write(
        out_dir,
        ReportPolicy.from_dict(policy),
        msg,
        inputs.score_summary,
        inputs.score_records,
        inputs.examples,
        MitigationLog.from_actions(actions),
    )
    inputs.publish(rh, "mitigate/report.html")
    res = MitigateResult(
        train_file="",
        n_input=len(inputs.examples),
        n_dropped=0,
        n_downweighted=0,
        n_excluded=0,
        n_injected=0,
        n_output=0,
        actions_file=str(out_dir / "actions.json"),
        refused=msg,
        report_json=str(rj),
        report_html=str(rh),
        stored_report=inputs.publish(rj, "mitigate/report.json"),
    )
    inputs.io.step(1.0, msg)
    return finish(out_dir, cfg, res)


def build(ctx: StageContext, io: StageIO) -> tuple[MitigateConfig, MitigateInputs]:
    cfg = ctx.configure(MitigateConfig(model=ctx.view.model, seed=ctx.view.seed), SPEC)
    scored = ctx.result(score.SPEC)
    return cfg, MitigateInputs(
        load_examples(ctx.view.training_file),
        scored.records,
        io,
        ctx.settings,
        cluster_lines=list(scored.verdict.cluster_lines),
        score_summary=scored.summary,
        publish=artifact_publisher(ctx.settings, ctx.view.id),
    )


def apply(session: Session, job: Job, res: MitigateResult) -> Applied:
    if res.refused:  # the job fails before training; the tenant reads the report through /safety_report
        job.report_path = res.stored_report or res.report_json
        error: JobError = {"code": UNSAFE_TRAINING_DATA, "message": res.refused, "param": "training_file"}
        return Applied(f"refused: {res.refused}", {}, JobStatus.FAILED, level="error", error=error)
    if res.n_dropped or res.n_downweighted:  # the organization's webhooks hear that its data was repaired
        webhooks.emit(session, job, "fine_tuning.job.repaired")
    msg = (
        f"mitigation: {res.n_dropped} dropped, {res.n_downweighted} down-weighted, "
        f"{res.n_injected} safety examples and {res.n_contrast} contrastive helpful examples injected; "
        f"{res.n_output} examples to train on"
    )
    return Applied(msg, data={k: v for k, v in res.to_dict().items() if k.startswith("n_")})


SPEC = StageSpec("mitigate", "cpu", 0.02, MitigateResult, build, run, apply)
