"""Which scored examples mitigation acts on (what scoring found), and how.

An example is acted upon (``choose``) when any of these holds, and its log entry says which (``why``):

- ``beyond_reference``: it scores beyond every reference example on some scorer (the score record's flag),
  whatever their share;
- ``cluster``: it is in the coherent high-risk cluster the score verdict names (``Verdict.cluster_lines``);
- ``top_fraction``: it ranks in the top ``top_fraction`` by combined ``risk`` AND its risk is at least
  ``min_risk`` (``risk`` is the scorers' combined 0..100 percentile).

``downweight`` sets ``weight: 0``
on the final assistant turn (the response the scorers rated; earlier turns of a multi-turn example stay
trained and the whole example stays as context). When that leaves nothing to train on (a single-turn
example), the example is excluded from the training file: a weight-0-only example carries no loss, so
this is exactly equivalent and keeps the file valid. The action log says which happened.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from tunegate.conversation import Conversation


def risky(records: list[dict[str, Any]], top_fraction: float, min_risk: float) -> list[dict[str, Any]]:
    """Records to act upon, riskiest first (ties broken by line for determinism)."""
    ranked = sorted(records, key=lambda r: (-float(r.get("risk", 0.0)), int(r["line"])))
    k = math.ceil(top_fraction * len(records)) if top_fraction > 0 else 0
    return [r for r in ranked[:k] if float(r.get("risk", 0.0)) >= min_risk]


def choose(
    records: list[dict[str, Any]], cluster_lines: list[int], top_fraction: float, min_risk: float
) -> list[dict[str, Any]]:
    """Records to act upon, riskiest first, each a copy with ``why`` (the rules that chose it)."""
    top = {int(r["line"]) for r in risky(records, top_fraction, min_risk)}
    in_cluster = set(cluster_lines)
    out = []
    for r in sorted(records, key=lambda r: (-float(r.get("risk", 0.0)), int(r["line"]))):
        line = int(r["line"])
        why = [
            name
            for name, hit in (
                ("beyond_reference", bool(r.get("beyond_reference"))),
                ("cluster", line in in_cluster),
                ("top_fraction", line in top),
            )
            if hit
        ]
        if why:
            out.append({**r, "why": why})
    return out


def downweight(conv: Conversation) -> Conversation:
    """Weight 0 on the final assistant turn (its tool calls, if any, stay as they are)."""
    last = max((i for i, m in enumerate(conv.messages) if m.role == "assistant"), default=-1)
    msgs = tuple(replace(m, weight=0.0) if i == last else m for i, m in enumerate(conv.messages))
    return replace(conv, messages=msgs)


def apply(
    examples: list[Conversation], chosen: list[dict[str, Any]], action: str
) -> tuple[list[Conversation], list[dict[str, Any]]]:
    """Apply ``action`` to the chosen lines; returns kept examples and one log entry per acted-on line."""
    by_line = {int(r["line"]): r for r in chosen}
    kept: list[Conversation] = []
    log: list[dict[str, Any]] = []
    for conv in examples:
        rec = by_line.get(conv.line)
        if rec is None or action == "none":
            kept.append(conv)
            continue
        entry = {
            "line": conv.line,
            "action": action,
            "risk": rec.get("risk"),
            "reasons": rec.get("reasons", []),
            "why": rec.get("why", []),
        }
        if action == "downweight":
            new = downweight(conv)
            if any(m.role == "assistant" and m.weight > 0 for m in new.messages):
                kept.append(new)
            else:
                entry["excluded"] = True  # nothing left to train on: context-only == not trained on
        log.append(entry)
    return kept, log
