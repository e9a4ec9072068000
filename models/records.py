"""The records that JSON columns hold when their content is always one known shape (``models/tables.py``):
a job's OpenAI hyperparameters and ``method``, the repair stage's record, a safety scan's verdict. The
effective safety policy (``Job.safety``, ``SafetyScan.policy``) is ``models.policy.Policy``. Free-form JSON
(an organization's stored policy, an event's data, an audit entry's details) is ``tunegate.jsontypes``'s
``JsonObject``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypedDict

from tunegate.errors import InvalidConfig


class Hyperparameters(TypedDict, total=False):
    """A job's hyperparameters as OpenAI's fine-tuning API takes them: each a number or ``"auto"`` (the train
    stage resolves ``"auto"`` from the dataset size and checks the ranges: worker/training/hparams.py)."""

    batch_size: int | Literal["auto"]
    learning_rate_multiplier: float | Literal["auto"]
    n_epochs: int | Literal["auto"]


class SupervisedMethod(TypedDict, total=False):
    hyperparameters: Hyperparameters


class JobMethod(TypedDict, total=False):
    """``Job.method``, as OpenAI's job object shows it (only ``supervised`` is offered)."""

    type: Literal["supervised"]
    supervised: SupervisedMethod


class RepairSummary(TypedDict):
    """What a job records of the repair stage (``Job.repair``; the API's ``repair`` extension)."""

    repaired: bool
    method: str | None  # the variant that passed (None: none did)
    tried: list[str]  # the variants tried, in order
    reason: str


class ScanVerdict(TypedDict):
    """A completed safety scan's verdict (``SafetyScan.verdict``): the score stage's, on the file."""

    flagged: bool
    reason: str


def _whole_or_auto(value: object, key: str) -> int | Literal["auto"]:
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise InvalidConfig(f"hyperparameters.{key} must be a whole number or 'auto', got {value!r}", param=key)


def _number_or_auto(value: object, key: str) -> float | Literal["auto"]:
    if value == "auto":
        return "auto"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    raise InvalidConfig(f"hyperparameters.{key} must be a number or 'auto', got {value!r}", param=key)


def as_hyperparameters(given: Mapping[str, object]) -> Hyperparameters:
    """``given`` (a client's, e.g. the CLI's options; None: not given) as typed ``Hyperparameters``;
    ``InvalidConfig`` names an unknown key or a value that is neither a number nor ``"auto"``."""
    out: Hyperparameters = {}
    for key, value in given.items():
        if value is None:
            continue
        if key == "batch_size":
            out["batch_size"] = _whole_or_auto(value, key)
        elif key == "learning_rate_multiplier":
            out["learning_rate_multiplier"] = _number_or_auto(value, key)
        elif key == "n_epochs":
            out["n_epochs"] = _whole_or_auto(value, key)
        else:
            raise InvalidConfig(f"unknown hyperparameter: {key}", param=key)
    return out
