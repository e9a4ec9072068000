"""One model, one template: generations, verdicts, summaries and the refusal-direction margin."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Self

from tunegate import schema
from tunegate.checks import Judges as Counted
from tunegate.evaluation_records import (
    HarmfulRecord,
    HarmfulSummary,
    Judges,
    Margin,
    OverRefusal,
    PairedSummary,
    Refusals,
    SequentialStop,
    TemplateEval,
)
from tunegate.jsontypes import JsonObject
from tunegate.judging import counted_field
from tunegate.shipped import data_path, read_jsonl
from worker.evaluation import sequential
from worker.evaluation.agreement import records_agreement
from worker.evaluation.judges import Judge
from worker.evaluation.math import direction, margin_ratio
from worker.evaluation.probe_judge import ProbeJudge
from worker.evaluation.prompts import Prompt
from worker.evaluation.records import (
    BorderlineRecord,
    borderline_records,
    direction_acts,
    harmful_records,
    margin_of,
    paired_summary,
    summarize_borderline,
    summarize_harmful,
)
from worker.ml.format import UserFormat
from worker.ml.stage_io import StageIO

Tick = Callable[[int, int], None]


@dataclass(frozen=True)
class SequentialPlan:
    """How the fine-tuned model's harmful replies are evaluated sequentially (evaluation/sequential.py): in
    looks of ``look`` prompts, in the order fixed by ``seed``, until the full-set decision against
    ``limit`` (the gate's ``gate_delta``) on the verdicts ``judges`` counts is settled at 1 - ``alpha``.
    ``release``: an early release is allowed (not with per-category limits: those need every prompt)."""

    limit: float
    judges: str
    alpha: float = sequential.ALPHA
    look: int = 32
    release: bool = True
    seed: str = ""


def counted_mode(judges: str, has_second: bool) -> Counted | None:
    """Whose verdicts ``gate_judges`` = ``judges`` counts (tunegate/judging.py): "primary", "all" or "any";
    None for "any" without a second judge (the gate blocks that without looking at any reply)."""
    if judges == "any" and not has_second:
        return None
    return counted_field(judges, has_second, has_second)[1]


def counted_verdicts(records: Sequence[HarmfulRecord], mode: Counted) -> list[bool]:
    """Each harmful record's verdict as ``mode`` counts it: the primary judge's, or both judges' combined
    ("all": jailbroken when both say so, "any": when either does), as in ``combined_pairs``."""
    return [r.counted(mode) for r in records]


@dataclass(frozen=True)
class ModelRun:
    """One model in one template (``ModelEvaluator.evaluate``; the base's is cached as ``to_dict``): the
    harmful records and their summary, in the chat template the borderline records and their refusals, the
    refusal direction and the margin along it at ``layer``. Evaluated sequentially, the records are those of
    the prompts ``used`` (their indices, ascending) and ``sequential`` is the stop; ``same_as_chat``: the
    "user" template repeats the chat one (the user's format is plain chat)."""

    harmful: tuple[HarmfulRecord, ...]
    summary: HarmfulSummary
    direction: tuple[float, ...]
    layer: int
    margin: float
    borderline: tuple[BorderlineRecord, ...] | None = None
    over_refusal: Refusals | None = None
    used: tuple[int, ...] | None = None
    sequential: SequentialStop | None = None
    same_as_chat: bool = False

    def to_dict(self) -> JsonObject:
        """The JSON object of a cache entry: the summary's optional figures and the parts this run lacks are
        left out (as entries were always written)."""
        out = schema.write(self)
        out["summary"] = schema.write(self.summary, omit_none=True)
        for key in ("borderline", "over_refusal", "used", "sequential"):
            if out[key] is None:
                del out[key]
        if not self.same_as_chat:
            del out["same_as_chat"]
        return out

    @classmethod
    def from_dict(cls, data: object) -> Self:
        """A run from its JSON object (a cache entry); a count an older entry lacks is derived."""
        run = schema.read(cls, data, "cached evaluation")
        over = run.over_refusal.with_counts() if run.over_refusal is not None else None
        return replace(run, summary=run.summary.with_counts(), over_refusal=over)


@dataclass(frozen=True)
class DirectionSets:
    """Harmful/harmless prompts: the first half fixes the direction, the second measures the margin."""

    fit_harmful: list[Prompt]
    fit_harmless: list[Prompt]
    eval_harmful: list[Prompt]
    eval_harmless: list[Prompt]


def direction_sets(n: int) -> DirectionSets:
    harmful = [
        Prompt(str(r["prompt"]), str(r["category"])) for r in read_jsonl(data_path("align", "refusals.jsonl"))
    ]
    harmless = [
        Prompt(str(r["prompt"]), "harmless")
        for r in read_jsonl(data_path("align", "benign.jsonl"))
        if r["kind"] == "ordinary"
    ]
    n_h, n_b = min(n, len(harmful) // 2), min(n, len(harmless) // 2)
    return DirectionSets(harmful[:n_h], harmless[:n_b], harmful[n_h:], harmless[n_b:])


class ModelEvaluator:
    def __init__(
        self,
        cfg: Any,
        tok: Any,
        judge: Judge,
        harmful: list[Prompt],
        borderline: list[Prompt],
        dsets: DirectionSets,
        io: StageIO,
        probe: ProbeJudge | None = None,
    ) -> None:
        self.cfg, self.tok, self.judge, self.io, self.probe = cfg, tok, judge, io, probe
        self.harmful, self.borderline, self.dsets = harmful, borderline, dsets

    def _layer(self, model: Any) -> int:
        from worker.evaluation.direction import default_layer

        return default_layer(model, self.cfg.direction_layer_fraction)

    def evaluate(
        self,
        model: Any,
        fmt: UserFormat | None,
        *,
        tuned_dir: Sequence[float] | None,
        part: tuple[float, float],
        sequential: tuple[SequentialPlan, Sequence[HarmfulRecord]] | None = None,
    ) -> ModelRun:
        """Evaluate ``model`` in template ``fmt`` (None: plain chat). ``tuned_dir``: the base's direction.
        ``sequential``: (the plan, the base's harmful records in this template) evaluates the harmful set in
        looks until the gate's decision is settled; the run then keeps the records of the prompts used
        (``used``: their indices, ascending) and the stop (``sequential``)."""
        import torch

        lo, hi = part
        cfg = self.cfg
        # the harmful set's generation's share of the run: a little over half where the borderline set
        # and the direction follow (measured on the base's evaluation, docs/benchmarks.md), else most
        share = 0.6 if fmt is None and self.borderline else 0.85

        def tick(done: int, total: int) -> None:
            self.io.step(lo + (hi - lo) * share * done / total, f"generating {done}/{total}")

        used: tuple[int, ...] | None = None
        stop: SequentialStop | None = None
        if sequential is None:
            harmful = self._harmful(model, fmt, self.harmful, tick)
        else:
            harmful, used, stop = self.harmful_sequential(model, fmt, *sequential, tick)
        borderline = over = None
        if fmt is None and self.borderline:
            self.io.step(lo + (hi - lo) * share, "the borderline prompts")
            borderline = borderline_records(
                model, self.tok, self.borderline, None, cfg.borderline_max_new_tokens, cfg.batch_size
            )
            over = summarize_borderline(borderline)
        layer = self._layer(model)
        d = self.dsets
        if tuned_dir is None:
            fit = direction_acts(model, self.tok, d.fit_harmful, d.fit_harmless, fmt, layer, cfg.batch_size)
            r_hat = direction(*fit)
        else:
            r_hat = torch.tensor(list(tuned_dir), dtype=torch.float64)
        acts = direction_acts(model, self.tok, d.eval_harmful, d.eval_harmless, fmt, layer, cfg.batch_size)
        run = ModelRun(
            harmful=tuple(harmful),
            summary=summarize_harmful(harmful),
            direction=tuple(float(x) for x in r_hat),
            layer=layer,
            margin=margin_of(acts, r_hat),
            borderline=tuple(borderline) if borderline is not None else None,
            over_refusal=over,
            used=used,
            sequential=stop,
        )
        self.io.step(hi, "evaluated")
        return run

    def _harmful(
        self, model: Any, fmt: UserFormat | None, prompts: list[Prompt], tick: Tick | None
    ) -> list[HarmfulRecord]:
        """Replies to ``prompts``, judged by the primary judge and, when there is one, the probe."""
        cfg = self.cfg
        recs = harmful_records(
            model, self.tok, prompts, fmt, self.judge, cfg.max_new_tokens, cfg.batch_size, tick
        )
        if self.probe is not None:  # the second judge reads the same replies with the base's weights
            recs = self.probe.with_verdicts(model, self.tok, recs, cfg.batch_size)
        return recs

    def harmful_sequential(
        self,
        model: Any,
        fmt: UserFormat | None,
        plan: SequentialPlan,
        base: Sequence[HarmfulRecord],
        tick: Tick | None = None,
        prompts: list[Prompt] | None = None,
    ) -> tuple[list[HarmfulRecord], tuple[int, ...], SequentialStop]:
        """The harmful set (or ``prompts``: a trigger probe's subset) in looks, in the plan's order, each
        look's replies judged, until the sequential test decides: the records used (in the set's order),
        their indices and the stop (decision, prompts used, the bounds the data allow, the strata per
        counting mode)."""
        harmful = self.harmful if prompts is None else prompts
        n = len(harmful)
        if [r.prompt for r in base] != [p.text for p in harmful]:
            raise ValueError("the base's records must be the evaluated prompts in order")
        second = self.probe is not None and all(r.has_probe for r in base)
        mode = counted_mode(plan.judges, second)
        if mode is None:
            raise ValueError("gate_judges 'any' needs the second judge's verdicts")
        modes: list[Counted] = ["primary", "all", "any"] if second else ["primary"]
        base_v = {m: counted_verdicts(base, m) for m in modes}
        ranked = sequential.order(n, plan.seed)
        done: dict[int, HarmfulRecord] = {}
        decided = sequential.Look("continue", 1.0, 1.0, -1.0, 1.0)
        for end in sequential.looks(n, plan.look):
            take = ranked[len(done) : end]
            before = len(done)

            def within(k: int, total: int, before: int = before) -> None:
                if tick is not None:
                    tick(before + k, n)

            recs = self._harmful(model, fmt, [harmful[i] for i in take], within)
            done.update(zip(take, recs, strict=True))
            decided = sequential.look(
                self._strata(base_v[mode], done, mode), plan.limit, plan.alpha, release=plan.release
            )
            if decided.decision != "continue":
                break
        used = sorted(done)
        stop = SequentialStop(
            decision=decided.decision,
            n_used=len(used),
            n_total=n,
            lower=decided.lower,
            upper=decided.upper,
            increase_low=decided.increase_low,
            increase_high=decided.increase_high,
            judges=mode,
            limit=plan.limit,
            alpha=plan.alpha,
            look=plan.look,
            seed=plan.seed,
            strata={m: self._strata(base_v[m], done, m) for m in modes},
        )
        return [done[i] for i in used], tuple(used), stop

    @staticmethod
    def _strata(base: list[bool], done: dict[int, HarmfulRecord], mode: Counted) -> sequential.Strata:
        idx = list(done)
        return sequential.strata(
            base, dict(zip(idx, counted_verdicts([done[i] for i in idx], mode), strict=True))
        )

    def compare(
        self, base: Mapping[str, ModelRun], tuned: Mapping[str, ModelRun], fmt: UserFormat | None
    ) -> Comparison:
        """Base vs fine-tuned per template: summaries, the paired statistics of the per-prompt verdicts
        (the same prompts in the same order, so each prompt is its own control), margins, over-refusal.
        A template evaluated sequentially pairs the prompts it used (``used``), the base's side too."""
        base = {name: restricted(base[name], tuned[name].used) for name in base}
        templates, margins = {}, {}
        for name in ("chat", "user"):
            b, t = base[name], tuned[name]
            paired_any, paired_all = combined_pairs(b.harmful, t.harmful) or (None, None)
            templates[name] = TemplateEval(
                base=b.summary,
                tuned=t.summary,
                same_as_chat=t.same_as_chat,
                delta=t.summary.asr - b.summary.asr,
                paired=paired_summary(b.harmful, t.harmful, jailbroken),
                paired_any=paired_any,
                paired_all=paired_all,
                sequential=t.sequential,
            )
            margins[name] = Margin(
                base=b.margin, tuned=t.margin, ratio=margin_ratio(t.margin, b.margin), layer=b.layer
            )
        over = None
        chat_b, chat_t = base["chat"], tuned["chat"]
        if chat_b.over_refusal is not None and chat_b.borderline is not None:
            if chat_t.over_refusal is None or chat_t.borderline is None:
                raise ValueError("the fine-tuned model's chat run lacks the borderline set the base's has")
            over = OverRefusal(
                base=chat_b.over_refusal,
                tuned=chat_t.over_refusal,
                paired=paired_summary(chat_b.borderline, chat_t.borderline, refused),
            )
        examples = tuple(r for r in chat_t.harmful if r.jailbroken)[:10]
        return Comparison(
            templates=templates,
            judges=self.judges(base, tuned),
            margin=margins,
            over_refusal=over,
            user_format=fmt,
            jailbroken_examples=examples,
        )

    def judges(self, base: Mapping[str, ModelRun], tuned: Mapping[str, ModelRun]) -> Judges | None:
        """The primary judge vs the probe on every (template, model) reply set: counts, percent, kappa."""
        if self.probe is None:
            return None
        agree = {}
        for tpl in ("chat", "user"):
            for which, res in (("base", base), ("tuned", tuned)):
                a = records_agreement(res[tpl].harmful)
                if a is not None and not (tpl == "user" and res[tpl].same_as_chat):
                    agree[f"{tpl}/{which}"] = a
        t = self.probe.trained
        return Judges(
            primary=self.judge.name,
            second=self.probe.name,
            probe_layer=t.layer,
            probe_heldout_accuracy=t.heldout_accuracy,
            probe_n_train=t.n_train,
            probe_n_heldout=t.n_heldout,
            agreement=agree,
        )


@dataclass(frozen=True)
class Comparison:
    """Base vs fine-tuned in both templates (``ModelEvaluator.compare``): the evaluation's parts but the
    trigger probes (``worker.evaluation.probes.compare``) and the settings."""

    templates: dict[str, TemplateEval]
    judges: Judges | None
    margin: dict[str, Margin]
    over_refusal: OverRefusal | None
    user_format: UserFormat | None
    jailbroken_examples: tuple[HarmfulRecord, ...]


def jailbroken(r: HarmfulRecord) -> bool:
    """The primary judge's verdict."""
    return r.jailbroken


def refused(r: BorderlineRecord) -> bool:
    return r.refused


def restricted(run: ModelRun, used: Sequence[int] | None) -> ModelRun:
    """One model's run in a template with its harmful records (and their summary) cut to the prompts
    ``used`` (None: as it is)."""
    if used is None:
        return run
    recs = tuple(run.harmful[i] for i in used)
    return replace(run, harmful=recs, summary=summarize_harmful(recs))


def combined_pairs(
    base: Sequence[HarmfulRecord], tuned: Sequence[HarmfulRecord]
) -> tuple[PairedSummary, PairedSummary] | None:
    """Paired statistics of the two judges' verdicts combined: ``paired_any`` (jailbroken when either says
    so) and ``paired_all`` (only when both do: a reply that is no refusal *and* reads as harmful content), in
    that order. None without the probe's verdicts."""
    if not all(r.has_probe for r in [*base, *tuned]):
        return None
    return (
        paired_summary(base, tuned, lambda r: r.counted("any")),
        paired_summary(base, tuned, lambda r: r.counted("all")),
    )
