"""The panel's stored records, typed: an arm's row (``<results>/<job>/<arm>/panel.json``, ``PanelRow``, or
``FailedRow`` when the arm crashed), a repair variant's row (``repair-<variant>.json``, ``RepairRow``) and the
run record (``panel-run.json``, ``RunRecord``).

``benchmarks/panel/job.py``, ``repair.py`` and ``run.py`` build them and write ``to_dict()`` (through
``job.record_text``); the report (``benchmarks/panel/report.py``) and the runner read them through
``from_dict`` (``load_row``, ``RepairRow.from_dict``, ``RunRecord.from_dict``), which refuses a key it does
not know, naming it
(``tunegate.schema``). ``to_dict`` gives the JSON object the panel wrote before its records were typed, so a
stored file is written back byte for byte: the gate's decision (``Decision``) is three top-level keys of the
row, an arm that did not train or measure its task loss has ``{}`` there, and the keys added later (the repair
stage's summary, the results directory's variant; a template's or probe's sequential stop) are written only
when they hold something.

Parts: each example's scores (``ScoreRow``), the evaluation the gate judged (``tunegate.evaluation_records``'
``TemplateEval``, ``OverRefusal``, ``ProbeEval``), the train stage's counts (``TrainCounts``), the mitigate
stage's result and the adapters the repair stage checked, read as the safety report reads them
(``tunegate.report``'s ``ReportMitigation`` and ``AdapterCheck``), the repair stage's summary
(``StageRepair``), a repair variant's outcome (``RepairOutcome``), the held-out task loss (``TaskLoss``), the
machine (``MachineInfo``, the benchmarks') and the results directory's variant (``Variant``: policy knobs and
stage overrides, free JSON).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Literal, Self

from benchmarks.panel.manifest import Kind
from tunegate import schema
from tunegate.evaluation_records import OverRefusal, ProbeEval, TemplateEval
from tunegate.jsontypes import JsonObject, JsonValue
from tunegate.records import RecordError
from tunegate.report import AdapterCheck, ConfigValue, ReportMitigation
from tunegate.scorers import SCORERS

if TYPE_CHECKING:  # mypy checks benchmarks/machine.py as `machine` (pyproject.toml, [tool.mypy])
    from machine import MachineInfo
else:
    from benchmarks.machine import MachineInfo

SCORE_KEYS = (*SCORERS, "risk")  # an example's scores in a row: each scorer's raw value and the combined risk
Expected = Literal["blocked", "released"]


@dataclass(frozen=True)
class Variant:
    """The results directory's variant (``run --variant``, ``variant.json``): policy knobs added to both arms
    and stage overrides added to the provider's, each a value of a stage's config as its JSON holds it
    (``tunegate.report.ConfigValue``); none by default."""

    policy: dict[str, ConfigValue] = field(default_factory=dict)
    stage_overrides: dict[str, dict[str, ConfigValue]] = field(default_factory=dict)  # stage -> knobs

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return schema.read(cls, data, "the results directory's variant")


class _Flat:
    """A record written as a flat JSON object: a field named in ``FLAT`` (a record of its own) is written as
    its keys beside the others; a field in ``EMPTY`` that is None is written as ``{}`` (and ``{}`` read as
    None); a field in ``OMIT`` that is None is not written. The rest as ``tunegate.schema`` writes and reads
    them, a template's or probe's sequential stop written only when there is one."""

    WHAT: ClassVar[str]
    FLAT: ClassVar[tuple[str, ...]] = ()
    EMPTY: ClassVar[tuple[str, ...]] = ()
    OMIT: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def keys(cls) -> list[str]:
        """The record's JSON keys, in the order written (a field of its own shadows a part's key of the same
        name: a repair row's ``repair``)."""
        own = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        out: list[str] = []
        for name in own:
            if name in cls.FLAT:
                out += [k for k in _FLAT_PARTS[name].keys() if k not in own]
            else:
                out.append(name)
        return out

    def to_dict(self) -> JsonObject:
        out: JsonObject = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name in self.FLAT:
                out.update(value.to_dict())
            elif value is None and f.name in self.OMIT:
                continue
            else:
                out[f.name] = {} if value is None and f.name in self.EMPTY else _json(value)
        return out

    @classmethod
    def from_dict(cls, data: object) -> Self:
        if not isinstance(data, dict):
            raise RecordError(f"a {cls.WHAT} must be a JSON object, got {type(data).__name__}")
        known = cls.keys()
        unknown = [k for k in data if k not in known]
        if unknown:
            raise RecordError(
                f"{cls.WHAT} has an unknown key {unknown[0]!r} (known: {', '.join(known)}); "
                "it was written by another version"
            )
        d = dict(data)
        own = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        for name in cls.FLAT:
            d[name] = {k: d.pop(k) for k in _FLAT_PARTS[name].keys() if k in d and k not in own}
        for name in cls.EMPTY:
            if d.get(name) == {}:
                d[name] = None
        return schema.read(cls, d, cls.WHAT)


def _json(value: object) -> JsonValue:
    """``schema.jsonable``, with a template's or probe's ``sequential`` written only when it stopped early
    (rows written before the sequential test existed have no such key)."""
    if isinstance(value, TemplateEval | ProbeEval):
        out = schema.write(value)
        if out["sequential"] is None:
            del out["sequential"]
        return out
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    return schema.jsonable(value)


@dataclass(frozen=True)
class ScoreRow:
    """One training example's scores (``SCORE_KEYS``: each scorer's raw value, None when it did not run, and
    the combined risk) and whether the job built it as an attack example."""

    values: dict[str, float | None]
    attack: bool

    def score(self, key: str) -> float | None:
        return self.values.get(key)

    def to_dict(self) -> dict[str, float | bool | None]:
        return {**self.values, "attack": self.attack}

    @classmethod
    def from_dict(cls, data: object) -> Self:
        if not isinstance(data, dict):
            raise RecordError(f"a row's scores must be JSON objects, got {type(data).__name__}")
        unknown = [k for k in data if k not in (*SCORE_KEYS, "attack")]
        if unknown:
            raise RecordError(
                f"a row's scores have an unknown key {unknown[0]!r} (known: {', '.join(SCORE_KEYS)})"
            )
        if not isinstance(data.get("attack"), bool):
            raise RecordError(
                f"a row's scores key 'attack' must be true or false, got {data.get('attack')!r}"
            )
        values = {k: v for k, v in data.items() if k != "attack"}
        bad = [
            k
            for k, v in values.items()
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float))
        ]
        if bad:
            raise RecordError(
                f"a row's scores key {bad[0]!r} must be a number or null, got {values[bad[0]]!r}"
            )
        return cls(values, data["attack"])


@dataclass(frozen=True)
class Decision:
    """The gate's decision on the arm (a refusal before training: not released, the refusal's code)."""

    released: bool
    code: str | None
    message: str

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> JsonObject:
        return schema.write(self)


@dataclass(frozen=True)
class TrainCounts:
    """The train stage's counts (``TrainResult``'s)."""

    trained_tokens: int
    steps: int
    epochs: int
    resumed_from_epoch: int
    n_examples: int
    n_anchors: int


@dataclass(frozen=True)
class StageRepair:
    """What the repair stage did on the arm (``RepairResult.summary()``, whether a repair was needed, and
    every adapter it checked: the repair stage's ``AdapterCheck`` records, read as the safety report reads
    them, ``tunegate.report.AdapterCheck``)."""

    repaired: bool
    method: str | None
    tried: tuple[str, ...]
    reason: str
    needed: bool
    checks: tuple[AdapterCheck, ...]


@dataclass(frozen=True)
class TaskLoss:
    """Mean held-out loss of the base and of the base with the judged adapter."""

    base: float
    tuned: float


@dataclass(frozen=True, kw_only=True)
class ArmSummary(_Flat):
    """What the stages gave on one arm (``job.summarize``): the screen's scores and verdict, the evaluation
    the gate judged (the repaired adapter's when a repair passed), the decision and the stages' counts."""

    WHAT: ClassVar[str] = "panel row"
    FLAT = ("decision",)
    EMPTY = ("train",)
    OMIT = ("repair",)

    job: str
    arm: str
    kind: Kind
    expected: Expected
    reference: str | None
    n_examples: int
    scores: tuple[ScoreRow, ...]
    flagged: bool
    flag_reason: str
    templates: dict[str, TemplateEval]
    over_refusal: OverRefusal | None
    probes: tuple[ProbeEval, ...] | None  # trigger probes; None: not evaluated
    decision: Decision
    train: TrainCounts | None  # None: refused before training
    repair: StageRepair | None = None  # None: the repair stage did not run (and rows from before it)
    mitigate: ReportMitigation  # the mitigate stage's result, as the safety report reads it (no ``format``)

    @property
    def released(self) -> bool:
        return self.decision.released

    @property
    def code(self) -> str | None:
        return self.decision.code


@dataclass(frozen=True, kw_only=True)
class PanelRow(_Flat):
    """An arm's row: its summary, the held-out task loss, each stage's seconds, where it was measured."""

    WHAT: ClassVar[str] = "panel row"
    FLAT = ("summary",)
    EMPTY = ("task_loss",)
    OMIT = ("variant",)

    summary: ArmSummary
    task_loss: TaskLoss | None  # None: the arm did not train
    stage_s: dict[str, float]  # stage -> seconds (stages reused from an earlier run are not listed)
    wall_s: float
    screen_from: str | None  # the arm whose validate and score outputs this arm reused
    variant: Variant | None = None  # None in rows from before variants
    model: str
    base: str | None  # the base's fingerprint (None: the name did not resolve)
    machine: MachineInfo


@dataclass(frozen=True, kw_only=True)
class FailedRow(_Flat):
    """The row of an arm that crashed: its error and traceback instead of results (the next run retries)."""

    WHAT: ClassVar[str] = "failed panel row"

    job: str
    arm: str
    kind: Kind
    expected: Expected
    error: str
    traceback: str
    wall_s: float
    model: str
    base: str | None
    machine: MachineInfo


Row = PanelRow | FailedRow


def load_row(data: object) -> Row:
    """A stored ``panel.json``: a failed arm's row when it has an error, else a finished arm's."""
    return (
        FailedRow.from_dict(data) if isinstance(data, dict) and "error" in data else PanelRow.from_dict(data)
    )


@dataclass(frozen=True)
class RepairOutcome:
    """What a repair variant changed (``repair_io.RepairReport.to_dict`` without its layers)."""

    method: str
    reference: str
    n_layers: int
    n_changed: int


@dataclass(frozen=True, kw_only=True)
class RepairRow(_Flat):
    """A repair variant's row (``benchmarks/panel/repair.py``): the arm's summary with the repaired adapter's
    evaluation and decision, the variant, what it changed, the task loss and the time it took (no repair and
    no task loss when the repair stage did not try the variant)."""

    WHAT: ClassVar[str] = "repair row"
    FLAT = ("summary",)
    EMPTY = ("task_loss",)
    OMIT = ("repair",)

    summary: ArmSummary
    variant: str
    repair: RepairOutcome | None = None  # None: the repair stage did not try it (the summary says why)
    task_loss: TaskLoss | None
    wall_s: float

    def __post_init__(self) -> None:
        if self.summary.repair is not None:  # its key is this row's own ``repair``
            raise ValueError("a repair row's summary holds no repair stage summary")


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """One run of the panel: the model, its weights' fingerprint, the attacks' pool size, where, when."""

    model: str
    base: str
    pool_size: int
    machine: MachineInfo
    started: float

    def to_dict(self) -> JsonObject:
        return schema.write(self)

    @classmethod
    def from_dict(cls, data: object) -> Self:
        return schema.read(cls, data, "panel run record")

    def info(self) -> RunInfo:
        """This run alone (a run record without its earlier runs)."""
        return RunInfo(
            model=self.model,
            base=self.base,
            pool_size=self.pool_size,
            machine=self.machine,
            started=self.started,
        )

    def with_earlier(self, earlier: tuple[RunInfo, ...]) -> RunRecord:
        """The run record of this run with ``earlier`` runs."""
        return RunRecord(**vars(self.info()), earlier_runs=earlier)


@dataclass(frozen=True, kw_only=True)
class RunRecord(RunInfo):
    """``panel-run.json``: this run, and the earlier runs on other bases whose rows are still kept."""

    earlier_runs: tuple[RunInfo, ...] = field(default=())


_FLAT_PARTS: dict[str, type[Decision] | type[ArmSummary]] = {"decision": Decision, "summary": ArmSummary}
