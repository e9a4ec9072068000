"""The per-base-model caches every job reads: scoring anchors and reference, and the base's evaluation.

Jobs build them on first use; ``tunegate models prepare --scoring`` and ``tunegate demo`` build them ahead
(``warm_all``), with the work split over one process per core (``parallel.py``): the anchor features and the
base model's evaluation side by side, then the reference corpus (which needs the anchors) in as many shares
as there are processes. Jobs running side by side then never compute them twice.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tunegate.scorers import SCORERS, needs_direction
from tunegate.settings import Settings, get_settings
from worker.prepare import parallel

if TYPE_CHECKING:
    from worker.ml.stage_io import Metric

Progress = Callable[[float, str], None]


def _silent(fraction: float, message: str) -> None:
    del fraction, message


def _scoring_paths(model: str, settings: Settings) -> tuple[Path, Path]:
    from worker.ml.models import resolve_model
    from worker.scoring.anchors import anchors_key
    from worker.scoring.reference import reference_path

    cache = settings.models_path / resolve_model(model, settings).fingerprint / "scoring-cache"
    key = anchors_key()
    return cache / f"anchors-{key}.pt", reference_path(cache, key, tuple(SCORERS))


def scoring_cache_ready(model: str, settings: Settings) -> bool:
    return all(p.is_file() for p in _scoring_paths(model, settings))


def warm_scoring_cache(model: str, settings: Settings, progress: Progress = _silent) -> Path:
    """Anchor features and reference distributions of ``model`` for every scorer (computed if missing), in
    this process."""
    from worker.scoring.score_all import load_base, prepare_engine

    base = load_base(model, settings)
    prepare_engine(base, SCORERS, batch_size=8, progress=lambda f, m: progress(min(1.0, f / 0.3), m))
    progress(1.0, "ready")
    return base.cache_dir


def anchors_piece(model: str, *, progress: parallel.Report) -> None:
    """The anchor features (hidden states and gradient direction), in a child process."""
    from worker.scoring import anchors
    from worker.scoring.score_all import load_base

    progress(0.0, "anchor features")
    base = load_base(model, get_settings())
    direction = needs_direction(SCORERS)
    anchors.load_or_compute(
        base.model,
        base.tokenizer,
        base.cache_dir,
        max_len=base.max_len,
        with_direction=direction,
        progress=lambda d, t: progress(
            # the passes take about 60% of the piece; the request probe's fit (after them) the rest
            0.6 * d / t,
            f"anchor features {d}/{t}" if d < t else "anchor features: the request probe",
        ),
    )
    progress(1.0, "anchor features")


def reference_piece(
    model: str, part: tuple[int, int], *, progress: parallel.Report
) -> dict[str, list[float]]:
    """Every scorer's values on one share of the reference corpus, in a child process (anchors cached)."""
    from worker.scoring import reference
    from worker.scoring.score_all import load_base, prepare_engine_without_reference

    base = load_base(model, get_settings())
    engine = prepare_engine_without_reference(base, SCORERS, batch_size=8)
    return reference.score_part(
        engine, base.max_len, part, progress=lambda d, t: progress(d / t, f"reference corpus {d}/{t}")
    )


def base_eval_piece(model: str, *, progress: parallel.Report) -> None:
    warm_base_eval(model, get_settings(), progress)


# each part's share of the bar: the core-minutes it took on a 2-core AMD EPYC (the demo of 2026-12-07 on a
# fresh home, docs/benchmarks.md): the anchors 3.3 (passes 2.1, then the request probe: 2.0 in that run,
# 0.63x since its sequences end at the reply's opening) beside the base's evaluation 3.0, then the reference
# corpus 5.2 over both cores, so the bar (and tqdm's ETA, its average rate) moves with the time spent
WEIGHTS = {"anchors": 3.3, "base_eval": 3.0, "reference": 5.2}


def warm_all(model: str, settings: Settings, progress: Progress = _silent) -> None:
    """The scoring caches and the base's evaluation of ``model``, each part skipped when cached: the
    anchors and the evaluation side by side, then the reference corpus in shares (one process per core)."""
    from worker.ml.models import device_for
    from worker.scoring import reference
    from worker.scoring.corpus import REFERENCE_FILE

    anchors_file, reference_file = _scoring_paths(model, settings)
    device = device_for(settings)
    first = [parallel.Piece(base_eval_piece, (model,), WEIGHTS["base_eval"])]  # skips itself when cached
    if not anchors_file.is_file():
        first.insert(0, parallel.Piece(anchors_piece, (model,), WEIGHTS["anchors"]))
    n = parallel.processes(settings, device, 8) if not reference_file.is_file() else 0
    ref_share = WEIGHTS["reference"] / max(n, 1)
    total = sum(p.weight for p in first) + (WEIGHTS["reference"] if n else 0.0)
    done = sum(p.weight for p in first) / total
    parallel.run(first, settings, device, lambda f, m, met: progress(f * done, m))
    if n:
        pieces = [parallel.Piece(reference_piece, (model, (i, n)), ref_share) for i in range(n)]
        parts = parallel.run(pieces, settings, device, lambda f, m, met: progress(done + f * (1 - done), m))
        reference.store(reference_file, REFERENCE_FILE, parts)
    progress(1.0, "ready")


def warm_base_eval(model: str, settings: Settings, progress: Progress = _silent) -> None:
    """The base model's chat-template evaluation, with the evaluate stage's config as jobs build it."""
    from worker.ml.stage_io import StageIO
    from worker.stages import evaluate
    from worker.stages.spec import with_overrides

    cfg = with_overrides(evaluate.EvalConfig(model=model), evaluate.SPEC.name, settings)
    work = Path(tempfile.mkdtemp(prefix="tunegate-base-eval-"))
    try:

        def step(fraction: float, message: str, metrics: dict[str, Metric]) -> None:
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
