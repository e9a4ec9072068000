"""What every stage result shares: it saves itself into its stage directory and loads itself back.

A stage is a frozen config dataclass plus ``run(cfg, inputs) -> Result``. A stage writes ``result.json``
last (atomically, after its config and artifacts), so ``result_exists(out_dir)`` means the stage finished
and may be skipped on redelivery; ``Result.load(out_dir)`` gives back the typed result, nested dataclasses
included (``tunegate.artifacts.from_jsonable``). ``to_dict`` writes every field (``tunegate.schema.write``:
a nested record through its own ``to_dict``); a result whose JSON writes a None field as an empty object
(as results have always written a missing format, repair or cluster test) names it in ``EMPTY_AS_OBJECT``;
``read_shape`` maps it back, and ``load`` applies that first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar, cast

from tunegate import schema
from tunegate.artifacts import atomic_write_json, from_jsonable, read_json, save_config
from tunegate.errors import TunegateError
from tunegate.jsontypes import JsonObject

RESULT_NAME = "result.json"


class StageResult:
    """Base of every stage's result dataclass: ``result.json`` holds ``to_dict()``."""

    EMPTY_AS_OBJECT: ClassVar[tuple[str, ...]] = ()  # fields whose None is written as {}

    def to_dict(self) -> JsonObject:
        out = schema.write(self)
        for name in self.EMPTY_AS_OBJECT:
            out[name] = out[name] or {}
        return out

    def save(self, out_dir: Path) -> Path:
        return atomic_write_json(Path(out_dir) / RESULT_NAME, self.to_dict())

    def failure(self) -> TunegateError | None:
        """The error a finished stage ends its job with (None: the job goes on). A local run
        (``worker.runner.run_local``) raises it; a worker ends the job through the stage's ``apply``."""
        return None

    @classmethod
    def load(cls, out_dir: Path) -> Self:
        data = read_json(Path(out_dir) / RESULT_NAME)
        assert isinstance(data, dict), f"{out_dir / RESULT_NAME} is not a JSON object"
        return cast(Self, from_jsonable(cls, cls.read_shape(data)))

    @classmethod
    def read_shape(cls, data: JsonObject) -> JsonObject:
        """``result.json``'s object as the fields read it: an ``EMPTY_AS_OBJECT`` field's ``{}`` is None."""
        return {k: v for k, v in data.items() if k not in cls.EMPTY_AS_OBJECT or v != {}}


def result_exists(out_dir: Path) -> bool:
    return (Path(out_dir) / RESULT_NAME).is_file()


R = TypeVar("R", bound=StageResult)


def finish(out_dir: Path, cfg: Any, result: R) -> R:
    """Save the config beside the artifacts, then the result (last, atomically)."""
    save_config(cfg, out_dir)
    result.save(out_dir)
    return result
