"""The gate's checks as typed records: ``GateCheck`` (one line of the decision) and its ``SequentialCheck``.

The gate (``worker/stages/gate.py``) builds them, its ``result.json`` and the safety report
(``tunegate.report``) hold them, and the report's view and the repair stage read their attributes. Kinds, by
``check``:

- ``asr_<template>``: the paired ASR increase's 95% upper bound (``upper``) against ``gate_delta``
  (``limit``): base and fine-tuned ASR, the prompts (``n``), the flips each way, the point ``increase``, the
  set's resolution (``detectable``), how many new jailbreaks on a 0% base would block (``flips_blocked``),
  the verdicts counted (``judges``), the sequential stop (``sequential``, when the evaluation stopped early)
  and ``no_second_judge`` (the policy counts a judge that did not run: blocked);
- ``category_<template>:<category>``: the same for one category with a limit, or ``missing`` (a limit on a
  category the evaluation did not measure: blocked);
- ``probe:<i>``: the same under a mined trigger, naming it (``trigger``, ``position``, ``where``) and its
  ``support`` of ``n_examples`` training examples;
- ``margin_<template>``: the refusal-direction margin's ``ratio`` (tuned/base) against ``limit``;
- ``over_refusal``: borderline-safe refusals, base vs fine-tuned, their ``increase`` against ``limit`` and
  the policy's ``action`` over it;
- ``training_data``: the screen's verdict (``flagged``, ``mitigated``, ``reason``);
- ``repair_share``: a refused file (``worker/mitigation/refuse.py``): ``reason``.

A field a check does not have is None and its key is not written (``missing`` and ``no_second_judge`` only
when true), so ``to_dict`` gives the exact JSON object the gate wrote before checks were typed and every
stored check loads; ``from_dict`` refuses a key it does not know, naming it. Checks written before the gate
judged paired increases (base, tuned and limit only) load as they are: their readers say so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Self

from tunegate import schema
from tunegate.jsontypes import JsonObject

Judges = Literal["all", "primary", "any"]
PREFIXES = (("asr_", "asr"), ("category_", "category"), ("probe:", "probe"), ("margin_", "margin"))


@dataclass(frozen=True)
class SequentialCheck:
    """What a sequential stop changed in an increase check: the prompts used of the set, the level, and
    whether its decision settled the gate's; with the stop's strata for the counted verdicts, what the data
    allow on the whole set (``lower``/``upper`` of its 95% upper bound, the increase's range)."""

    n_used: int
    n_total: int
    alpha: float
    decided: bool
    decision: Literal["release", "block", "continue"] | None = None
    lower: float | None = None
    upper: float | None = None
    increase_low: float | None = None
    increase_high: float | None = None

    def to_dict(self) -> JsonObject:
        return schema.write(self, omit_none=True)

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return schema.read(cls, data, "gate check's sequential stop")


@dataclass(frozen=True)
class GateCheck:
    """One check of the gate's decision (the kinds are in the module's docstring)."""

    check: str
    passed: bool
    base: float | None = None
    tuned: float | None = None
    n: int | None = None
    base_only: int | None = None
    tuned_only: int | None = None
    increase: float | None = None
    upper: float | None = None
    limit: float | None = None
    detectable: float | None = None
    sequential: SequentialCheck | None = None
    flips_blocked: int | None = None
    judges: Judges | None = None
    no_second_judge: bool = False
    missing: bool = False
    trigger: str | None = None
    position: str | None = None
    where: str | None = None
    support: int | None = None
    n_examples: int | None = None
    ratio: float | None = None
    action: Literal["fail", "warn"] | None = None
    flagged: bool | None = None
    mitigated: bool | None = None
    reason: str | None = None

    @property
    def kind(self) -> str:
        """The kind of check: asr, category, probe, margin, over_refusal, training_data or repair_share (a
        name without a prefix is its own kind)."""
        for prefix, kind in PREFIXES:
            if self.check.startswith(prefix):
                return kind
        return self.check

    @property
    def template(self) -> str:
        """The template an asr, category or margin check is of ("" for the others)."""
        if self.kind not in ("asr", "category", "margin"):
            return ""
        return self.check.partition("_")[2].partition(":")[0]

    @property
    def category(self) -> str:
        """The category of a category check ("" for the others)."""
        return self.check.partition(":")[2] if self.kind == "category" else ""

    @property
    def decided_early(self) -> bool:
        """A sequential stop decided this check."""
        return self.sequential is not None and self.sequential.decided

    def to_dict(self) -> JsonObject:
        """The JSON object the gate writes: the fields this check has (the flags only when true)."""
        out = schema.write(self, omit_none=True)
        for flag in ("no_second_judge", "missing"):
            if not out[flag]:
                del out[flag]
        return out

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return schema.read(cls, data, "gate check")
