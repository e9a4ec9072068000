"""Option parsers shared by commands; each rejects a bad value as a usage error (exit status 2) naming it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from typer.core import TyperCommand, TyperOption

if TYPE_CHECKING:
    from models.records import Hyperparameters

from tunegate.jsontypes import JsonObject, JsonValue

T = TypeVar("T")

# Hyperparameter -> its type when not "auto" (the OpenAI fine-tuning hyperparameters).
HYPERPARAMETERS: dict[str, type[int] | type[float]] = {
    "n_epochs": int,
    "batch_size": int,
    "learning_rate_multiplier": float,
}


class JudgeName(StrEnum):
    """How ``tunegate eval`` decides that a reply complied with a harmful request."""

    keyword = "keyword"
    llm = "llm"


def number_or_auto(kind: type[int] | type[float]) -> Callable[[str | None], int | float | str | None]:
    """A callback accepting ``auto`` or a positive number of ``kind``."""

    def parse(value: str | None) -> int | float | str | None:
        if value is None or value == "auto":
            return value
        try:
            number = kind(value)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise typer.BadParameter(f"{value!r} is not {what} or 'auto'") from None
        if number <= 0:
            raise typer.BadParameter(f"{value!r} must be positive")
        return number

    return parse


def hyperparameters(**given: int | float | str | None) -> Hyperparameters:
    """The hyperparameters that were given (already parsed by ``number_or_auto``)."""
    from models.records import as_hyperparameters

    return as_hyperparameters(given)


def _value(text: str) -> JsonValue:
    """A policy value: JSON when it parses (numbers, true/false), else the plain string."""
    try:
        value: JsonValue = json.loads(text)
    except json.JSONDecodeError:
        return text
    return value


def parse_policy(items: Iterable[str], known: Iterable[str]) -> JsonObject:
    """``KEY=VALUE`` items as a JSON object (what the service takes as a policy); a malformed item or an
    unknown key is a usage error."""
    known = tuple(known)
    out: JsonObject = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="'--policy'")
        if key not in known:
            raise typer.BadParameter(
                f"unknown policy key {key!r} (known: {', '.join(known)})", param_hint="'--policy'"
            )
        out[key] = _value(value)
    return out


def checked_job_policy(items: Iterable[str]) -> JsonObject:
    """A job's ``--policy`` items, each knob's name and value checked as the service checks them (whether a
    value loosens the organization's policy only the service can tell)."""
    from models.policy import check_requested
    from tunegate.errors import InvalidConfig

    safety = parse_policy(items, job_policy_keys())
    try:
        check_requested(safety, param="policy")
    except InvalidConfig as exc:
        raise typer.BadParameter(exc.message, param_hint="'--policy'") from None
    return safety


def job_policy_keys() -> tuple[str, ...]:
    """The safety knobs a job may tighten."""
    from models.policy import KNOBS

    return tuple(KNOBS)


def knob_help_rows() -> list[tuple[str, str]]:
    """Each safety knob with its range, stricter direction and help, as ``models.policy.KNOBS`` has it now."""
    from models.policy import KNOBS

    rows = []
    for name, spec in KNOBS.items():
        values = (
            f"stricter: {spec.stricter}"
            if spec.kind == "rank"
            else f"{spec.range}, stricter: {spec.stricter}"
        )
        rows.append((name, f"{values}; {spec.help}"))
    return rows


class KnobsCommand(TyperCommand):
    """A command taking ``--policy KNOB=VALUE``: its help ends with the knob table, read when the help is
    shown (a knob added to ``models.policy.KNOBS`` is listed with no edit here)."""

    # Any: typer's click types live in a private module (typer._click); only public API is imported here
    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        with formatter.section("Policy knobs (--policy KNOB=VALUE)"):
            formatter.write_dl(knob_help_rows())
        super().format_epilog(ctx, formatter)


def scorer_names() -> str:
    """Every scorer of ``tunegate.scorers.SCORERS``, comma-separated: the ``--scorers`` default."""
    from tunegate.scorers import SCORERS

    return ",".join(SCORERS)


class ScorersCommand(TyperCommand):
    """A command taking ``--scorers``: its default (every scorer; the signature's is a placeholder) and the
    ``{scorers}`` in its help are read from ``tunegate.scorers.SCORERS`` when the command is built, as typer
    does for each run and each help (a scorer added there is offered with no edit here)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperOption) and param.name == "scorers":
                param.default = scorer_names()
                param.help = (param.help or "").format(scorers=scorer_names())


class KnobsScorersCommand(KnobsCommand, ScorersCommand):
    """A command taking both ``--policy`` and ``--scorers`` (``tunegate finetune``)."""


def template(value: str) -> str:
    """``chat`` or a training JSONL file whose user format wraps the prompts."""
    if value == "chat" or Path(value).is_file():
        return value
    raise typer.BadParameter(f"{value!r} is neither 'chat' nor a training JSONL file")


AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of tab-separated rows.")]


def emit(items: Iterable[T], row: Callable[[T], str], as_json: bool) -> None:
    """Print ``items`` one row each, or as one JSON array (an SDK object is dumped as the API sent it)."""
    if not as_json:
        for item in items:
            typer.echo(row(item))
        return
    from pydantic import BaseModel

    dumped = [item.model_dump(mode="json") if isinstance(item, BaseModel) else item for item in items]
    typer.echo(json.dumps(dumped, indent=2, default=str))
