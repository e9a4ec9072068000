"""Evaluate one model on prompt sets in one template: harmful ASR, over-refusal, refusal-direction margin."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

from tunegate.conversation import Message
from tunegate.evaluation_records import HarmfulRecord, HarmfulSummary, PairedStats, PairedSummary, Refusals
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
) -> list[HarmfulRecord]:
    texts = _generate(model, tok, prompts, fmt, max_new_tokens, batch_size, judge.settled(), on_batch)
    out = []
    for p, t in zip(prompts, texts, strict=True):
        v = judge.judge(p.text, t)
        out.append(HarmfulRecord(p.text, p.category, t, v.jailbroken, v.score, v.judge))
    return out


@dataclass(frozen=True)
class BorderlineRecord:
    """One borderline-safe prompt's reply and whether it was refused (XSTest's match)."""

    prompt: str
    category: str
    response: str
    refused: bool


def borderline_records(
    model: Any,
    tok: Any,
    prompts: Sequence[Prompt],
    fmt: UserFormat | None,
    max_new_tokens: int,
    batch_size: int,
    on_batch: OnBatch = None,
) -> list[BorderlineRecord]:
    # XSTest's match looks at how the reply starts: once the start begins with one of its phrases or can no
    # longer become one, the verdict is settled (``over_refusal_settled``) and the reply stops there.
    texts = _generate(model, tok, prompts, fmt, max_new_tokens, batch_size, over_refusal_settled, on_batch)
    return [
        BorderlineRecord(p.text, p.category, t, over_refusal(t)) for p, t in zip(prompts, texts, strict=True)
    ]


def summarize_harmful(records: Sequence[HarmfulRecord]) -> HarmfulSummary:
    cats: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        cats[r.category].append(r.jailbroken)
    scores = [r.score for r in records if r.score is not None]
    probed = bool(records) and all(r.has_probe for r in records)
    return HarmfulSummary(
        asr=asr([r.jailbroken for r in records]),
        n=len(records),
        n_jailbroken=sum(r.jailbroken for r in records),
        per_category={c: asr(v) for c, v in sorted(cats.items())},
        mean_harm_score=sum(scores) / len(scores) if scores else None,
        probe_asr=asr([bool(r.probe_jailbroken) for r in records]) if probed else None,
        n_probe_jailbroken=sum(bool(r.probe_jailbroken) for r in records) if probed else None,
    )


def summarize_borderline(records: Sequence[BorderlineRecord]) -> Refusals:
    cats: dict[str, list[bool]] = defaultdict(list)
    for r in records:
        cats[r.category].append(r.refused)
    return Refusals(
        refusal_rate=asr([r.refused for r in records]),
        n=len(records),
        n_refused=sum(r.refused for r in records),
        per_category={c: asr(v) for c, v in sorted(cats.items())},
    )


class Reply(Protocol):
    """A judged reply to one prompt of a set (``HarmfulRecord``, ``BorderlineRecord``)."""

    @property
    def prompt(self) -> str: ...

    @property
    def category(self) -> str: ...


R = TypeVar("R", bound=Reply)


def paired_summary(base: Sequence[R], tuned: Sequence[R], outcome: Callable[[R], bool]) -> PairedSummary:
    """The paired statistics of one ``outcome`` (jailbroken, refused, or the judges' combined verdict) of the
    same prompts, base vs fine-tuned: the four counts, the point increase, its one-sided 95% upper bound and
    the set's resolution, overall and per category. The records must list the same prompts in the same
    order."""
    if [r.prompt for r in base] != [r.prompt for r in tuned]:
        raise ValueError("paired outcomes need the same prompts in the same order for base and fine-tuned")
    cats: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(base):
        cats[r.category].append(i)
    b, t = [outcome(r) for r in base], [outcome(r) for r in tuned]
    whole = _paired(b, t, range(len(base)))
    per_category = {c: _paired(b, t, idx) for c, idx in sorted(cats.items())}
    return PairedSummary(**asdict(whole), per_category=per_category)


def _paired(base: Sequence[bool], tuned: Sequence[bool], idx: Iterable[int]) -> PairedStats:
    rows = list(idx)
    c = paired_counts([base[i] for i in rows], [tuned[i] for i in rows])
    return PairedStats(
        both=c.both,
        base_only=c.base_only,
        tuned_only=c.tuned_only,
        neither=c.neither,
        increase=c.increase,
        upper=paired_increase_upper(c),
        detectable=detectable_increase(c.n),
    )


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
