"""The single declaration of a stage (``StageSpec``) and the ordered pipeline derived from the specs.

A spec says everything the job flow needs to know about a stage: its name (also its output directory and,
prefixed, its Celery task name), the queue it runs on, its share of the job's progress bar, its typed result,
and three functions:

    build(ctx, io) -> (config, inputs)     the job's snapshot, policy and earlier results -> the stage's input
    run(config, inputs) -> Result          the pure stage (reads nothing global; writes only into io.out_dir)
    apply(session, job, result) -> Applied what the finished stage changes on the job row, and the event

``Pipeline`` orders the specs; stage lists, task names, queues, weights and the first stage all come from it.
Adding a stage is writing one spec and putting it in the list (``worker/stages/all.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from models.jobs import JobStatus
from models.tables import Job
from tunegate.errors import InvalidConfig, JobError
from tunegate.jsontypes import JsonValue
from tunegate.queue import Queue
from tunegate.settings import Settings
from worker.job_view import JobView
from worker.ml.stage_io import StageIO
from worker.stages.base import StageResult

C = TypeVar("C")
I = TypeVar("I")  # noqa: E741
R = TypeVar("R", bound=StageResult)
TASK_PREFIX = "tunegate.job."


@dataclass(frozen=True)
class Applied:
    """A finished stage's mark on its job: one event (keyed ``<stage>:done``) or one status move."""

    message: str
    data: Mapping[str, JsonValue] = field(default_factory=dict)  # the event's data (a JSON column)
    status: JobStatus | None = None  # None: a metrics event; else transition() to this status
    level: str = "info"
    error: JobError | None = None


@dataclass(frozen=True)
class StageContext:
    """What ``build`` reads: the job's snapshot, where its stages write, and the provider's settings."""

    view: JobView
    job_dir: Path
    settings: Settings

    def dir_of(self, spec: StageSpec[Any, Any, Any]) -> Path:
        return self.job_dir / spec.name

    def result(self, spec: StageSpec[Any, Any, R]) -> R:
        """An earlier stage's typed result, loaded from its directory."""
        return spec.result.load(self.dir_of(spec))

    def configure(self, cfg: C, spec: StageSpec[Any, Any, Any]) -> C:
        """``cfg`` with the provider's ``TUNEGATE_STAGE_OVERRIDES[stage]`` and then the job's effective
        safety policy applied (a policy knob is the config field of the same name)."""
        cfg = with_overrides(cfg, spec.name, self.settings)
        names = {f.name for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
        knobs = {k: v for k, v in self.view.safety.items() if k in names}
        return dataclasses.replace(cfg, **knobs) if knobs else cfg  # type: ignore[type-var]


def with_overrides(cfg: C, stage: str, settings: Settings) -> C:
    """Apply ``Settings.stage_overrides[stage]`` to a frozen stage config (re-validated). Overrides of a stage
    the pipeline does not have, or an override key that is not a field of the stage's config, are refused,
    naming them (a typo must not pass silently)."""
    from worker.stages.all import PIPELINE  # the stage names (all.py imports this module, so not above)

    PIPELINE.check_overrides(settings)
    extra = settings.stage_overrides.get(stage) or {}
    known = {f.name for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    unknown = sorted(set(extra) - known)
    if unknown:
        raise InvalidConfig(
            f"TUNEGATE_STAGE_OVERRIDES[{stage!r}] has unknown key(s) {', '.join(unknown)}; "
            f"{type(cfg).__name__} has: {', '.join(sorted(known))}",
            param=f"stage_overrides.{stage}.{unknown[0]}",
        )
    return dataclasses.replace(cfg, **extra) if extra else cfg  # type: ignore[type-var]


@dataclass(frozen=True)
class StageSpec(Generic[C, I, R]):
    name: str
    queue: Queue
    weight: float  # share of the job's overall progress bar
    result: type[R]
    build: Callable[[StageContext, StageIO], tuple[C, I]]
    run: Callable[[C, I], R]
    apply: Callable[[Session, Job, R], Applied]
    checkpoints: bool = False  # the stage saves resumable checkpoints (StageIO.on_checkpoint is wired)

    @property
    def task(self) -> str:
        """The Celery task name (stable: queued messages refer to it)."""
        return TASK_PREFIX + self.name


class Pipeline:
    """Stages in order; every list, map and number the job flow uses is derived here."""

    def __init__(self, specs: Sequence[StageSpec[Any, Any, Any]]) -> None:
        names = [s.name for s in specs]
        if not specs or len(set(names)) != len(names):
            raise ValueError(f"a pipeline needs distinct stage names, got {names}")
        if abs(sum(s.weight for s in specs) - 1.0) > 1e-6:
            raise ValueError(f"stage weights must sum to 1, got {sum(s.weight for s in specs)}")
        self.specs = tuple(specs)
        self._by_name = {s.name: s for s in specs}

    @property
    def first(self) -> StageSpec[Any, Any, Any]:
        return self.specs[0]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def __getitem__(self, name: str) -> StageSpec[Any, Any, Any]:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"no stage {name!r} in this pipeline ({', '.join(self.names)})") from None

    def check_overrides(self, settings: Settings) -> None:
        """Refuse ``TUNEGATE_STAGE_OVERRIDES`` keyed by a name that is none of these stages' (``"trian"``
        would otherwise be ignored): every reader of the overrides (the stages, the base model's caches,
        the demo, the benchmarks) reads them by the name of one of the pipeline's stages."""
        unknown = sorted(set(settings.stage_overrides) - set(self.names))
        if unknown:
            raise InvalidConfig(
                f"TUNEGATE_STAGE_OVERRIDES names unknown stage(s) {', '.join(map(repr, unknown))}; "
                f"the stages are: {', '.join(self.names)}",
                param=f"stage_overrides.{unknown[0]}",
            )

    def after(self, spec: StageSpec[Any, Any, Any]) -> StageSpec[Any, Any, Any] | None:
        i = self.specs.index(spec)
        return self.specs[i + 1] if i + 1 < len(self.specs) else None

    def progress(self, name: str, fraction: float) -> float:
        """The job's 0..1 progress when stage ``name`` is ``fraction`` done."""
        spec = self[name]
        done = sum(s.weight for s in self.specs[: self.specs.index(spec)])
        return round(min(1.0, done + spec.weight * max(0.0, min(1.0, fraction))), 4)

    def by_task(self, task: str) -> StageSpec[Any, Any, Any]:
        return self[task.removeprefix(TASK_PREFIX)]
