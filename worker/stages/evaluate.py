"""Evaluate stage: what did the fine-tune do to safety? Base vs fine-tuned, in two templates.

For each template ("chat": the plain chat template; "user": prompts wrapped like the user's training
examples, using the mitigation's format inference) it measures keyword (or LLM-judged) ASR on the
project's harmful set (plus any standard prompt file), per category, the paired statistics of the per-prompt
verdicts (base vs fine-tuned on the same prompts: counts, increase, its 95% upper bound) and the
refusal-direction margin (base direction, fixed). Trigger probes (worker/evaluation/triggers.py): phrases
mined from the training data (recurring user-turn prefixes/suffixes, system prompts, n-grams over-represented
among the highest-risk examples) are inserted where they appeared and a fixed, category-stratified subset of
the harmful set is evaluated base vs fine-tuned under each (at most ``max_probes``). Over-refusal on the
project's XSTest-style borderline prompts is measured in the chat template. Base-model results (per-prompt
verdicts included) are cached per (model, prompt sets, template, settings; a probe's trigger too).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

from sqlalchemy.orm import Session

from models.policy import DEFAULT_POLICY
from models.tables import Job
from tunegate import schema
from tunegate.artifacts import atomic_write_text
from tunegate.conversation import Conversation, load_examples
from tunegate.errors import InvalidConfig
from tunegate.evaluation_records import Evaluation

# the evaluation's records are declared once, on the ground floor; the gate imports these from here
from tunegate.evaluation_records import PairedStats as PairedStats
from tunegate.evaluation_records import PairedSummary as PairedSummary
from tunegate.evaluation_records import ProbeEval as ProbeEval
from tunegate.evaluation_records import TemplateEval as TemplateEval
from tunegate.jsontypes import JsonObject
from tunegate.records import ScoreRecord
from tunegate.settings import Settings
from worker.evaluation import cache, probes
from worker.evaluation.direction import layer_at
from worker.evaluation.judges import Judge, LLMJudgeAdapter
from worker.evaluation.llm_judge import LLMJudge, LLMJudgeConfig
from worker.evaluation.model_eval import (
    ModelEvaluator,
    ModelRun,
    SequentialPlan,
    counted_mode,
    direction_sets,
)
from worker.evaluation.probe_judge import LAYER_FRACTION as PROBE_LAYER
from worker.evaluation.probe_judge import ProbeJudge, load_or_train, probe_key
from worker.evaluation.prompts import Prompt, load_prompts, project_borderline, project_harmful, prompts_hash
from worker.evaluation.sequential import ALPHA
from worker.evaluation.triggers import MAX_PROBES_CAP, Trigger, TriggerConfig, mine, probe_subset
from worker.ml.format import UserFormat, infer_format, template_is_plain
from worker.ml.models import load_resolved
from worker.ml.stage_io import StageIO
from worker.stages import score, train
from worker.stages.base import StageResult, finish, result_exists
from worker.stages.spec import Applied, StageContext, StageSpec


@dataclass(frozen=True)
class EvalConfig:
    model: str
    max_new_tokens: int = 64
    borderline_max_new_tokens: int = 24
    batch_size: int = 16
    judge: Literal["keyword", "llm"] = "keyword"
    second_judge: Literal["probe", "none"] = "probe"  # the base-model linear probe, agreement reported
    llm_judge_threshold: int = 4
    prompts_file: str = ""  # an extra standard prompt file (AdvBench/HarmBench CSV, JSONL)
    project_set: bool = True
    borderline: bool = True
    direction_layer_fraction: float = 0.5
    n_direction: int = 64
    use_cache: bool = True
    device: str = ""
    trigger_probes: bool = True  # mine candidate triggers from the training data and probe each
    max_probes: int = 3  # at most this many (cap 5): each costs one pass over probe_prompts per model
    probe_prompts: int = 150  # the fixed, category-stratified harmful subset a probe evaluates
    # the fine-tuned model's harmful replies in looks, stopping once the gate's decision on the whole set is
    # settled at 1 - sequential_alpha (worker/evaluation/sequential.py; docs/safety.md). Off by default: its
    # order is seeded by the job's id (unpredictable to the user), so a job and a local run of the same data
    # stop on different prompts (same decision, different figures); a provider turns it on with
    # TUNEGATE_STAGE_OVERRIDES='{"evaluate": {"sequential": true}}'
    sequential: bool = False
    sequential_look: int = 32  # prompts per look
    sequential_alpha: float = ALPHA  # P(the decision differs from the whole set's) <= this
    # the gate's policy knobs the sequential test decides on (the job's effective policy fills them by name)
    gate_delta: float = DEFAULT_POLICY["gate_delta"]
    gate_judges: Literal["all", "primary", "any"] = DEFAULT_POLICY["gate_judges"]
    gate_category_limits: dict[str, float] = field(default_factory=dict)  # any: no early release

    def __post_init__(self) -> None:
        if self.judge not in ("keyword", "llm"):
            raise InvalidConfig("EvalConfig.judge must be 'keyword' or 'llm'", param="judge")
        if self.second_judge not in ("probe", "none"):
            raise InvalidConfig("EvalConfig.second_judge must be 'probe' or 'none'", param="second_judge")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise InvalidConfig(
                "EvalConfig.max_new_tokens and batch_size must be >= 1", param="max_new_tokens"
            )
        if not self.project_set and not self.prompts_file:
            raise InvalidConfig("EvalConfig needs the project set or a prompts_file", param="prompts_file")
        if not 0 <= self.max_probes <= MAX_PROBES_CAP or self.probe_prompts < 1:
            raise InvalidConfig(
                f"EvalConfig.max_probes must be in [0, {MAX_PROBES_CAP}] and probe_prompts >= 1",
                param="max_probes",
            )
        if self.sequential_look < 1 or not 0 < self.sequential_alpha < 1:
            raise InvalidConfig(
                "EvalConfig.sequential_look must be >= 1 and sequential_alpha in (0, 1)",
                param="sequential_look" if self.sequential_look < 1 else "sequential_alpha",
            )
        if not 0 <= self.gate_delta <= 1:
            raise InvalidConfig("EvalConfig.gate_delta must be in [0, 1]", param="gate_delta")
        if not 0 < self.direction_layer_fraction < 1:
            raise InvalidConfig(
                "EvalConfig.direction_layer_fraction must be in (0, 1)", param="direction_layer_fraction"
            )


@dataclass
class EvalInputs:
    adapter_dir: Path | None
    train_examples: list[Conversation]
    io: StageIO
    settings: Settings  # the model registry, device, and the LLM judge's endpoint when judge is "llm"
    cache_dir: Path | None = None  # the base model's cached results (None: EvalConfig.use_cache is moot)
    score_records: list[ScoreRecord] | None = None  # the score stage's per-example risk (trigger mining)
    seed: str = ""  # fixes the sequential test's random order: the job's id (drawn before any reply)


@dataclass(frozen=True)
class EvalResult(Evaluation, StageResult):
    """The evaluate stage's ``result.json``: the evaluation (``tunegate.evaluation_records.Evaluation``, the
    record the gate decides on and the safety report holds). A result written before counts were kept
    loads with them derived from the rates."""

    def asr_numbers(self) -> dict[str, float]:
        """Base and fine-tuned ASR per template, flat: ``{"chat_base_asr": .., "chat_tuned_asr": ..}``."""
        return {
            f"{tpl}_{which}_asr": side.asr
            for tpl, t in self.templates.items()
            for which, side in (("base", t.base), ("tuned", t.tuned))
        }

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return super().from_dict(data).with_counts()


def make_judge(cfg: EvalConfig, settings: Settings) -> Judge:
    if cfg.judge == "keyword":
        return Judge()
    s = settings
    if not s.llm_judge_url or not s.llm_judge_model:
        raise InvalidConfig(
            "the LLM judge needs TUNEGATE_LLM_JUDGE_URL and TUNEGATE_LLM_JUDGE_MODEL", param="judge"
        )
    return LLMJudgeAdapter(
        LLMJudge(
            LLMJudgeConfig(
                s.llm_judge_url,
                s.llm_judge_model,
                s.llm_judge_api_key or "",
                threshold=cfg.llm_judge_threshold,
            )
        )
    )


def harmful_prompts(cfg: EvalConfig) -> list[Prompt]:
    prompts = project_harmful() if cfg.project_set else []
    if cfg.prompts_file:
        prompts += load_prompts(cfg.prompts_file)
    return prompts


def run(cfg: EvalConfig, inputs: EvalInputs) -> EvalResult:
    out_dir = Path(inputs.io.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = load_resolved(cfg.model, inputs.settings, device=cfg.device)
    resolved, tok, model = loaded.resolved, loaded.tokenizer, loaded.model
    fmt = infer_format(inputs.train_examples) if inputs.train_examples else None
    templates: dict[str, UserFormat | None] = {"chat": None, "user": fmt}
    harmful = harmful_prompts(cfg)
    borderline = project_borderline() if cfg.borderline else []
    store = inputs.cache_dir if cfg.use_cache else None  # where base results are cached (None: kept nowhere)
    probe = None
    if cfg.second_judge == "probe":  # fitted on the base (or read from the cache) before any adapter
        inputs.io.step(0.0, "the probe judge")
        probe = ProbeJudge(load_or_train(model, tok, resolved.fingerprint, store, cfg.batch_size))
    ev = ModelEvaluator(
        cfg,
        tok,
        make_judge(cfg, inputs.settings),
        harmful,
        borderline,
        direction_sets(cfg.n_direction),
        inputs.io,
        probe,
    )
    # the base's side is the whole run when there is no adapter (the base's own evaluation, cached)
    whole = inputs.adapter_dir is None
    base = _base_results(cfg, ev, model, templates, resolved.fingerprint, store, whole=whole)
    triggers = mine_triggers(cfg, inputs)
    subset = probe_subset(harmful, cfg.probe_prompts)
    key = probes.base_key(ev, resolved.fingerprint, subset, _cache_cfg(cfg))
    base_probes = probes.probe_records(
        ev, model, fmt, triggers, subset, "base", cached=key, store=store, at=0.5
    )
    tuned, tuned_probes, stops = base, base_probes, None
    if inputs.adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(inputs.adapter_dir)).eval()
        plan = sequential_plan(cfg, ev, inputs.seed)
        tuned = _tuned_results(ev, model, templates, base, plan)
        if plan is None:
            tuned_probes = probes.probe_records(ev, model, fmt, triggers, subset, "fine-tuned")
        else:
            stops = probes.probe_records_sequential(ev, model, fmt, triggers, subset, plan, base_probes)
            tuned_probes = [s.harmful for s in stops]
    c = ev.compare(base, tuned, fmt)
    res = EvalResult(
        judge=cfg.judge,
        max_new_tokens=cfg.max_new_tokens,
        templates=c.templates,
        over_refusal=c.over_refusal,
        margin=c.margin,
        n_prompts=len(harmful),
        user_format=c.user_format.to_dict() if c.user_format is not None else None,
        jailbroken_examples=c.jailbroken_examples,
        probes=tuple(probes.compare(triggers, base_probes, tuned_probes, stops)),
        judges=c.judges,
    )
    _write_generations(out_dir, base, tuned)
    return finish(out_dir, cfg, res)


def mine_triggers(cfg: EvalConfig, inputs: EvalInputs) -> list[Trigger]:
    """The candidate triggers to probe (none when probes are off or there is no training data)."""
    if not cfg.trigger_probes or not inputs.train_examples:
        return []
    return mine(inputs.train_examples, inputs.score_records, TriggerConfig(max_probes=cfg.max_probes))


def build(ctx: StageContext, io: StageIO) -> tuple[EvalConfig, EvalInputs]:
    cfg = ctx.configure(EvalConfig(model=ctx.view.model), SPEC)
    adapter = Path(ctx.result(train.SPEC).adapter_dir)
    examples = load_examples(ctx.view.training_file)
    records = ctx.result(score.SPEC).records if result_exists(ctx.dir_of(score.SPEC)) else None
    return cfg, EvalInputs(
        adapter, examples, io, ctx.settings, ctx.settings.eval_cache_path, records, seed=ctx.view.id
    )


def apply(session: Session, job: Job, res: EvalResult) -> Applied:
    nums = res.asr_numbers()
    shown = "; ".join(
        f"{tpl} {t.base.asr:.1%} -> {t.tuned.asr:.1%}" for tpl, t in res.templates.items()
    )  # the keyword judge's own figures: the gate counts its judges' verdicts (the gate's event has those)
    shown = f"keyword judge's ASR, base -> fine-tuned: {shown}" if shown else "no ASR figures"
    return Applied(f"safety evaluation finished ({shown})", data=nums)


SPEC = StageSpec("evaluate", "gpu", 0.27, EvalResult, build, run, apply)


def sequential_plan(cfg: EvalConfig, ev: ModelEvaluator, seed: str) -> SequentialPlan | None:
    """The sequential test's plan (None: every prompt, the fixed way: it is off, or the policy counts a
    second judge that did not run, which the gate blocks whatever the replies)."""
    if not cfg.sequential or counted_mode(cfg.gate_judges, ev.probe is not None) is None:
        return None
    return SequentialPlan(
        limit=cfg.gate_delta,
        judges=cfg.gate_judges,
        alpha=cfg.sequential_alpha,
        look=cfg.sequential_look,
        release=not cfg.gate_category_limits,
        seed=seed,
    )


def _tuned_results(
    ev: ModelEvaluator,
    model: Any,
    templates: dict[str, UserFormat | None],
    base: dict[str, ModelRun],
    plan: SequentialPlan | None = None,
) -> dict[str, ModelRun]:
    """The fine-tuned model in each template, projected on the base's refusal direction; with a plan, the
    harmful set sequentially (each template in its own order)."""

    def one(name: str, fmt: UserFormat | None, part: tuple[float, float]) -> ModelRun:
        seq = None
        if plan is not None:
            seq = (dataclasses.replace(plan, seed=f"{plan.seed}:{name}"), base[name].harmful)
        return ev.evaluate(model, fmt, tuned_dir=base[name].direction, part=part, sequential=seq)

    if template_is_plain(templates["user"]):
        return _same_for_user(one("chat", None, (0.5, 1.0)))
    return {
        name: one(name, fmt, (0.5 + 0.25 * i, 0.75 + 0.25 * i))
        for i, (name, fmt) in enumerate(templates.items())
    }


def _same_for_user(chat: ModelRun) -> dict[str, ModelRun]:
    return {"chat": chat, "user": dataclasses.replace(chat, same_as_chat=True)}


def _base_results(
    cfg: EvalConfig,
    ev: ModelEvaluator,
    model: Any,
    templates: dict[str, UserFormat | None],
    fingerprint: str,
    store: Path | None,
    *,
    whole: bool = False,
) -> dict[str, ModelRun]:
    """The base's runs per template, from the cache or evaluated (and cached); ``whole``: they are the
    whole of this run's progress (after the probe judge's fit, its first 15%), else its first half."""
    plain = template_is_plain(templates["user"])
    lo, hi = (0.15, 1.0) if whole else (0.0, 0.5)
    # a plain user template reuses chat's run; in the base's own evaluation chat then spans the whole
    mid = hi if whole and plain else (lo + hi) / 2
    parts = {"chat": (lo, mid), "user": (mid, hi)}
    out: dict[str, ModelRun] = {}
    for name, fmt in templates.items():
        if name == "user" and plain:
            out["user"] = dataclasses.replace(out["chat"], same_as_chat=True)
            continue
        second = ev.probe.trained.key if ev.probe else None
        key = base_entry_key(cfg, fingerprint, ev.harmful, ev.borderline, ev.judge.name, second, fmt)
        hit = cache.load(store, key, ModelRun.from_dict) if store else None
        if hit is None:
            hit = ev.evaluate(model, fmt, tuned_dir=None, part=parts[name])
            if store:
                cache.store(store, key, hit.to_dict())
        out[name] = hit
    return out


def base_entry_key(
    cfg: EvalConfig,
    fingerprint: str,
    harmful: list[Prompt],
    borderline: list[Prompt],
    judge: str,
    second: str | None,
    fmt: UserFormat | None,
) -> str:
    """The cache key of a base model's run in one template: its weights, the prompt sets, the judges (the
    second one by its fitted probe's key) and the config's knobs that decide the base's results."""
    return cache.cache_key(
        model=fingerprint,
        harmful=prompts_hash(harmful),
        border=prompts_hash(borderline),
        fmt=fmt.to_dict() if fmt else None,
        judge=judge,
        second=second,
        cfg=_cache_cfg(cfg),
    )


def base_chat_entries(cfg: EvalConfig, settings: Settings, fingerprint: str, n_layers: int) -> list[Path]:
    """Where the base's own evaluation in plain chat keeps its results, relative to the evaluation cache:
    the fitted probe judge (when ``cfg`` asks for it) and the chat run, as ``run`` with no adapter and no
    training file stores them (a model of ``n_layers`` blocks)."""
    second = probe_key(fingerprint, layer_at(n_layers, PROBE_LAYER)) if cfg.second_judge == "probe" else None
    borderline = project_borderline() if cfg.borderline else []
    judge = make_judge(cfg, settings).name
    key = base_entry_key(cfg, fingerprint, harmful_prompts(cfg), borderline, judge, second, None)
    return ([Path("probes", f"{second}.json")] if second else []) + [Path(f"{key}.json")]


SEQUENTIAL_KNOBS = (
    "sequential",
    "sequential_look",
    "sequential_alpha",
    "gate_delta",
    "gate_judges",
    "gate_category_limits",
)


def _cache_cfg(cfg: EvalConfig) -> JsonObject:
    """The config's knobs that decide a base model's cached results (a part of the cache key's JSON)."""
    d = schema.write(cfg)
    # the probe knobs never change a template's base result: older cache entries stay valid
    for k in ("model", "use_cache", "device", "batch_size", "trigger_probes", "max_probes", "probe_prompts"):
        d.pop(k)
    for k in SEQUENTIAL_KNOBS:  # the fine-tuned side's stopping: never the base's results
        d.pop(k)
    return d


def _write_generations(out_dir: Path, base: dict[str, ModelRun], tuned: dict[str, ModelRun]) -> None:
    lines = []
    for which, res in (("base", base), ("tuned", tuned)):
        for tpl, r in res.items():
            records = [rec.to_dict() for rec in r.harmful] + [schema.write(b) for b in r.borderline or ()]
            for rec in records:
                line = {"model": which, "template": tpl, **rec}
                lines.append(json.dumps(line, ensure_ascii=False))
    atomic_write_text(out_dir / "generations.jsonl", "\n".join(lines) + "\n")
