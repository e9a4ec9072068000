"""The evaluation as the safety report holds it: the evaluate stage's result (``EvalResult``), typed.

The evaluate stage (``worker/stages/evaluate.py``) owns these records and builds them; the report copies its
result whole and the report's readers (``tunegate.reporting``, the API) are on the ground floor, which never
imports the worker, so the same fields are declared here for reading. Each class has exactly the fields of
the worker's class of the same name, with the same defaults for results written before a field existed (a
test, tests/worker/report/test_report_types.py, fails when the two drift apart); unlike the worker's, a
missing count is left at its -1 ("not recorded") rather than derived, so a report shows what was written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

from tunegate import schema


@dataclass(frozen=True)
class HarmfulSummary:
    """ASR on the harmful prompts in one template: overall with its counts, and per category."""

    asr: float
    n: int
    per_category: dict[str, float] = field(default_factory=dict)
    n_jailbroken: int = -1  # -1: not recorded (results cached before counts were kept)
    mean_harm_score: float | None = None
    probe_asr: float | None = None
    n_probe_jailbroken: int | None = None


@dataclass(frozen=True)
class PairedStats:
    """One outcome of the same prompts, base vs fine-tuned: the four counts, the point increase, its
    one-sided 95% upper bound and the set's resolution."""

    both: int
    base_only: int
    tuned_only: int
    neither: int
    increase: float
    upper: float
    detectable: float

    @property
    def n(self) -> int:
        return self.both + self.base_only + self.tuned_only + self.neither


@dataclass(frozen=True)
class PairedSummary(PairedStats):
    per_category: dict[str, PairedStats] = field(default_factory=dict)


@dataclass(frozen=True)
class Strata:
    m1: int
    n1: int
    k1: int
    m0: int
    n0: int
    k0: int


@dataclass(frozen=True)
class SequentialStop:
    """Where the sequential test stopped the fine-tuned model's harmful replies in one template."""

    decision: str
    n_used: int
    n_total: int
    lower: float
    upper: float
    increase_low: float
    increase_high: float
    judges: str
    limit: float
    alpha: float
    look: int
    seed: str = ""
    strata: dict[str, Strata] = field(default_factory=dict)


@dataclass(frozen=True)
class TemplateEval:
    base: HarmfulSummary
    tuned: HarmfulSummary
    same_as_chat: bool = False
    delta: float = 0.0
    paired: PairedSummary | None = None  # None in results written before paired statistics were kept
    paired_any: PairedSummary | None = None
    paired_all: PairedSummary | None = None
    sequential: SequentialStop | None = None


@dataclass(frozen=True)
class Margin:
    base: float
    tuned: float
    ratio: float
    layer: int


@dataclass(frozen=True)
class Refusals:
    refusal_rate: float
    n: int
    n_refused: int = -1  # -1: not recorded (results written before counts were kept)
    per_category: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class OverRefusal:
    base: Refusals
    tuned: Refusals
    paired: PairedSummary | None = None


@dataclass(frozen=True)
class ProbeEval:
    trigger: str
    position: str
    where: str
    count: int
    n_examples: int
    base: HarmfulSummary
    tuned: HarmfulSummary
    paired: PairedSummary
    lift: float | None = None
    why: str = ""
    paired_any: PairedSummary | None = None
    paired_all: PairedSummary | None = None
    sequential: SequentialStop | None = None


@dataclass(frozen=True)
class JudgeAgreement:
    n: int
    both: int
    primary_only: int
    second_only: int
    neither: int
    percent: float
    kappa: float


@dataclass(frozen=True)
class Judges:
    primary: str
    second: str
    probe_layer: int
    probe_heldout_accuracy: float
    probe_n_train: int
    probe_n_heldout: int
    agreement: dict[str, JudgeAgreement] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """The evaluate stage's result (``EvalResult``): the judge, ASR per template, over-refusal, margins, the
    trigger probes, the second judge's agreement and the fine-tuned replies judged jailbroken (as the
    evaluator wrote them: prompt, response, category ...)."""

    judge: str
    max_new_tokens: int
    templates: dict[str, TemplateEval] = field(default_factory=dict)
    over_refusal: OverRefusal | None = None
    margin: dict[str, Margin] = field(default_factory=dict)
    n_prompts: int = 0
    user_format: dict[str, Any] | None = None
    jailbroken_examples: tuple[dict[str, Any], ...] = ()
    probes: tuple[ProbeEval, ...] = ()
    judges: Judges | None = None

    def to_dict(self) -> dict[str, Any]:
        return schema.write(self)

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return schema.read(cls, data, "safety report's evaluation")
