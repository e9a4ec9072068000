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
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from tunegate.conversation import Conversation
from tunegate.jsontypes import JsonObject
from tunegate.records import ScoreRecord

Why = Literal["beyond_reference", "cluster", "top_fraction"]


@dataclass(frozen=True)
class Chosen:
    """A score record mitigation acts on, and the rules that chose it."""

    record: ScoreRecord
    why: tuple[Why, ...]

    @property
    def line(self) -> int:
        return self.record.line

    @property
    def risk(self) -> float:
        return self.record.risk

    def to_dict(self) -> JsonObject:
        """What ``actions.json`` of a refused file lists for the line."""
        return {
            "line": self.line,
            "risk": self.risk,
            "reasons": list(self.record.reasons),
            "why": list(self.why),
        }


@dataclass(frozen=True)
class Acted:
    """One entry of the action log: what was done to a line, and why."""

    line: int
    action: str  # drop or downweight
    risk: float
    reasons: tuple[str, ...]
    why: tuple[Why, ...]
    excluded: bool = False  # down-weighted to nothing: left out of the training file

    def to_dict(self) -> JsonObject:
        """The entry of ``actions.json``'s ``acted`` (``excluded`` only when it was)."""
        out: JsonObject = {
            "line": self.line,
            "action": self.action,
            "risk": self.risk,
            "reasons": list(self.reasons),
            "why": list(self.why),
        }
        if self.excluded:
            out["excluded"] = True
        return out


def _riskiest_first(records: Sequence[ScoreRecord]) -> list[ScoreRecord]:
    return sorted(records, key=lambda r: (-r.risk, r.line))


def risky(records: Sequence[ScoreRecord], top_fraction: float, min_risk: float) -> list[ScoreRecord]:
    """Records to act upon, riskiest first (ties broken by line for determinism)."""
    k = math.ceil(top_fraction * len(records)) if top_fraction > 0 else 0
    return [r for r in _riskiest_first(records)[:k] if r.risk >= min_risk]


def choose(
    records: Sequence[ScoreRecord], cluster_lines: list[int], top_fraction: float, min_risk: float
) -> list[Chosen]:
    """Records to act upon, riskiest first, each with ``why`` (the rules that chose it)."""
    top = {r.line for r in risky(records, top_fraction, min_risk)}
    in_cluster = set(cluster_lines)
    out = []
    for r in _riskiest_first(records):
        rules: tuple[tuple[Why, bool], ...] = (
            ("beyond_reference", r.beyond_reference),
            ("cluster", r.line in in_cluster),
            ("top_fraction", r.line in top),
        )
        why = tuple(name for name, hit in rules if hit)
        if why:
            out.append(Chosen(r, why))
    return out


def downweight(conv: Conversation) -> Conversation:
    """Weight 0 on the final assistant turn (its tool calls, if any, stay as they are)."""
    last = max((i for i, m in enumerate(conv.messages) if m.role == "assistant"), default=-1)
    msgs = tuple(replace(m, weight=0.0) if i == last else m for i, m in enumerate(conv.messages))
    return replace(conv, messages=msgs)


def apply(
    examples: list[Conversation], chosen: Sequence[Chosen], action: str
) -> tuple[list[Conversation], list[Acted]]:
    """Apply ``action`` to the chosen lines; returns kept examples and one log entry per acted-on line."""
    by_line = {c.line: c for c in chosen}
    kept: list[Conversation] = []
    log: list[Acted] = []
    for conv in examples:
        c = by_line.get(conv.line)
        if c is None or action == "none":
            kept.append(conv)
            continue
        excluded = False
        if action == "downweight":
            new = downweight(conv)
            if any(m.role == "assistant" and m.weight > 0 for m in new.messages):
                kept.append(new)
            else:
                excluded = True  # nothing left to train on: context-only == not trained on
        log.append(Acted(conv.line, action, c.risk, c.record.reasons, c.why, excluded))
    return kept, log
