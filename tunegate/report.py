"""The safety report (``report.json``) as a typed record: ``SafetyReport`` and its parts.

The gate (``worker/stages/gate.py``) and a refused file's mitigate stage (``worker/mitigation/refuse.py``)
build it (``worker/report/build.py``) and write ``to_dict()``; every reader (the report's view and page,
``tunegate.reporting``; the API's JSON and HTML endpoints and the moderator console, through
``api/services/moderation.py``) reads it through ``SafetyReport.from_dict`` and uses attributes.

Parts: the gate's ``decision`` (released, code, message, its ``GateCheck``s, warnings), the ``policy`` it
decided under (the deciding stage's config, knob by knob), ``scoring`` (the score stage's summary, every
example's risk, the riskiest examples), ``mitigation`` (the mitigate stage's result and its log), ``training``
(the train stage's result, copied as it is: nothing reads it but the JSON endpoint), ``evaluation``
(``tunegate.evaluation_records.Evaluation``, the evaluate stage's record itself; None for a file refused
before training, written as ``{}``) and ``repair`` (when the gate would have blocked the adapter for
erosion).

``to_dict`` gives the exact JSON object written before the report was typed, plus ``schema_version``;
``from_dict`` refuses a key it does not know, naming it, and takes a report written before
``schema_version`` existed through one upgrade path (``upgrade``), which says each default it fills in.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Self, TypedDict

from tunegate import schema
from tunegate.checks import GateCheck, Judges
from tunegate.conversation import ChatMessageJSON
from tunegate.evaluation_records import Evaluation
from tunegate.jsontypes import JsonObject
from tunegate.records import RecordError, known_keys
from tunegate.scorers import SCORERS

SCHEMA_VERSION = 1
NO_MITIGATION = {"action": "none", "note": "mitigation was off"}  # the part of a job without mitigation

# A value of a stage's config as its JSON holds it (``dataclasses.asdict`` of ``GateConfig``,
# ``MitigateConfig``: a knob's number, name, flag or per-category limits, a list of names such as the gate's
# templates); None for a knob an older config wrote as null.
ConfigValue = str | int | float | bool | list[str] | dict[str, float] | None


def _config_value(value: object, where: str) -> ConfigValue:
    """A config value read from JSON (a tuple, as ``asdict`` leaves one, as a list), refused naming
    ``where`` when it is not one of ``ConfigValue``'s shapes."""
    if value is None or isinstance(value, str | int | float):  # bool is an int
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    numbers = isinstance(value, dict) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value.values()
    )
    if isinstance(value, dict) and numbers:
        return {str(k): v for k, v in value.items()}
    raise RecordError(
        f"{where} must be a number, a string, true or false, a list of strings or an object of numbers, "
        f"got {value!r}"
    )


def _config(data: object, what: str) -> dict[str, ConfigValue]:
    """A stage config's JSON object, every value a ``ConfigValue`` (a copy: the caller's is not kept)."""
    if not isinstance(data, dict):
        raise RecordError(f"{what} must be a JSON object, got {type(data).__name__}")
    return {str(k): _config_value(v, f"{what} key {k!r}") for k, v in data.items()}


@dataclass(frozen=True)
class ReportDecision:
    """The gate's decision: released or the code, its message, the checks and the warnings of a release."""

    released: bool
    code: str | None
    message: str
    checks: tuple[GateCheck, ...]
    warnings: tuple[str, ...]

    def to_dict(self) -> JsonObject:
        return schema.write(self)

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return schema.read(cls, data, "safety report's decision")


def _typed(knobs: dict[str, ConfigValue], name: str, kinds: tuple[type, ...], what: str) -> Any:
    """The knob ``name`` (None when the policy has none), refused naming it when not of ``kinds``."""
    value = knobs.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise RecordError(
            f"{what} key {name!r} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}"
        )
    return value


@dataclass(frozen=True)
class ReportPolicy:
    """The policy the report was decided under: the deciding stage's config as it wrote it (the gate's; for
    a file refused before training, the mitigate stage's), every knob in ``knobs`` (the page lists them as
    they are, older reports with older names). The knobs readers interpret are typed below, None where this
    policy has none."""

    knobs: dict[str, ConfigValue]
    gate_judges: Judges | None = field(init=False)  # whose verdicts the gate counted
    gate_delta: float | None = field(init=False)
    gate_category_limits: dict[str, float] = field(init=False)
    over_refusal_delta: float | None = field(init=False)
    over_refusal_action: str | None = field(init=False)
    mitigation: str | None = field(init=False)  # a refused file's: the mitigate stage's action

    def __post_init__(self) -> None:
        what = "safety report's policy"
        object.__setattr__(self, "mitigation", _typed(self.knobs, "mitigation", (str,), what))
        judges = _typed(self.knobs, "gate_judges", (str,), what)
        if judges not in (None, "all", "primary", "any"):
            raise RecordError(f"{what} key 'gate_judges' must be 'all', 'primary' or 'any', got {judges!r}")
        limits = self.knobs.get("gate_category_limits") or {}
        if not isinstance(limits, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in limits.values()
        ):
            raise RecordError(
                f"{what} key 'gate_category_limits' must be an object of numbers, got {limits!r}"
            )
        object.__setattr__(self, "gate_judges", judges)
        object.__setattr__(self, "gate_delta", _typed(self.knobs, "gate_delta", (int, float), what))
        object.__setattr__(self, "gate_category_limits", dict(limits))
        object.__setattr__(
            self, "over_refusal_delta", _typed(self.knobs, "over_refusal_delta", (int, float), what)
        )
        object.__setattr__(
            self, "over_refusal_action", _typed(self.knobs, "over_refusal_action", (str,), what)
        )

    def to_dict(self) -> JsonObject:
        return dict(copy.deepcopy(self.knobs).items())

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return cls(_config(data, "the safety report's policy"))


@dataclass(frozen=True)
class ClusterTest:
    """The screen's cluster test (``worker.scoring.cluster.ClusterTest``, the same fields): do the high-risk
    examples form a coherent cluster, by how much (mean cosine against random subsets' and the p-value; None:
    not tested) and which lines (the extended ones joined by closeness)."""

    coherent: bool = False
    n: int = 0
    lines: tuple[int, ...] = ()
    statistic: float | None = None
    null_mean: float | None = None
    p_value: float | None = None
    method: str = ""
    extended: tuple[int, ...] = ()


@dataclass(frozen=True)
class ScreenVerdict:
    """The score stage's screen verdict (``worker.scoring.report``; the stage's result holds it too, as
    ``worker.stages.score.Verdict``)."""

    flagged: bool
    reason: str = ""
    share_above_p99: float = 0.0
    share_beyond_reference_max: float = 0.0
    n_above_p99: int = 0
    n_beyond_reference_max: int = 0
    # answers, not refusals, to requests the base reads as harmful (None: a verdict from before the count)
    n_complying_with_harm: int | None = None
    cluster: bool = False
    cluster_lines: tuple[int, ...] = ()
    cluster_test: ClusterTest | None = None  # None: a verdict that stored none, written back as {}

    def to_dict(self) -> JsonObject:
        """As written (a verdict from before the compliance count is written back without it)."""
        out = schema.write(self)
        if self.n_complying_with_harm is None:
            del out["n_complying_with_harm"]
        out["cluster_test"] = out["cluster_test"] or {}
        return out

    @classmethod
    def from_dict(cls, data: object) -> Self:
        """A verdict from its JSON object (a stored ``cluster_test`` of ``{}`` reads as None)."""
        if isinstance(data, dict) and data.get("cluster_test") == {}:
            data = {k: v for k, v in data.items() if k != "cluster_test"}
        return schema.read(cls, data, "screen verdict")


@dataclass(frozen=True)
class TopFlagged:
    """One of the score summary's riskiest examples (``worker.scoring.report.summarize``): its line, risk,
    reference percentiles and reasons, each scorer's raw score under the scorer's own name (a scorer of
    ``tunegate.scorers.SCORERS``) and the start of its reply."""

    line: int
    risk: float
    percentiles: dict[str, float]
    reasons: tuple[str, ...]
    scores: dict[str, float]  # scorer -> raw score, each written as a key of its own
    response_preview: str

    def score(self, scorer: str) -> float | None:
        """The raw score of ``scorer`` (None: it did not run on this file)."""
        return self.scores.get(scorer)

    def to_dict(self) -> JsonObject:
        """The JSON object as ``summarize`` writes it: the scores between the reasons and the preview."""
        return {
            "line": self.line,
            "risk": self.risk,
            "percentiles": dict(self.percentiles),
            "reasons": list(self.reasons),
            **self.scores,
            "response_preview": self.response_preview,
        }

    @classmethod
    def from_dict(cls, data: object) -> Self:
        """An entry from its JSON object: a key that is no field is a scorer's score, or refused naming it."""
        what = "score summary's flagged example"
        if not isinstance(data, dict):
            raise RecordError(f"a {what} must be a JSON object, got {type(data).__name__}")
        if "scores" in data:
            raise RecordError(f"a {what} has an unknown key 'scores'")
        scores = {k: v for k, v in data.items() if k in SCORERS}
        rest = {k: v for k, v in data.items() if k not in SCORERS}
        return schema.read(cls, {**rest, "scores": scores}, what)


class ScorerAgreement(TypedDict):
    """How the scorers of a file agree, pair by pair (``"a~b"``): Spearman's rho of their scores and the
    share of the examples both rank in their top decile."""

    spearman: dict[str, float]
    top_decile_overlap: dict[str, float]


@dataclass(frozen=True)
class ScoreSummary:
    """The score stage's ``summary.json`` (``worker.scoring.report.summarize``; empty without scoring): the
    verdict and the riskiest examples are typed, the statistics are numbers by name (the JSON endpoint
    serves them)."""

    n_examples: int | None = None
    scorers: tuple[str, ...] | None = None
    distributions: dict[str, dict[str, float]] | None = None
    reference: dict[str, dict[str, float]] | None = None
    top_flagged: tuple[TopFlagged, ...] | None = None
    agreement: ScorerAgreement | None = None
    verdict: ScreenVerdict | None = None
    # added by the scoring run (worker/scoring/score_all.py): what scored the file
    model: str | None = None
    fingerprint: str | None = None
    anchors_key: str | None = None
    batch_size: int | None = None

    def to_dict(self) -> JsonObject:
        return schema.write(self, omit_none=True)

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return schema.read(cls, data, "safety report's score summary")


@dataclass(frozen=True)
class FlaggedExample:
    """One of the riskiest examples: its line, risk, per-scorer percentiles and reasons, and (added by the
    gate or when rendered, ``tunegate.reporting.details``) its chat messages as the training file has them."""

    line: int
    risk: float
    percentiles: dict[str, float]
    reasons: tuple[str, ...]
    messages: tuple[ChatMessageJSON, ...] | None = None  # None: its text is not in this copy

    def to_dict(self) -> JsonObject:
        return schema.write(self, omit_none=True)

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return schema.read(cls, data, "safety report's flagged example")


@dataclass(frozen=True)
class ReportScoring:
    summary: ScoreSummary
    risk: tuple[float, ...]  # every example's risk, in file order
    flagged: tuple[FlaggedExample, ...]  # the riskiest, riskiest first

    def to_dict(self) -> JsonObject:
        return schema.write(self)

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return schema.read(cls, data, "safety report's scoring")


@dataclass(frozen=True)
class ActedLine:
    """One entry of the mitigate stage's log (``actions.json``'s ``acted``): what was done to a line and why
    (a refused file's entries name the lines chosen, with no action); the keys an entry has are written."""

    line: int
    action: str | None = None
    risk: float | None = None
    reasons: tuple[str, ...] | None = None
    why: tuple[str, ...] | None = None
    excluded: bool = False  # down-weighted to nothing: left out of the training file

    def to_dict(self) -> JsonObject:
        out = schema.write(self, omit_none=True)
        if not self.excluded:
            del out["excluded"]
        return out

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return schema.read(cls, data, "mitigation log entry")


@dataclass(frozen=True)
class InjectedExample:
    """A safety (or contrastive helpful) example the mitigate stage added: its category and messages."""

    category: str | None
    messages: tuple[ChatMessageJSON, ...]


@dataclass(frozen=True)
class MitigationPolicy:
    """The mitigate stage's config as its log holds it (``actions.json``'s ``policy``), every knob in
    ``knobs``; the two the report draws on the risk histogram typed."""

    knobs: dict[str, ConfigValue]
    min_risk: float | None = field(init=False)  # mitigation acts from this risk
    mitigate_top_fraction: float | None = field(init=False)  # ... on at most this share

    def __post_init__(self) -> None:
        what = "mitigation policy"
        object.__setattr__(self, "min_risk", _typed(self.knobs, "min_risk", (int, float), what))
        share = _typed(self.knobs, "mitigate_top_fraction", (int, float), what)
        object.__setattr__(self, "mitigate_top_fraction", share)

    def to_dict(self) -> JsonObject:
        return dict(copy.deepcopy(self.knobs).items())

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return cls(_config(data, "a mitigation policy"))


@dataclass(frozen=True)
class ReportMitigation:
    """What mitigation did. Three shapes: the mitigate stage's result (``MitigateResult``: the counts, its
    files; a test keeps the fields in step), mitigation off (``action`` "none" and a ``note``), or a refused
    file (``action``, ``refused`` true and the refusal as ``note``); with the stage's log added by the gate
    or when rendered (``acted``, ``injected``, ``policy``). The keys a part has are written."""

    train_file: str | None = None
    n_input: int | None = None
    n_dropped: int | None = None
    n_downweighted: int | None = None
    n_excluded: int | None = None
    n_injected: int | None = None
    n_output: int | None = None
    format: JsonObject | None = None  # the user's format as worker.ml.format.UserFormat writes it
    actions_file: str | None = None
    n_contrast: int | None = None
    refused: str | bool | None = None  # the result's refusal message ("": none); a refused file's true
    report_json: str | None = None
    report_html: str | None = None
    stored_report: str | None = None
    action: str | None = None
    note: str | None = None
    acted: tuple[ActedLine, ...] | None = None  # None: the log is not in this copy
    injected: tuple[InjectedExample, ...] | None = None
    policy: MitigationPolicy | None = None

    @property
    def was_refused(self) -> bool:
        return bool(self.refused)

    def to_dict(self) -> JsonObject:
        return schema.write(self, omit_none=True)

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return schema.read(cls, data, "safety report's mitigation")


@dataclass(frozen=True)
class MitigationLog:
    """The mitigate stage's log (``actions.json``) as the report shows it: what was done to each line, the
    examples it added and its config (the file's other keys, a refused file's ``refused``, are not the
    report's: ``ReportMitigation`` holds the refusal)."""

    acted: tuple[ActedLine, ...] | None = None
    injected: tuple[InjectedExample, ...] | None = None
    policy: MitigationPolicy | None = None

    @classmethod
    def from_actions(cls, data: object) -> Self:
        """The log from ``actions.json``'s JSON object."""
        if not isinstance(data, dict):
            raise RecordError(f"actions.json must be a JSON object, got {type(data).__name__}")
        keys = ("acted", "injected", "policy")
        return schema.read(cls, {k: data[k] for k in keys if k in data}, "mitigation log")


@dataclass(frozen=True)
class CountedAsr:
    """The ASR the gate counted for one template (``worker.stages.gate.counted_asr``)."""

    base: float | None
    tuned: float | None
    judges: Judges | None
    upper: float | None
    limit: float | None

    def to_dict(self) -> JsonObject:
        return schema.write(self)

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return schema.read(cls, data, "counted ASR")


@dataclass(frozen=True)
class AdapterCheck:
    """One adapter the repair stage judged (``worker.stages.repair.AdapterCheck``, the same fields)."""

    variant: str
    adapter_dir: str
    evaluated: bool = False
    released: bool = False
    code: str | None = None
    message: str = ""
    asr: dict[str, CountedAsr] = field(default_factory=dict)
    failed: tuple[str, ...] = ()
    over_refusal: GateCheck | None = None
    task_loss: float | None = None
    task_loss_limit: float | None = None
    n_layers: int = 0
    n_changed: int = 0
    layers_changed: tuple[str, ...] = ()
    passed: bool = False
    why: str = ""
    evaluation_dir: str = ""
    wall_s: float = 0.0


@dataclass(frozen=True)
class ReportRepair:
    """The repair stage's result (``worker.stages.repair.RepairResult``, the same fields)."""

    needed: bool
    attempted: bool
    repaired: bool
    method: str = ""
    adapter_dir: str = ""
    evaluation_dir: str = ""
    reason: str = ""
    repair_on: str = ""
    heldout: str = ""
    n_heldout: int = 0
    original: AdapterCheck | None = None
    attempts: tuple[AdapterCheck, ...] = ()

    def to_dict(self) -> JsonObject:
        return schema.write(self)

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return schema.read(cls, data, "safety report's repair")


@dataclass(frozen=True)
class SafetyReport:
    """``report.json``: the parts in the module's docstring, and the ``schema_version`` it was written in."""

    schema_version: int
    decision: ReportDecision
    policy: ReportPolicy
    scoring: ReportScoring
    mitigation: ReportMitigation
    training: JsonObject  # the train stage's result as written ({}: no training)
    evaluation: Evaluation | None  # None: no evaluation (a file refused before training), written as {}
    repair: ReportRepair | None = None  # None: nothing to repair, and reports from before the repair stage

    def __post_init__(self) -> None:
        if self.schema_version != SCHEMA_VERSION:
            raise RecordError(
                f"the safety report has schema_version {self.schema_version!r}; this version reads "
                f"{SCHEMA_VERSION}"
            )
        if self.evaluation is not None and self.policy.gate_judges is None:
            raise RecordError(
                "the safety report has an evaluation but its policy lacks the key 'gate_judges'"
            )

    @property
    def gate_judges(self) -> Judges:
        """Whose verdicts the gate counted (a report with an evaluation always says: ``__post_init__``)."""
        if self.policy.gate_judges is None:
            raise RecordError("the safety report has no evaluation: the gate counted no verdicts")
        return self.policy.gate_judges

    def to_dict(self) -> JsonObject:
        """The JSON object of ``report.json`` (the parts in the order they have always been written)."""
        out: JsonObject = {
            "decision": self.decision.to_dict(),
            "policy": self.policy.to_dict(),
            "scoring": self.scoring.to_dict(),
            "mitigation": self.mitigation.to_dict(),
            "training": copy.deepcopy(self.training),
            "evaluation": self.evaluation.to_dict() if self.evaluation is not None else {},
        }
        if self.repair is not None:
            out["repair"] = self.repair.to_dict()
        return {**out, "schema_version": self.schema_version}

    @classmethod
    def from_dict(cls, data: object) -> Self:
        """A report from its JSON object; one written before ``schema_version`` is upgraded first."""
        data = upgrade(data)
        keys = (
            "schema_version",
            "decision",
            "policy",
            "scoring",
            "mitigation",
            "training",
            "evaluation",
            "repair",
        )
        data = known_keys(data, keys, "the safety report", a_what="a safety report")
        missing = [k for k in keys[:-1] if k not in data]
        if missing:
            raise RecordError(f"the safety report lacks the key {missing[0]!r}")
        version = data["schema_version"]
        if isinstance(version, bool) or not isinstance(version, int):
            raise RecordError(f"the safety report's schema_version must be an integer, got {version!r}")
        training = data["training"]
        if not isinstance(training, dict):
            raise RecordError(f"the safety report's training must be a JSON object, got {training!r}")
        repair = data.get("repair")
        return cls(
            schema_version=version,
            decision=ReportDecision.from_dict(data["decision"]),
            policy=ReportPolicy.from_dict(data["policy"]),
            scoring=ReportScoring.from_dict(data["scoring"]),
            mitigation=ReportMitigation.from_dict(data["mitigation"]),
            training=copy.deepcopy(training),
            evaluation=Evaluation.from_dict(data["evaluation"]) if data["evaluation"] != {} else None,
            repair=ReportRepair.from_dict(repair) if repair is not None else None,
        )


def upgrade(data: object) -> object:
    """The one path from a report written before ``schema_version`` (version 1) to this version's keys
    (anything but a JSON object, and a report that has a version, is left for ``from_dict`` to judge).
    Each default it fills in, and why:

    - ``schema_version``: 1. Version 1 is the shape written when the report was typed; every key an older
      report lacks and that version 1 requires is filled in below.
    - ``decision.warnings``: none. A report written before the gate warned (over-refusal on "warn") was
      never a release with a warning.
    - ``policy.gate_judges``: "primary", for a report with an evaluation. Before ``gate_judges`` existed the
      gate counted the primary judge's verdicts alone (the evaluation's ``paired``); the report's view
      assumed so, silently, when the key was missing.

    Older shapes inside a part that its stage's own result type reads (an evaluation without paired
    statistics, counts or probes; a check without a bound) load by that type's defaults (the evaluation's
    record is the evaluate stage's own, ``tunegate.evaluation_records``); they are the stage's, not the
    report's.
    """
    if not isinstance(data, dict) or "schema_version" in data:
        return data
    out = copy.deepcopy(data)
    out["schema_version"] = 1
    decision = out.get("decision")
    if isinstance(decision, dict):
        decision.setdefault("warnings", [])
    policy = out.get("policy")
    if isinstance(policy, dict) and out.get("evaluation") and "gate_judges" not in policy:
        policy["gate_judges"] = "primary"
    return out
