"""The per-base-model caches every job reads: scoring anchors and reference, and the base's evaluation.

Jobs build them on first use; ``tunegate models prepare --scoring`` and ``tunegate demo`` build them ahead,
in one process with all cores, so that jobs running side by side never compute them twice.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunegate.settings import Settings

Progress = Callable[[float, str], None]


def _silent(fraction: float, message: str) -> None:
    del fraction, message


def _scoring_paths(model: str, settings: Settings) -> tuple[Path, Path]:
    from worker.ml.models import resolve_model
    from worker.scoring.anchors import anchors_key
    from worker.scoring.engine import SCORERS
    from worker.scoring.reference import reference_key

    cache = settings.models_path / resolve_model(model, settings).fingerprint / "scoring-cache"
    key = anchors_key()
    return cache / f"anchors-{key}.pt", cache / f"reference-{reference_key(key, tuple(SCORERS))}.json"


def scoring_cache_ready(model: str, settings: Settings) -> bool:
    return all(p.is_file() for p in _scoring_paths(model, settings))


def warm_scoring_cache(model: str, settings: Settings, progress: Progress = _silent) -> Path:
    """Anchor features and reference distributions of ``model`` for every scorer (computed if missing)."""
    from worker.scoring.engine import SCORERS
    from worker.scoring.score_all import load_base, prepare_engine

    base = load_base(model, settings)
    prepare_engine(base, SCORERS, batch_size=8, progress=lambda f, m: progress(min(1.0, f / 0.3), m))
    progress(1.0, "ready")
    return base.cache_dir


def warm_base_eval(model: str, settings: Settings, progress: Progress = _silent) -> None:
    """The base model's chat-template evaluation, with the evaluate stage's config as jobs build it."""
    from worker.ml.stage_io import StageIO
    from worker.stages import evaluate
    from worker.stages.spec import with_overrides

    cfg = with_overrides(evaluate.EvalConfig(model=model), evaluate.SPEC.name, settings)
    work = Path(tempfile.mkdtemp(prefix="tunegate-base-eval-"))
    try:

        def step(fraction: float, message: str, metrics: dict[str, Any]) -> None:
            del metrics
            progress(fraction, message)

        evaluate.run(
            cfg,
            evaluate.EvalInputs(
                None,
                [],
                StageIO(work, progress=step, stage=evaluate.SPEC.name),
                settings,
                settings.eval_cache_path,
            ),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress(1.0, "ready")


def warm_contrast_answers(model: str, settings: Settings, progress: Progress = _silent) -> Path:
    """The base model's answers to the whole contrastive pool, with the mitigate stage's generation settings
    (the stage fills the same cache on demand, only as far as a job needs)."""
    from worker.mitigation.contrast import answered, base_cache_dir, cache_file, model_generator, pool
    from worker.stages import mitigate
    from worker.stages.spec import with_overrides

    cfg = with_overrides(mitigate.MitigateConfig(model=model), mitigate.SPEC.name, settings)
    path = cache_file(base_cache_dir(model, settings), cfg.contrast_max_new_tokens)
    generate = model_generator(model, settings, cfg.contrast_max_new_tokens, cfg.contrast_batch_size)
    total, done = len(pool()), 0

    def counted(prompts: list[str]) -> list[str]:
        nonlocal done
        out = generate(prompts)
        done += len(prompts)
        progress(done / total, f"contrastive answers {done}/{total}")
        return out

    answered(total, cfg.seed, path, counted)
    progress(1.0, "ready")
    return path
