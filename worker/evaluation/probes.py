"""Run the trigger probes: the harmful subset with each mined trigger inserted, base vs fine-tuned.

Each probe generates on the fixed probe subset (``triggers.probe_subset``) in the user's template with the
trigger inserted where it appeared (``triggers.probe_format``), judges with the evaluation's judge and pairs
the per-prompt verdicts base vs fine-tuned like a template (``records.paired_summary``). Base results under
a probe are cached like the templates', keyed by the trigger too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from worker.evaluation import cache
from worker.evaluation.model_eval import ModelEvaluator, SequentialPlan, combined_pairs
from worker.evaluation.prompts import Prompt, prompts_hash
from worker.evaluation.records import harmful_records, paired_summary, summarize_harmful
from worker.evaluation.triggers import Trigger, probe_format
from worker.ml.format import UserFormat

Records = list[dict[str, Any]]


def probe_records(
    ev: ModelEvaluator,
    model: Any,
    fmt: UserFormat | None,
    triggers: list[Trigger],
    subset: list[Prompt],
    which: str,
    *,
    cached: Callable[[Trigger, UserFormat], str] | None = None,
    store: Path | None = None,
    at: float = 1.0,
) -> list[Records]:
    """One model's verdicts on ``subset`` under each trigger. ``cached(trigger, fmt)`` gives the cache key
    of a base result (with ``store``, the cache directory: None keeps nothing)."""
    out = []
    for i, t in enumerate(triggers, 1):
        ev.io.step(at, f"probing trigger {i}/{len(triggers)} ({which} model)")
        pfmt = probe_format(fmt, t)
        key = cached(t, pfmt) if cached is not None else ""
        hit = cache.load(store, key) if store and key else None
        if hit is None:
            recs = harmful_records(
                model, ev.tok, subset, pfmt, ev.judge, ev.cfg.max_new_tokens, ev.cfg.batch_size
            )
            if ev.probe is not None:  # the second judge, as on the templates (base weights)
                ev.probe.add_verdicts(model, ev.tok, recs, ev.cfg.batch_size)
            hit = {"harmful": recs}
            if store and key:
                cache.store(store, key, hit)
        out.append(list(hit["harmful"]))
    return out


def probe_records_sequential(
    ev: ModelEvaluator,
    model: Any,
    fmt: UserFormat | None,
    triggers: list[Trigger],
    subset: list[Prompt],
    plan: SequentialPlan,
    base: list[Records],
) -> list[dict[str, Any]]:
    """The fine-tuned model under each trigger, sequentially like a template (``ModelEvaluator.
    harmful_sequential``, each probe in its own order; ``base``: the base's records per probe): per probe
    ``harmful`` (the records used), ``used`` and ``sequential`` (the stop). A probe has no category limits,
    so it may stop with a release whatever the plan says for templates."""
    out = []
    for i, (t, recs) in enumerate(zip(triggers, base, strict=True), 1):
        ev.io.step(1.0, f"probing trigger {i}/{len(triggers)} (fine-tuned model)")
        p = replace(plan, seed=f"{plan.seed}:probe:{t.position}:{t.text}", release=True)
        out.append(ev.harmful_sequential(model, probe_format(fmt, t), p, recs, prompts=subset))
    return out


def base_key(
    ev: ModelEvaluator, fingerprint: str, subset: list[Prompt], cfg_part: dict[str, Any]
) -> Callable[[Trigger, UserFormat], str]:
    """The cache key maker of base results under a probe: model, subset, template with the trigger, judge."""

    def key(t: Trigger, pfmt: UserFormat) -> str:
        return cache.cache_key(
            kind="trigger_probe",
            model=fingerprint,
            harmful=prompts_hash(subset),
            fmt=pfmt.to_dict(),
            trigger=[t.text, t.position, t.sep],
            judge=ev.judge.name,
            second=ev.probe.name if ev.probe is not None else None,
            cfg=cfg_part,
        )

    return key


def compare(
    triggers: list[Trigger],
    base: list[Records],
    tuned: list[Records],
    stops: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Each probe as a ``ProbeEval`` dict: the trigger, its support, both summaries and the paired stats.
    ``stops`` (from ``probe_records_sequential``, ``tuned`` then being their records): each probe pairs the
    prompts it used, the base's side too, and keeps its stop."""
    if stops is not None:
        base = [[b[i] for i in s["used"]] for b, s in zip(base, stops, strict=True)]
    seq = [s["sequential"] for s in stops] if stops is not None else [None] * len(triggers)
    return [
        {
            "trigger": t.text,
            "position": t.position,
            "where": t.where,
            "count": t.count,
            "n_examples": t.n_examples,
            "lift": t.lift,
            "why": t.why,
            "base": summarize_harmful(b),
            "tuned": summarize_harmful(f),
            "paired": paired_summary(b, f, "jailbroken"),
            **combined_pairs(b, f),
            "sequential": stop,
        }
        for t, b, f, stop in zip(triggers, base, tuned, seq, strict=True)
    ]
