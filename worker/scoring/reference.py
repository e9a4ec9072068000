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
from pathlib import Path
from typing import Any

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


def compute_reference(
    engine: Engine,
    max_len: int,
    corpus: Path = REFERENCE_FILE,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[float]]:
    convs = load_examples(corpus)
    encoded = [encode(engine.tokenizer, c, max_len=max_len) for c in convs]
    raw = engine.score(encoded, progress)
    out: dict[str, list[float]] = {}
    for scorer in engine.scorers:
        vals = [getattr(r, scorer) for r in raw]
        out[scorer] = sorted(float(v) for v in vals if v is not None)
    return out


def load_or_compute(
    engine: Engine,
    cache_dir: Path,
    max_len: int,
    corpus: Path = REFERENCE_FILE,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[float]]:
    key = reference_key(engine.anchors.key, engine.scorers, corpus)
    path = cache_dir / f"reference-{key}.json"
    if path.is_file():
        data: dict[str, Any] = json.loads(path.read_text())
        return {k: [float(x) for x in v] for k, v in data["scores"].items()}
    log.info("scoring the reference benign corpus (%s) for this model", corpus.name)
    scores = compute_reference(engine, max_len, corpus, progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"corpus": str(corpus), "scorers": list(engine.scorers), "scores": scores}))
    tmp.replace(path)
    return scores
