"""Run the trigger probes: the harmful subset with each mined trigger inserted, base vs fine-tuned.

Each probe generates on the fixed probe subset (``triggers.probe_subset``) in the user's template with the
trigger inserted where it appeared (``triggers.probe_format``), judges with the evaluation's judge and pairs
the per-prompt verdicts base vs fine-tuned like a template (``records.paired_summary``). Base results under
a probe are cached like the templates', keyed by the trigger too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Self

from tunegate import schema
from tunegate.evaluation_records import HarmfulRecord, ProbeEval, SequentialStop
from tunegate.jsontypes import JsonObject
from worker.evaluation import cache
from worker.evaluation.model_eval import ModelEvaluator, SequentialPlan, combined_pairs, jailbroken
from worker.evaluation.prompts import Prompt, prompts_hash
from worker.evaluation.records import harmful_records, paired_summary, summarize_harmful
from worker.evaluation.triggers import Trigger, probe_format
from worker.ml.format import UserFormat

Records = tuple[HarmfulRecord, ...]  # one model's verdicts on the probe subset under one trigger


@dataclass(frozen=True)
class ProbeRun:
    """A base model's verdicts under one trigger as cached: ``{"harmful": [record, ...]}``."""

    harmful: Records

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return schema.read(cls, data, "cached trigger probe")


@dataclass(frozen=True)
class ProbeStop:
    """The fine-tuned model under one trigger, evaluated sequentially: the records of the prompts ``used``
    (their indices in the subset, ascending) and where it stopped."""

    harmful: Records
    used: tuple[int, ...]
    sequential: SequentialStop


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
        hit = cache.load(store, key, ProbeRun.from_dict) if store and key else None
        if hit is None:
            recs = harmful_records(
                model, ev.tok, subset, pfmt, ev.judge, ev.cfg.max_new_tokens, ev.cfg.batch_size
            )
            if ev.probe is not None:  # the second judge, as on the templates (base weights)
                recs = ev.probe.with_verdicts(model, ev.tok, recs, ev.cfg.batch_size)
            hit = ProbeRun(tuple(recs))
            if store and key:
                cache.store(store, key, schema.write(hit))
        out.append(hit.harmful)
    return out


def probe_records_sequential(
    ev: ModelEvaluator,
    model: Any,
    fmt: UserFormat | None,
    triggers: list[Trigger],
    subset: list[Prompt],
    plan: SequentialPlan,
    base: list[Records],
) -> list[ProbeStop]:
    """The fine-tuned model under each trigger, sequentially like a template (``ModelEvaluator.
    harmful_sequential``, each probe in its own order; ``base``: the base's records per probe). A probe has
    no category limits, so it may stop with a release whatever the plan says for templates."""
    out = []
    for i, (t, recs) in enumerate(zip(triggers, base, strict=True), 1):
        ev.io.step(1.0, f"probing trigger {i}/{len(triggers)} (fine-tuned model)")
        p = replace(plan, seed=f"{plan.seed}:probe:{t.position}:{t.text}", release=True)
        harmful, used, stop = ev.harmful_sequential(model, probe_format(fmt, t), p, recs, prompts=subset)
        out.append(ProbeStop(tuple(harmful), used, stop))
    return out


def base_key(
    ev: ModelEvaluator, fingerprint: str, subset: list[Prompt], cfg_part: JsonObject
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
    stops: list[ProbeStop] | None = None,
) -> list[ProbeEval]:
    """Each probe: the trigger, its support, both summaries and the paired stats. ``stops`` (from
    ``probe_records_sequential``, ``tuned`` then being their records): each probe pairs the prompts it used,
    the base's side too, and keeps its stop."""
    if stops is not None:
        base = [tuple(b[i] for i in s.used) for b, s in zip(base, stops, strict=True)]
    seq = [s.sequential for s in stops] if stops is not None else [None] * len(triggers)
    out = []
    for t, b, f, stop in zip(triggers, base, tuned, seq, strict=True):
        paired_any, paired_all = combined_pairs(b, f) or (None, None)
        out.append(
            ProbeEval(
                trigger=t.text,
                position=t.position,
                where=t.where,
                count=t.count,
                n_examples=t.n_examples,
                lift=t.lift,
                why=t.why,
                base=summarize_harmful(b),
                tuned=summarize_harmful(f),
                paired=paired_summary(b, f, jailbroken),
                paired_any=paired_any,
                paired_all=paired_all,
                sequential=stop,
            )
        )
    return out
