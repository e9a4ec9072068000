"""Per-model reference distributions: the scores of the shipped benign corpus, computed once and cached.

A raw score means little across base models (cosines, gradient norms and dot products all shift with the
architecture), so every example is also reported as a percentile against this corpus under the same model
and template. The cache key covers the model fingerprint (the cache directory), the anchor key, the corpus
file and the scorers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tunegate import schema
from tunegate.conversation import load_examples
from worker.ml.render import encode
from worker.scoring.corpus import REFERENCE_FILE
from worker.scoring.engine import Engine

log = logging.getLogger(__name__)

REFERENCE_VERSION = "2"  # 2: ghost path excludes the embedding padding row


def reference_key(anchor_key: str, scorers: tuple[str, ...], corpus: Path = REFERENCE_FILE) -> str:
    h = hashlib.sha256(f"v{REFERENCE_VERSION}:{anchor_key}:{','.join(scorers)}".encode())
    h.update(corpus.read_bytes())
    return h.hexdigest()[:16]


def reference_path(
    cache_dir: Path, engine_key: str, scorers: tuple[str, ...], corpus: Path = REFERENCE_FILE
) -> Path:
    return cache_dir / f"reference-{reference_key(engine_key, scorers, corpus)}.json"


def score_part(
    engine: Engine,
    max_len: int,
    part: tuple[int, int] = (0, 1),
    corpus: Path = REFERENCE_FILE,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[float]]:
    """Each scorer's values on share ``part`` = (i, n) of the corpus (its examples i, i+n, i+2n, ...)."""
    i, n = part
    convs = load_examples(corpus)[i::n]
    encoded = [encode(engine.tokenizer, c, max_len=max_len) for c in convs]
    raw = engine.score(encoded, progress)
    return {s: [float(v) for r in raw if (v := r.value(s)) is not None] for s in engine.scorers}


def store(path: Path, corpus: Path, parts: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Join the shares' values into the sorted distributions and cache them (temp file, then rename)."""
    scores = {s: sorted(v for part in parts for v in part[s]) for s in parts[0]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"corpus": str(corpus), "scorers": list(parts[0]), "scores": scores}))
    tmp.replace(path)
    return scores


@dataclass(frozen=True)
class ReferenceFile:
    """A cached reference file (``store``): the corpus, the scorers and each one's sorted scores."""

    corpus: str
    scorers: list[str]
    scores: dict[str, list[float]]


def load(path: Path) -> dict[str, list[float]] | None:
    if not path.is_file():
        return None
    cached = schema.read(ReferenceFile, json.loads(path.read_text()), str(path))
    return {k: [float(x) for x in v] for k, v in cached.scores.items()}


def load_or_compute(
    engine: Engine,
    cache_dir: Path,
    max_len: int,
    corpus: Path = REFERENCE_FILE,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[float]]:
    path = reference_path(cache_dir, engine.anchors.key, engine.scorers, corpus)
    cached = load(path)
    if cached is not None:
        return cached
    log.info("scoring the reference benign corpus (%s) for this model", corpus.name)
    return store(path, corpus, [score_part(engine, max_len, (0, 1), corpus, progress)])
