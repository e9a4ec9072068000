"""Map a job's OpenAI-style hyperparameters onto the training loop's knobs.

OpenAI's fine-tuning API takes ``n_epochs``, ``batch_size`` and ``learning_rate_multiplier``, each a number
or ``"auto"``. We resolve ``"auto"`` from the dataset size so small jobs get enough optimizer steps and large
jobs do not overfit, and we split the effective batch into micro-batches plus gradient accumulation so memory
stays bounded on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from tunegate.errors import InvalidConfig

BASE_LEARNING_RATE = 1e-4  # LoRA learning rate that learning_rate_multiplier=1 stands for
MAX_MICRO_BATCH = 8


class OpenAIHyperparameters(TypedDict):
    """Resolved hyperparameters, as OpenAI's job object shows them."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float


@dataclass(frozen=True)
class ResolvedHyperparameters:
    n_epochs: int
    batch_size: int  # effective examples per optimizer step
    learning_rate_multiplier: float
    learning_rate: float
    micro_batch_size: int
    grad_accum: int

    def to_openai(self) -> OpenAIHyperparameters:
        return {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }


def auto_epochs(n: int) -> int:
    """More passes over tiny datasets (about 300 example-visits), never below 1 nor above 5."""
    return max(1, min(5, math.ceil(300 / max(n, 1))))


def auto_batch_size(n: int) -> int:
    """A power of two near n/25, between 1 and 16 (100 examples -> 4)."""
    return int(max(1, min(16, 2 ** round(math.log2(max(n, 1) / 25)))))


def _value(hp: Mapping[str, object], key: str, auto: Any, kind: type) -> Any:
    val = hp.get(key, "auto")
    if val is None or val == "auto":
        return auto
    if isinstance(val, bool) or not isinstance(val, (int, float)):
        raise InvalidConfig(f"hyperparameters.{key} must be a number or 'auto', got {val!r}", param=key)
    if kind is int and float(val) != int(val):
        raise InvalidConfig(f"hyperparameters.{key} must be an integer, got {val!r}", param=key)
    if val <= 0:
        raise InvalidConfig(f"hyperparameters.{key} must be positive, got {val!r}", param=key)
    return kind(val)


def resolve_hyperparameters(
    openai_hparams: Mapping[str, object] | None,
    n_examples: int,
    *,
    base_lr: float = BASE_LEARNING_RATE,
    max_micro_batch: int = MAX_MICRO_BATCH,
) -> ResolvedHyperparameters:
    """Resolve ``"auto"``/missing values of a job's hyperparameters as OpenAI's API takes them (each a number,
    ``"auto"`` or absent: None), checking each; raises ``InvalidConfig`` naming a bad field."""
    hp = dict(openai_hparams or {})
    unknown = set(hp) - {"n_epochs", "batch_size", "learning_rate_multiplier"}
    if unknown:
        raise InvalidConfig(
            f"unknown hyperparameter(s): {', '.join(sorted(unknown))}", param=sorted(unknown)[0]
        )
    n_epochs = _value(hp, "n_epochs", auto_epochs(n_examples), int)
    batch = _value(hp, "batch_size", auto_batch_size(n_examples), int)
    mult = _value(hp, "learning_rate_multiplier", 1.0, float)
    if n_epochs > 50:
        raise InvalidConfig("hyperparameters.n_epochs must be at most 50", param="n_epochs")
    batch = min(batch, max(1, n_examples))
    micro = min(batch, max_micro_batch)
    accum = math.ceil(batch / micro)
    return ResolvedHyperparameters(n_epochs, micro * accum, mult, base_lr * mult, micro, accum)
