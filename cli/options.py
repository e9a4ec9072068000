"""Option parsers shared by commands; each rejects a bad value as a usage error (exit status 2) naming it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

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


def hyperparameters(**given: int | float | str | None) -> dict[str, Any]:
    """The hyperparameters that were given (already parsed by ``number_or_auto``)."""
    return {k: v for k, v in given.items() if v is not None}


def _value(text: str) -> object:
    """A policy value: JSON when it parses (numbers, true/false), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_policy(items: Iterable[str], known: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items as a dict; a malformed item or an unknown key is a usage error."""
    known = tuple(known)
    out: dict[str, Any] = {}
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


def job_policy_keys() -> tuple[str, ...]:
    """The safety knobs a job may tighten."""
    from models.policy import KNOBS

    return tuple(KNOBS)


def template(value: str) -> str:
    """``chat`` or a training JSONL file whose user format wraps the prompts."""
    if value == "chat" or Path(value).is_file():
        return value
    raise typer.BadParameter(f"{value!r} is neither 'chat' nor a training JSONL file")
