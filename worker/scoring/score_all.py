"""Score a list of conversations end to end: the function both the worker stage and ``tunegate score`` call.

Loads the base model, renders every example with the shared ``encode`` (so scores refer to the exact tokens
training will see), loads or computes the cached anchor features and reference distributions for this
model, scores, and builds the per-example records and the per-file summary.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from tunegate.conversation import Conversation, check_example
from tunegate.errors import InvalidFile
from tunegate.records import ScoreRecord
from tunegate.report import ScoreSummary
from tunegate.scorers import needs_direction
from tunegate.settings import Settings, get_settings
from worker.ml.models import ResolvedModel, context_length, load_resolved
from worker.ml.render import Encoded, encode
from worker.scoring import anchors as anchor_mod
from worker.scoring import reference as reference_mod
from worker.scoring.engine import Engine
from worker.scoring.report import FlagRules, blend_risk, make_record, summarize

log = logging.getLogger(__name__)

Progress = Callable[[float, str], None]


@dataclass
class Scored:
    records: list[ScoreRecord]
    summary: ScoreSummary  # with what scored the file: the model, its fingerprint, the anchors, the batch


@dataclass
class Loaded:
    resolved: ResolvedModel
    model: Any
    tokenizer: Any
    max_len: int
    cache_dir: Path


def _silent(fraction: float, message: str) -> None:
    del fraction, message


def load_base(model: str, settings: Settings, max_tokens: int = 0) -> Loaded:
    loaded = load_resolved(model, settings)
    resolved, net, tok = loaded.resolved, loaded.model, loaded.tokenizer
    limits = [context_length(net), settings.max_example_tokens] + ([max_tokens] if max_tokens > 0 else [])
    return Loaded(resolved, net, tok, min(limits), settings.scoring_cache_path(resolved.fingerprint))


def encode_all(tokenizer: Any, examples: Sequence[Conversation], max_len: int) -> list[Encoded]:
    """Render every example; the first bad one raises ``InvalidFile`` naming its line."""
    if not examples:
        raise InvalidFile("no examples to score", code="empty_file")
    for conv in examples:
        problems = check_example(conv)  # e.g. an empty response, which would leave only the end-of-turn token
        if problems:
            p = problems[0]
            code = "empty_response" if "empty content" in p.reason else None
            raise InvalidFile(p.reason, line=p.line, field=p.field, code=code)
    return [encode(tokenizer, c, max_len=max_len) for c in examples]


def prepare_engine(
    base: Loaded,
    scorers: Collection[str],
    batch_size: int,
    progress: Progress = _silent,
    batched: bool | None = None,
) -> tuple[Engine, dict[str, list[float]]]:
    """Anchor features and reference distributions for this model (cached), and an engine using them."""
    progress(0.02, "anchor features")
    engine = prepare_engine_without_reference(base, scorers, batch_size, batched)

    def ref_progress(done: int, total: int) -> None:
        progress(0.1 + 0.2 * done / total, f"reference corpus {done}/{total}")

    reference = reference_mod.load_or_compute(engine, base.cache_dir, base.max_len, progress=ref_progress)
    return engine, reference


def prepare_engine_without_reference(
    base: Loaded, scorers: Collection[str], batch_size: int, batched: bool | None = None
) -> Engine:
    """An engine on this model's anchor features (computed and cached if missing)."""
    direction = needs_direction(scorers)
    feats = anchor_mod.load_or_compute(
        base.model, base.tokenizer, base.cache_dir, max_len=base.max_len, with_direction=direction
    )
    return Engine(base.model, base.tokenizer, feats, scorers, batch_size, batched)


def score_examples(
    model: str,
    examples: Sequence[Conversation],
    *,
    scorers: Collection[str],
    batch_size: int,
    batched: bool | None = None,
    seed: int = 0,
    rules: FlagRules | None = None,
    max_tokens: int = 0,
    settings: Settings | None = None,
    progress: Progress = _silent,
) -> Scored:
    settings = settings or get_settings()
    rules = rules or FlagRules()
    torch.manual_seed(seed)
    base = load_base(model, settings, max_tokens)
    encoded = encode_all(base.tokenizer, examples, base.max_len)  # fail fast, before any model work
    engine, reference = prepare_engine(base, scorers, batch_size, progress, batched)

    def step(done: int, total: int) -> None:
        progress(0.3 + 0.68 * done / total, f"scored {done}/{total}")

    raw = engine.score(encoded, step)
    records = blend_risk([make_record(r, c, reference, rules) for r, c in zip(raw, examples, strict=True)])
    vectors = torch.tensor([r.vector for r in raw]) if raw and all(r.vector for r in raw) else None  # (N, D)
    summary = replace(
        summarize(records, list(examples), reference, rules, vectors),
        model=base.resolved.name,
        fingerprint=base.resolved.fingerprint,
        anchors_key=engine.anchors.key,
        batch_size=engine.batch_size,
    )
    return Scored(records, summary)
