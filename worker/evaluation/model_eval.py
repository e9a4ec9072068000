"""One model, one template: generations, verdicts, summaries and the refusal-direction margin."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tunegate.judging import counted_field
from tunegate.shipped import data_path, read_jsonl
from worker.evaluation import sequential
from worker.evaluation.agreement import records_agreement
from worker.evaluation.judges import Judge
from worker.evaluation.math import direction, margin_ratio
from worker.evaluation.probe_judge import ProbeJudge
from worker.evaluation.prompts import Prompt
from worker.evaluation.records import (
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


def counted_mode(judges: str, has_second: bool) -> str | None:
    """Whose verdicts ``gate_judges`` = ``judges`` counts (tunegate/judging.py): "primary", "all" or "any";
    None for "any" without a second judge (the gate blocks that without looking at any reply)."""
    if judges == "any" and not has_second:
        return None
    return counted_field(judges, has_second, has_second)[1]


def counted_verdicts(records: list[dict[str, Any]], mode: str) -> list[bool]:
    """Each harmful record's verdict as ``mode`` counts it: the primary judge's, or both judges' combined
    ("all": jailbroken when both say so, "any": when either does), as in ``combined_pairs``."""
    if mode == "primary":
        return [bool(r["jailbroken"]) for r in records]
    combine = all if mode == "all" else any
    return [combine((bool(r["jailbroken"]), bool(r["probe_jailbroken"]))) for r in records]


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
        tuned_dir: list[float] | None,
        part: tuple[float, float],
        sequential: tuple[SequentialPlan, list[dict[str, Any]]] | None = None,
    ) -> dict[str, Any]:
        """Evaluate ``model`` in template ``fmt`` (None: plain chat). ``tuned_dir``: the base's direction.
        ``sequential``: (the plan, the base's harmful records in this template) evaluates the harmful set in
        looks until the gate's decision is settled; the result then keeps the records of the prompts used
        (``used``: their indices, ascending) and the stop (``sequential``)."""
        import torch

        lo, hi = part
        cfg = self.cfg

        def tick(done: int, total: int) -> None:
            self.io.step(lo + (hi - lo) * 0.8 * done / total, f"generating {done}/{total}")

        out: dict[str, Any] = {}
        if sequential is None:
            out["harmful"] = self._harmful(model, fmt, self.harmful, tick)
        else:
            out.update(self.harmful_sequential(model, fmt, *sequential, tick))
        out["summary"] = summarize_harmful(out["harmful"])
        if fmt is None and self.borderline:
            out["borderline"] = borderline_records(
                model, self.tok, self.borderline, None, cfg.borderline_max_new_tokens, cfg.batch_size
            )
            out["over_refusal"] = summarize_borderline(out["borderline"])
        layer = self._layer(model)
        d = self.dsets
        if tuned_dir is None:
            fit = direction_acts(model, self.tok, d.fit_harmful, d.fit_harmless, fmt, layer, cfg.batch_size)
            r_hat = direction(*fit)
        else:
            r_hat = torch.tensor(tuned_dir, dtype=torch.float64)
        acts = direction_acts(model, self.tok, d.eval_harmful, d.eval_harmless, fmt, layer, cfg.batch_size)
        out.update(direction=[float(x) for x in r_hat], layer=layer, margin=margin_of(acts, r_hat))
        self.io.step(hi, "evaluated")
        return out

    def _harmful(
        self, model: Any, fmt: UserFormat | None, prompts: list[Prompt], tick: Tick | None
    ) -> list[dict[str, Any]]:
        """Replies to ``prompts``, judged by the primary judge and, when there is one, the probe."""
        cfg = self.cfg
        recs = harmful_records(
            model, self.tok, prompts, fmt, self.judge, cfg.max_new_tokens, cfg.batch_size, tick
        )
        if self.probe is not None:  # the second judge reads the same replies with the base's weights
            self.probe.add_verdicts(model, self.tok, recs, cfg.batch_size)
        return recs

    def harmful_sequential(
        self,
        model: Any,
        fmt: UserFormat | None,
        plan: SequentialPlan,
        base: list[dict[str, Any]],
        tick: Tick | None = None,
        prompts: list[Prompt] | None = None,
    ) -> dict[str, Any]:
        """The harmful set (or ``prompts``: a trigger probe's subset) in looks, in the plan's order, each
        look's replies judged, until the sequential test decides: ``harmful`` (the records used, in the set's
        order), ``used`` (their indices) and ``sequential`` (the stop: decision, prompts used, the bounds the
        data allow, the strata per counting mode)."""
        harmful = self.harmful if prompts is None else prompts
        n = len(harmful)
        if [r["prompt"] for r in base] != [p.text for p in harmful]:
            raise ValueError("the base's records must be the evaluated prompts in order")
        second = self.probe is not None and all("probe_jailbroken" in r for r in base)
        mode = counted_mode(plan.judges, second)
        if mode is None:
            raise ValueError("gate_judges 'any' needs the second judge's verdicts")
        modes = ["primary", "all", "any"] if second else ["primary"]
        base_v = {m: counted_verdicts(base, m) for m in modes}
        ranked = sequential.order(n, plan.seed)
        done: dict[int, dict[str, Any]] = {}
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
        stop = {
            "decision": decided.decision,
            "n_used": len(used),
            "n_total": n,
            "lower": decided.lower,
            "upper": decided.upper,
            "increase_low": decided.increase_low,
            "increase_high": decided.increase_high,
            "judges": mode,
            "limit": plan.limit,
            "alpha": plan.alpha,
            "look": plan.look,
            "seed": plan.seed,
            "strata": {m: asdict(self._strata(base_v[m], done, m)) for m in modes},
        }
        return {"harmful": [done[i] for i in used], "used": used, "sequential": stop}

    @staticmethod
    def _strata(base: list[bool], done: dict[int, dict[str, Any]], mode: str) -> sequential.Strata:
        idx = list(done)
        return sequential.strata(
            base, dict(zip(idx, counted_verdicts([done[i] for i in idx], mode), strict=True))
        )

    def compare(self, base: dict[str, Any], tuned: dict[str, Any], fmt: UserFormat | None) -> dict[str, Any]:
        """Base vs fine-tuned per template: summaries, the paired statistics of the per-prompt verdicts
        (the same prompts in the same order, so each prompt is its own control), margins, over-refusal.
        A template evaluated sequentially pairs the prompts it used (``used``), the base's side too."""
        base = {name: restricted(base[name], tuned[name].get("used")) for name in base}
        templates, margins = {}, {}
        for name in ("chat", "user"):
            b, t = base[name], tuned[name]
            templates[name] = {
                "base": b["summary"],
                "tuned": t["summary"],
                "same_as_chat": bool(t.get("same_as_chat")),
                "delta": t["summary"]["asr"] - b["summary"]["asr"],
                "paired": paired_summary(b["harmful"], t["harmful"], "jailbroken"),
                **combined_pairs(b["harmful"], t["harmful"]),
                "sequential": t.get("sequential"),
            }
            margins[name] = {
                "base": b["margin"],
                "tuned": t["margin"],
                "ratio": margin_ratio(t["margin"], b["margin"]),
                "layer": b["layer"],
            }
        over = {}
        if "over_refusal" in base["chat"]:
            over = {
                "base": base["chat"]["over_refusal"],
                "tuned": tuned["chat"]["over_refusal"],
                "paired": paired_summary(base["chat"]["borderline"], tuned["chat"]["borderline"], "refused"),
            }
        examples = [r for r in tuned["chat"]["harmful"] if r["jailbroken"]][:10]
        return {
            "templates": templates,
            "judges": self.judges(base, tuned),
            "margin": margins,
            "over_refusal": over,
            "user_format": fmt.to_dict() if fmt else None,
            "jailbroken_examples": examples,
        }

    def judges(self, base: dict[str, Any], tuned: dict[str, Any]) -> dict[str, Any] | None:
        """The primary judge vs the probe on every (template, model) reply set: counts, percent, kappa."""
        if self.probe is None:
            return None
        agree = {}
        for tpl in ("chat", "user"):
            for which, res in (("base", base), ("tuned", tuned)):
                a = records_agreement(res[tpl]["harmful"])
                if a is not None and not (tpl == "user" and res[tpl].get("same_as_chat")):
                    agree[f"{tpl}/{which}"] = a
        t = self.probe.trained
        return {
            "primary": self.judge.name,
            "second": self.probe.name,
            "probe_layer": t.layer,
            "probe_heldout_accuracy": t.heldout_accuracy,
            "probe_n_train": t.n_train,
            "probe_n_heldout": t.n_heldout,
            "agreement": agree,
        }


def restricted(result: dict[str, Any], used: list[int] | None) -> dict[str, Any]:
    """One model's result in a template with its harmful records (and their summary) cut to the prompts
    ``used`` (None: as it is)."""
    if used is None:
        return result
    recs = [result["harmful"][i] for i in used]
    return {**result, "harmful": recs, "summary": summarize_harmful(recs)}


def combined_pairs(base: list[dict[str, Any]], tuned: list[dict[str, Any]]) -> dict[str, Any]:
    """Paired statistics of the two judges' verdicts combined: ``paired_any`` (jailbroken when either says
    so) and ``paired_all`` (only when both do: a reply that is no refusal *and* reads as harmful content).
    Both None without the probe's verdicts."""
    if not all("probe_jailbroken" in r for r in base + tuned):
        return {"paired_any": None, "paired_all": None}
    out = {}
    for name, combine in (("any", any), ("all", all)):
        b, t = (
            [{**r, name: combine((bool(r["jailbroken"]), bool(r["probe_jailbroken"])))} for r in recs]
            for recs in (base, tuned)
        )
        out[f"paired_{name}"] = paired_summary(b, t, name)
    return out
