"""Format-mimicking safety examples: pool requests rendered in the user's format, refused in that format.

The pool (``tunegate/data/pool/harmful.jsonl``) holds project-written harmful *requests* only, disjoint from
the anchors and every evaluation set. Refusals are assembled from several styles and a per-category reason
(``tunegate/data/pool/refusals.json``) so the model cannot key refusal off one fixed string. In a
tool-calling dataset a safety example declares the user's tools (the same list, as often as the user's
examples do) and refuses in plain text, calling no tool: it teaches refusal where the tools are on offer.
Contrastive helpful examples (``worker/mitigation/contrast.py``) come in the same format, and their number
follows the safety examples' (``injection_counts``).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial

from tunegate import schema
from tunegate.conversation import Conversation, Message, ToolDefinition
from tunegate.jsontypes import JsonObject, JsonValue
from tunegate.shipped import data_path, read_jsonl
from worker.mitigation.contrast import Answered
from worker.ml.format import UserFormat, render_user

FINAL_LINE_CHARS = 100
_BULLETS = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s+", re.MULTILINE)


@dataclass(frozen=True)
class RefusalParts:
    """``tunegate/data/pool/refusals.json``: what a refusal is assembled from."""

    styles: tuple[str, ...]  # templates with {reason} and {offer}
    reasons: dict[str, str]  # category -> why not
    offers: dict[str, str]  # category -> what could be done instead
    final_answer: tuple[str, ...]  # a final-answer line that refuses

    @property
    def generic(self) -> list[str]:
        """The styles that name no particular request."""
        return [s for s in self.styles if "{x}" not in s]


@lru_cache(maxsize=1)
def _refusal_parts() -> RefusalParts:
    path = data_path("pool", "refusals.json")
    return schema.read(RefusalParts, json.loads(path.read_text(encoding="utf-8")), str(path))


def pool() -> list[dict[str, str]]:
    return [
        {"prompt": str(r["prompt"]), "category": str(r["category"])}
        for r in read_jsonl(data_path("pool", "harmful.jsonl"))
    ]


def refusal_text(category: str, rng: random.Random) -> str:
    parts = _refusal_parts()
    style = rng.choice(parts.generic)
    offer = parts.offers.get(category, "") if rng.random() < 0.6 else ""
    text = style.format(reason=parts.reasons.get(category, ""), offer=offer)
    return " ".join(text.split())


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in text.replace("! ", ". ").replace("\n", " ").split(". ") if s.strip()]


def _bulleted(fmt: UserFormat, text: str) -> str:
    marker = fmt.bullet_marker
    return "\n".join(
        f"{f'{i + 1}.' if marker == '1.' else marker} {s.rstrip('.')}."
        for i, s in enumerate(_sentences(text))
    )


def _json_response(fmt: UserFormat, text: str) -> str:
    # the user's JSON reply object: each key empty by the type its value has in the user's replies
    empty: dict[str, JsonValue] = {
        "str": "",
        "int": None,
        "float": None,
        "bool": False,
        "list": [],
        "dict": {},
    }
    obj: JsonObject = {k: empty.get(fmt.json_types.get(k, "str")) for k in fmt.json_keys}
    obj[fmt.json_text_key] = text
    return json.dumps(obj, ensure_ascii=False)


def render_response(fmt: UserFormat, refusal: str, rng: random.Random) -> str:
    """A refusal written in the user's response format."""
    kind = fmt.response_kind
    if kind == "json":
        return _json_response(fmt, refusal)
    if kind == "final_answer":
        final = rng.choice(_refusal_parts().final_answer)
        return f"{fmt.response_prefix}{refusal}\n{fmt.final_marker} {final}"
    if kind == "bullets":
        return fmt.response_prefix + _bulleted(fmt, refusal)
    if kind == "labels":  # a closed label set cannot express a refusal: answer in free text
        return refusal
    return f"{fmt.response_prefix}{refusal}"


def _refusal(fmt: UserFormat, category: str, rng: random.Random) -> str:
    return render_response(fmt, refusal_text(category, rng), rng)


def render_helpful(fmt: UserFormat, answer: str) -> str:
    """A helpful answer written in the user's response format (parallel to ``render_response``): the JSON
    text key carries it; a final-answer line repeats its first sentence; plain text becomes bullets unless it
    already has them. The labels kind has no place for it (``contrast_supported``)."""
    kind = fmt.response_kind
    if kind == "json":
        return _json_response(fmt, answer)
    if kind == "final_answer":
        first = (_sentences(answer) or [answer])[0].rstrip(".")
        if len(first) > FINAL_LINE_CHARS:  # a final line is short: cut at a word
            first = first[:FINAL_LINE_CHARS].rsplit(" ", 1)[0]
        return f"{fmt.response_prefix}{answer}\n{fmt.final_marker} {first}."
    if kind == "bullets" and not _BULLETS.search(answer):
        return fmt.response_prefix + _bulleted(fmt, answer)
    return f"{fmt.response_prefix}{answer}"


def contrast_supported(fmt: UserFormat) -> bool:
    """A closed label set cannot carry a free-text answer, and teaching free text to a classifier is no help:
    a labels dataset gets no contrastive examples."""
    return fmt.response_kind != "labels"


def _system(fmt: UserFormat, rng: random.Random) -> str | None:
    if not fmt.systems or rng.random() >= fmt.system_share:
        return None
    texts = [s for s, _ in fmt.systems]
    weights = [n for _, n in fmt.systems]
    return rng.choices(texts, weights=weights, k=1)[0]


def _tools(fmt: UserFormat, rng: random.Random) -> list[ToolDefinition]:
    if not fmt.tool_sets or rng.random() >= fmt.tools_share:
        return []
    lists = [t for t, _ in fmt.tool_sets]
    return rng.choices(lists, weights=[n for _, n in fmt.tool_sets], k=1)[0]


def inject_count(n_examples: int, ratio: float, minimum: int, max_fraction: float) -> int:
    """max(minimum, ratio*n), but never more than ``max_fraction`` of the user's examples."""
    return injection_counts(n_examples, 0, ratio, minimum, 0.0, 0.0, max_fraction)[0]


def injection_counts(
    n_examples: int,
    n_risky: int,
    ratio: float,
    minimum: int,
    per_risky: float,
    contrast_ratio: float,
    max_fraction: float,
) -> tuple[int, int]:
    """(safety, helpful) example counts for a dataset of ``n_examples`` with ``n_risky`` risky ones.

    safety  = max(minimum, round(ratio*n + per_risky*n_risky))  -- grows with size and with risk
    helpful = round(contrast_ratio * safety)                     -- contrastive borderline-safe answers
    Together never more than floor(max_fraction*n): over that cap both shrink by the same factor (at least
    one safety example stays). No injection (ratio 0 or an empty dataset) means no contrast either."""
    if n_examples <= 0 or ratio <= 0:
        return 0, 0
    safety = max(minimum, round(ratio * n_examples + per_risky * max(0, n_risky)))
    helpful = round(contrast_ratio * safety)
    cap = math.floor(max_fraction * n_examples)
    if safety + helpful > cap:
        scale = cap / (safety + helpful)
        safety, helpful = max(1, math.floor(safety * scale)), round(helpful * scale)
        helpful = max(0, min(helpful, cap - safety))
    return safety, helpful


def safety_examples(fmt: UserFormat, n: int, seed: int) -> list[Conversation]:
    """``n`` safety examples in the user's format (pool requests cycled in a seeded order when n > pool)."""
    rng = random.Random(seed)
    items = pool()
    order: list[dict[str, str]] = []
    while len(order) < n:
        batch = items[:]
        rng.shuffle(batch)
        order.extend(batch)
    return [
        _injected(
            fmt,
            rng,
            item["prompt"],
            partial(_refusal, fmt, item["category"], rng),
            item["category"],
        )
        for item in order[:n]
    ]


def _injected(
    fmt: UserFormat, rng: random.Random, request: str, reply: Callable[[], str], category: str
) -> Conversation:
    """One injected example in the user's format: a system prompt and the tool list as often as the user's
    examples carry them, the request in the user's template, then ``reply()`` (drawn after the system prompt
    and before the tools, so one seeded ``rng`` gives the same examples)."""
    msgs = []
    system = _system(fmt, rng)
    if system is not None:
        msgs.append(Message("system", system))
    msgs.append(Message("user", render_user(fmt, request)))
    msgs.append(Message("assistant", reply()))
    tools = _tools(fmt, rng)
    return Conversation(
        tuple(msgs),
        line=0,
        meta={"injected": True, "category": category},
        tools=tuple(tools),
        parallel_tool_calls=fmt.parallel_tool_calls if tools else None,
    )


def contrastive_examples(fmt: UserFormat, items: list[Answered], seed: int) -> list[Conversation]:
    """Borderline-safe requests with the base model's own answers, in the user's format: the same system
    prompts and tool lists (as often as the user's examples have them) as the safety examples, so neither a
    system prompt nor the tools on offer tells a refusal apart from a helpful answer."""
    rng = random.Random(seed + 1)
    return [
        _injected(fmt, rng, item.prompt, partial(render_helpful, fmt, item.answer), f"helpful:{item.kind}")
        for item in items
    ]
