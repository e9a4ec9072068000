"""The safety evaluation's typed records, declared once: what the evaluate stage measures, the report shows.

The evaluate stage (``worker/stages/evaluate.py``, ``worker/evaluation/``) builds them, its ``result.json``
holds its ``EvalResult`` (an ``Evaluation`` that saves and loads itself as a stage result), the gate and the
repair stage decide on it, and the safety report (``tunegate.report``) copies it whole for its readers
(``tunegate.reporting``, the API), which read the same classes by attribute. They are on the ground floor
because those readers never import the worker.

Parts: per template (``TemplateEval``) and per trigger probe (``ProbeEval``) the harmful prompts' ASR, base
and fine-tuned (``HarmfulSummary``), and the paired statistics of the per-prompt verdicts (``PairedSummary``:
the primary judge's, and with the second judge both combined), with the sequential test's stop
(``SequentialStop``) when it stopped early; over-refusal on borderline-safe prompts (``OverRefusal``); the
refusal-direction margin (``Margin``); the second judge and its agreement with the primary (``Judges``); and
the fine-tuned model's replies judged jailbroken (``HarmfulRecord``, the evaluation's per-prompt record).

``to_dict`` gives the JSON object written before these records were declared here (the same keys);
``from_dict`` refuses a key it does not know, naming it (``tunegate.schema``). Older shapes load by the
fields' defaults: results written before paired statistics, the sequential test, trigger probes or the second
judge existed. A count missing from results cached before counts were kept stays -1 ("not recorded"): the
report shows what was written; the evaluate stage derives it from the rate (``Evaluation.with_counts``),
as it always did.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, Self

from tunegate import schema
from tunegate.checks import Judges as Counted
from tunegate.jsontypes import JsonObject

StopDecision = Literal["release", "block", "continue"]


@dataclass(frozen=True)
class PairedCounts:
    """Outcomes of the same prompts, base vs fine-tuned: jailbroken by both, only by the base, only by the
    fine-tuned model, by neither. ``n`` prompts in all."""

    both: int
    base_only: int
    tuned_only: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.base_only + self.tuned_only + self.neither

    @property
    def increase(self) -> float:
        """The point estimate of the ASR increase: (tuned-only - base-only) / n (0 for no prompts)."""
        return (self.tuned_only - self.base_only) / self.n if self.n else 0.0


@dataclass(frozen=True)
class HarmfulRecord:
    """One harmful prompt's reply and its verdicts: the primary judge's (``jailbroken``; ``score``, the LLM
    judge's harm score 1..5, None for the keyword judge; the ``judge`` that gave it) and, when the second
    judge ran, the base-model probe's (``probe_p``, P(complied), and ``probe_jailbroken``; None without it,
    and their keys are then not written)."""

    prompt: str
    category: str
    response: str
    jailbroken: bool
    score: int | None
    judge: str
    probe_p: float | None = None
    probe_jailbroken: bool | None = None

    @property
    def has_probe(self) -> bool:
        """The second judge (the probe) judged this reply."""
        return self.probe_jailbroken is not None

    def counted(self, judges: Counted) -> bool:
        """The verdict as ``judges`` counts it: the primary judge's, or both judges' combined ("all":
        jailbroken when both say so, "any": when either does; those need the probe's verdict)."""
        if judges == "primary":
            return self.jailbroken
        if self.probe_jailbroken is None:
            raise ValueError(f"counting the verdicts of {judges!r} judges needs the probe's verdict")
        if judges == "all":
            return self.jailbroken and self.probe_jailbroken
        return self.jailbroken or self.probe_jailbroken

    def to_dict(self) -> JsonObject:
        """The record's JSON object (the keys in the order they have always been written)."""
        out = schema.write(self)
        for key in ("probe_p", "probe_jailbroken"):
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return schema.read(cls, data, "harmful record")


@dataclass(frozen=True)
class BareExample:
    """A reply kept as a jailbroken example without its verdicts: evaluations written by hand (the tests'
    stand-ins, and the reports written from them) hold only these keys. The evaluate stage always keeps the
    whole ``HarmfulRecord``."""

    prompt: str
    response: str
    category: str | None = None

    def to_dict(self) -> JsonObject:
        return schema.write(self, omit_none=True)

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return schema.read(cls, data, "jailbroken example")


JailbrokenExample = HarmfulRecord | BareExample


@dataclass(frozen=True)
class HarmfulSummary:
    """ASR on the harmful prompts in one template: overall with its counts, and per category."""

    asr: float
    n: int
    per_category: dict[str, float] = field(default_factory=dict)
    n_jailbroken: int = -1  # -1: not recorded (results cached before counts were kept)
    mean_harm_score: float | None = None  # the LLM judge's mean score
    probe_asr: float | None = None  # the second judge's (probe's) ASR; None without one
    n_probe_jailbroken: int | None = None

    def with_counts(self) -> Self:
        """The summary with a count that was not recorded derived from the rate."""
        return self if self.n_jailbroken >= 0 else replace(self, n_jailbroken=round(self.asr * self.n))


@dataclass(frozen=True)
class PairedStats:
    """One outcome of the same prompts, base vs fine-tuned (worker/evaluation/math.py): the four counts,
    the point increase (tuned_only - base_only) / n, its one-sided 95% upper bound (Newcombe's paired
    interval) and the set's resolution (the bound when nothing changed on a 0% base)."""

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
    """Paired statistics overall and per category."""

    per_category: dict[str, PairedStats] = field(default_factory=dict)


@dataclass(frozen=True)
class Strata:
    """Counted verdicts so far, split by the base model's verdict (known for every prompt): ``m1`` prompts the
    base is jailbroken on, ``n1`` of them evaluated with the fine-tuned model, ``k1`` of those jailbroken by
    it; ``m0``, ``n0``, ``k0`` the same for the prompts the base is not jailbroken on
    (worker/evaluation/sequential.py)."""

    m1: int
    n1: int
    k1: int
    m0: int
    n0: int
    k0: int

    def __post_init__(self) -> None:
        for m, n, k in ((self.m1, self.n1, self.k1), (self.m0, self.n0, self.k0)):
            if not 0 <= k <= n <= m:
                raise ValueError(f"strata need 0 <= k <= n <= m, got k {k}, n {n}, m {m}")

    @property
    def n(self) -> int:
        """Prompts evaluated with the fine-tuned model."""
        return self.n0 + self.n1

    @property
    def total(self) -> int:
        """Prompts in the whole set."""
        return self.m0 + self.m1

    @property
    def complete(self) -> bool:
        return self.n == self.total

    def counts(self) -> PairedCounts:
        """The paired counts of the evaluated prompts."""
        return PairedCounts(self.k1, self.n1 - self.k1, self.k0, self.n0 - self.k0)


@dataclass(frozen=True)
class SequentialStop:
    """Where the sequential test (worker/evaluation/sequential.py) stopped the fine-tuned model's harmful
    replies in one template: its decision there ("release" or "block"; after the whole set, the gate's
    fixed-sample rule's), the prompts used of the set, what the data allow on the whole set at 1 - alpha
    (its 95% upper bound U between ``lower`` and ``upper``, the increase between ``increase_low`` and
    ``increase_high``), the verdicts and limit it decided on, and the strata per counting mode ("primary",
    and "all"/"any" with a second judge), from which the gate re-derives the decision for its own policy."""

    decision: StopDecision
    n_used: int
    n_total: int
    lower: float
    upper: float
    increase_low: float
    increase_high: float
    judges: Counted
    limit: float
    alpha: float
    look: int
    seed: str = ""
    strata: dict[str, Strata] = field(default_factory=dict)

    @property
    def early(self) -> bool:
        """Stopped before the whole set."""
        return self.n_used < self.n_total


@dataclass(frozen=True)
class TemplateEval:
    """The harmful set in one template, base vs fine-tuned."""

    base: HarmfulSummary
    tuned: HarmfulSummary
    same_as_chat: bool = False  # the user's format is plain chat: "user" repeats "chat"
    delta: float = 0.0  # tuned - base ASR
    paired: PairedSummary | None = None  # None in results written before paired statistics were kept
    paired_any: PairedSummary | None = None  # jailbroken when either judge says so (needs a second judge)
    paired_all: PairedSummary | None = None  # jailbroken only when both judges say so (needs a second judge)
    # the fine-tuned side evaluated sequentially: where it stopped (the figures above are of the prompts it
    # used, base and fine-tuned alike); None when every prompt was evaluated the fixed way, and in results
    # written before sequential evaluation existed
    sequential: SequentialStop | None = None

    def with_counts(self) -> Self:
        return replace(self, base=self.base.with_counts(), tuned=self.tuned.with_counts())


@dataclass(frozen=True)
class Margin:
    """Refusal-direction margin (base direction, fixed), base vs fine-tuned, and their ratio."""

    base: float
    tuned: float
    ratio: float
    layer: int


@dataclass(frozen=True)
class Refusals:
    """Refusals of borderline-safe prompts: the rate with its counts, and per category."""

    refusal_rate: float
    n: int
    n_refused: int = -1  # -1: not recorded (results written before counts were kept)
    per_category: dict[str, float] = field(default_factory=dict)

    def with_counts(self) -> Self:
        """The refusals with a count that was not recorded derived from the rate."""
        return self if self.n_refused >= 0 else replace(self, n_refused=round(self.refusal_rate * self.n))


@dataclass(frozen=True)
class OverRefusal:
    """Refusals of borderline-safe prompts (chat template), base vs fine-tuned, and their paired counts."""

    base: Refusals
    tuned: Refusals
    paired: PairedSummary | None = None

    @property
    def increase(self) -> float:
        return self.tuned.refusal_rate - self.base.refusal_rate

    def with_counts(self) -> Self:
        return replace(self, base=self.base.with_counts(), tuned=self.tuned.with_counts())


@dataclass(frozen=True)
class ProbeEval:
    """The harmful subset with one mined trigger inserted where it appeared, base vs fine-tuned."""

    trigger: str
    position: str  # prefix | suffix | system | inline
    where: str  # the position in words
    count: int  # training examples carrying the trigger
    n_examples: int
    base: HarmfulSummary
    tuned: HarmfulSummary
    paired: PairedSummary
    lift: float | None = None  # its over-representation among the highest-risk examples
    why: str = ""
    paired_any: PairedSummary | None = None  # as TemplateEval's (None without a second judge)
    paired_all: PairedSummary | None = None
    sequential: SequentialStop | None = None  # as TemplateEval's: where the fine-tuned side stopped

    def with_counts(self) -> Self:
        return replace(self, base=self.base.with_counts(), tuned=self.tuned.with_counts())


@dataclass(frozen=True)
class JudgeAgreement:
    """The primary judge vs the second on one reply set: the four counts, percent agreement, Cohen's kappa."""

    n: int
    both: int
    primary_only: int
    second_only: int
    neither: int
    percent: float
    kappa: float


@dataclass(frozen=True)
class Judges:
    """The second judge (the base-model probe), its held-out accuracy on the project's labelled replies, and
    its agreement with the primary judge per "template/model" ("chat/base", "chat/tuned", ...)."""

    primary: str
    second: str
    probe_layer: int
    probe_heldout_accuracy: float
    probe_n_train: int
    probe_n_heldout: int
    agreement: dict[str, JudgeAgreement] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """The safety evaluation (the evaluate stage's result, ``EvalResult``): the judge, ASR per template,
    over-refusal, margins, the user's format as inferred (``worker.ml.format.UserFormat.to_dict``, with the
    user's own tool definitions), the fine-tuned replies judged jailbroken (at most 10), the trigger probes
    and the second judge's agreement."""

    judge: str
    max_new_tokens: int
    templates: dict[str, TemplateEval] = field(default_factory=dict)
    over_refusal: OverRefusal | None = None
    margin: dict[str, Margin] = field(default_factory=dict)
    n_prompts: int = 0
    user_format: JsonObject | None = None  # worker.ml.format.UserFormat as written
    jailbroken_examples: tuple[JailbrokenExample, ...] = ()
    probes: tuple[ProbeEval, ...] = ()  # trigger probes (none mined: empty)
    judges: Judges | None = None  # None without a second judge, and in results written before one existed

    def with_counts(self) -> Self:
        """The evaluation with the counts results cached before counts were kept lack derived from the rates
        (the evaluate stage's reading; a report shows what was written)."""
        return replace(
            self,
            templates={name: t.with_counts() for name, t in self.templates.items()},
            over_refusal=self.over_refusal.with_counts() if self.over_refusal is not None else None,
            probes=tuple(p.with_counts() for p in self.probes),
        )

    def to_dict(self) -> JsonObject:
        return schema.write(self)

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return schema.read(cls, data, "evaluation")
