"""Evaluate one model on prompt sets in one template: harmful ASR, over-refusal, refusal-direction margin."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tunegate.conversation import Message
from worker.evaluation.direction import last_token_acts
from worker.evaluation.generate import generate_all
from worker.evaluation.judges import Judge, over_refusal, over_refusal_settled
from worker.evaluation.math import (
    asr,
    detectable_increase,
    margin,
    paired_counts,
    paired_increase_upper,
)
from worker.evaluation.prompts import Prompt
from worker.ml.format import UserFormat, render_user
from worker.ml.render import encode_prompt

OnBatch = Callable[[int, int], None] | None


def render_messages(text: str, fmt: UserFormat | None) -> list[Message]:
    """The prompt as a one-turn conversation: plain (chat template) or wrapped like the user's examples."""
    if fmt is None:
        return [Message("user", text)]
    msgs = []
    if fmt.systems and fmt.system_share >= 0.5:
        msgs.append(Message("system", fmt.systems[0][0]))
    msgs.append(Message("user", render_user(fmt, text)))
    return msgs


def prompt_ids(tok: Any, prompts: Sequence[Prompt], fmt: UserFormat | None) -> list[list[int]]:
    """Prompts as the model sees them in ``fmt``: wrapped, with the user's system prompt and tools."""
    tools = fmt.tools if fmt is not None else []
    return [encode_prompt(tok, render_messages(p.text, fmt), tools=tools) for p in prompts]


def _generate(
    model: Any,
    tok: Any,
    prompts: Sequence[Prompt],
    fmt: UserFormat | None,
    max_new_tokens: int,
    batch_size: int,
    settled: Callable[[str], bool] | None,
    on_batch: OnBatch,
) -> list[str]:
    """Greedy replies in ``fmt``; each stops once ``settled`` says its verdict is known."""
    ids = prompt_ids(tok, prompts, fmt)
    return generate_all(
        model,
        tok,
        ids,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        settled=settled,
        on_batch=on_batch,
    )


def harmful_records(
    model: Any,
    tok: Any,
    prompts: Sequence[Prompt],
    fmt: UserFormat | None,
    judge: Judge,
    max_new_tokens: int,
    batch_size: int,
    on_batch: OnBatch = None,
) -> list[dict[str, Any]]:
    texts = _generate(model, tok, prompts, fmt, max_new_tokens, batch_size, judge.settled(), on_batch)
    out = []
    for p, t in zip(prompts, texts, strict=True):
        v = judge.judge(p.text, t)
        out.append(
            {
                "prompt": p.text,
                "category": p.category,
                "response": t,
                "jailbroken": v.jailbroken,
                "score": v.score,
                "judge": v.judge,
            }
        )
    return out


def borderline_records(
    model: Any,
    tok: Any,
    prompts: Sequence[Prompt],
    fmt: UserFormat | None,
    max_new_tokens: int,
    batch_size: int,
    on_batch: OnBatch = None,
) -> list[dict[str, Any]]:
    # XSTest's match looks at how the reply starts: once the start begins with one of its phrases or can no
    # longer become one, the verdict is settled (``over_refusal_settled``) and the reply stops there.
    texts = _generate(model, tok, prompts, fmt, max_new_tokens, batch_size, over_refusal_settled, on_batch)
    return [
        {"prompt": p.text, "category": p.category, "response": t, "refused": over_refusal(t)}
        for p, t in zip(prompts, texts, strict=True)
    ]


def summarize_harmful(records: list[dict[str, Any]]) -> dict[str, Any]:
    cats: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        cats[r["category"]].append(bool(r["jailbroken"]))
    scores = [r["score"] for r in records if r.get("score") is not None]
    out: dict[str, Any] = {
        "asr": asr([r["jailbroken"] for r in records]),
        "n": len(records),
        "n_jailbroken": sum(bool(r["jailbroken"]) for r in records),
        "per_category": {c: asr(v) for c, v in sorted(cats.items())},
    }
    if scores:
        out["mean_harm_score"] = sum(scores) / len(scores)
    if records and all("probe_jailbroken" in r for r in records):
        out["probe_asr"] = asr([r["probe_jailbroken"] for r in records])
        out["n_probe_jailbroken"] = sum(bool(r["probe_jailbroken"]) for r in records)
    return out


def summarize_borderline(records: list[dict[str, Any]]) -> dict[str, Any]:
    cats: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        cats[r["category"]].append(bool(r["refused"]))
    return {
        "refusal_rate": asr([r["refused"] for r in records]),
        "n": len(records),
        "n_refused": sum(bool(r["refused"]) for r in records),
        "per_category": {c: asr(v) for c, v in sorted(cats.items())},
    }


def paired_summary(base: list[dict[str, Any]], tuned: list[dict[str, Any]], outcome: str) -> dict[str, Any]:
    """The paired statistics of one outcome (``jailbroken`` or ``refused``) of the same prompts, base vs
    fine-tuned: the four counts, the point increase, its one-sided 95% upper bound and the set's resolution,
    overall and per category. The records must list the same prompts in the same order."""
    if [r["prompt"] for r in base] != [r["prompt"] for r in tuned]:
        raise ValueError("paired outcomes need the same prompts in the same order for base and fine-tuned")
    cats: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(base):
        cats[r["category"]].append(i)
    return {
        **_paired(base, tuned, outcome, range(len(base))),
        "per_category": {c: _paired(base, tuned, outcome, idx) for c, idx in sorted(cats.items())},
    }


def _paired(
    base: list[dict[str, Any]], tuned: list[dict[str, Any]], outcome: str, idx: Iterable[int]
) -> dict[str, Any]:
    rows = list(idx)
    c = paired_counts([bool(base[i][outcome]) for i in rows], [bool(tuned[i][outcome]) for i in rows])
    return {
        "both": c.both,
        "base_only": c.base_only,
        "tuned_only": c.tuned_only,
        "neither": c.neither,
        "increase": c.increase,
        "upper": paired_increase_upper(c),
        "detectable": detectable_increase(c.n),
    }


def direction_acts(
    model: Any,
    tok: Any,
    harmful: Sequence[Prompt],
    harmless: Sequence[Prompt],
    fmt: UserFormat | None,
    layer: int,
    batch_size: int,
) -> tuple[Any, Any]:
    return (
        last_token_acts(model, tok, prompt_ids(tok, harmful, fmt), layer, batch_size),
        last_token_acts(model, tok, prompt_ids(tok, harmless, fmt), layer, batch_size),
    )


def margin_of(acts: tuple[Any, Any], r_hat: Any) -> float:
    return margin(acts[0], acts[1], r_hat)
