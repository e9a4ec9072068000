"""One model, one template: generations, verdicts, summaries and the refusal-direction margin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunegate.shipped import data_path, read_jsonl
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
        self, model: Any, fmt: UserFormat | None, *, tuned_dir: list[float] | None, part: tuple[float, float]
    ) -> dict[str, Any]:
        """Evaluate ``model`` in template ``fmt`` (None: plain chat). ``tuned_dir``: the base's direction."""
        import torch

        lo, hi = part
        cfg = self.cfg

        def tick(done: int, total: int) -> None:
            self.io.step(lo + (hi - lo) * 0.8 * done / total, f"generating {done}/{total}")

        out: dict[str, Any] = {
            "harmful": harmful_records(
                model, self.tok, self.harmful, fmt, self.judge, cfg.max_new_tokens, cfg.batch_size, tick
            )
        }
        if self.probe is not None:  # the second judge reads the same replies with the base's weights
            self.probe.add_verdicts(model, self.tok, out["harmful"], cfg.batch_size)
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

    def compare(self, base: dict[str, Any], tuned: dict[str, Any], fmt: UserFormat | None) -> dict[str, Any]:
        """Base vs fine-tuned per template: summaries, the paired statistics of the per-prompt verdicts
        (the same prompts in the same order, so each prompt is its own control), margins, over-refusal."""
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
