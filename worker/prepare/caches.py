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
    from worker.evaluation.probe import Probe
    from worker.ml.stage_io import Metric
    from worker.scoring.anchors import AnchorPasses

Progress = Callable[[float, str], None]


def _silent(fraction: float, message: str) -> None:
    del fraction, message


def _scoring_paths(model: str, settings: Settings) -> tuple[Path, Path]:
    from worker.ml.models import resolve_model
    from worker.scoring.anchors import anchors_key, cache_file
    from worker.scoring.reference import reference_path

    cache = settings.scoring_cache_path(resolve_model(model, settings).fingerprint)
    return cache_file(cache), reference_path(cache, anchors_key(), tuple(SCORERS))


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


def anchor_passes_piece(model: str, share: tuple[int, int], *, progress: parallel.Report) -> AnchorPasses:
    """The passes (hidden states and gradient direction) of the anchors in ``share``, in a child process."""
    from worker.scoring import anchors
    from worker.scoring.score_all import load_base

    progress(0.0, "anchor features")
    base = load_base(model, get_settings())
    return anchors.anchor_passes(
        base.model,
        base.tokenizer,
        max_len=base.max_len,
        with_direction=needs_direction(SCORERS),
        progress=lambda d, t: progress(d / t, f"anchor features {d}/{t}"),
        share=share,
    )


def anchor_shares(n_anchors: int, processes: int, w_passes: float, w_probe: float) -> list[tuple[int, int]]:
    """The anchors' passes cut into ranges so that they and the request probe (``w_passes`` and ``w_probe``
    of work) end together on ``processes`` cores: the last range fills the probe's core up to the mean
    load, the others take a mean load each (``parallel.run`` starts them first, the probe next, the last
    range when the probe is done). Where the probe alone is above the mean, the passes share the other
    cores evenly."""
    if processes < 2 or n_anchors < 2:
        return [(0, n_anchors)]
    mean = (w_passes + w_probe) / processes
    tail = 0 if mean <= w_probe else min(n_anchors - 1, round((mean - w_probe) / w_passes * n_anchors))
    body = n_anchors - tail
    k = processes - 1
    bounds = sorted({round(i * body / k) for i in range(k + 1)} | {n_anchors})
    return list(zip(bounds, bounds[1:], strict=False))


def request_probe_piece(model: str, *, progress: parallel.Report) -> Probe:
    """The request probe's fit on the base's opening states, in a child process."""
    from worker.scoring import anchors
    from worker.scoring.score_all import load_base

    progress(0.0, "the request probe")
    base = load_base(model, get_settings())
    return anchors.fit_request_probe(
        base.model,
        base.tokenizer,
        base.max_len,
        progress=lambda d, t: progress(d / t, f"the request probe {d}/{t}"),
    )


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
# fresh home, docs/benchmarks.md): the anchors' passes 2.1 and their request probe 1.3 (2.0 in that run,
# 0.63x since its sequences end at the reply's opening), the base's evaluation 3.0, then the reference
# corpus 5.2 over both cores, so the bar (and tqdm's ETA, its average rate) moves with the time spent
WEIGHTS = {"anchor_passes": 2.1, "request_probe": 1.3, "base_eval": 3.0, "reference": 5.2}


def warm_all(model: str, settings: Settings, progress: Progress = _silent) -> None:
    """The scoring caches and the base's evaluation of ``model``, each part skipped when cached (the
    shipped base's installed first): the evaluation, the anchors' passes (in shares, ``anchor_shares``) and
    their request probe side by side, then the reference corpus in shares (one process per core)."""
    from worker.ml.models import device_for, resolve_model
    from worker.prepare import shipped_caches
    from worker.scoring import anchors, reference
    from worker.scoring.corpus import REFERENCE_FILE

    shipped_caches.install(settings, resolve_model(model, settings).fingerprint)  # the shipped base's
    anchors_file, reference_file = _scoring_paths(model, settings)
    device = device_for(settings)
    need_anchors = not anchors_file.is_file()
    first = []  # side by side, the longest first (one process per core); a single piece runs here
    if not base_eval_cached(model, settings):
        first.append(parallel.Piece(base_eval_piece, (model,), WEIGHTS["base_eval"]))
    cores = parallel.processes(settings, device, parallel.MAX_PROCESSES)  # as many as the machine gives
    start = probe_at = 0  # where the anchors' pieces begin in ``first``, and the probe's place among them
    if need_anchors:
        count = anchors.n_anchors()
        shares = anchor_shares(count, cores, WEIGHTS["anchor_passes"], WEIGHTS["request_probe"])
        pieces = [
            parallel.Piece(anchor_passes_piece, (model, s), WEIGHTS["anchor_passes"] * (s[1] - s[0]) / count)
            for s in shares
        ]
        probe_at = max(len(pieces) - 1, 1)  # before the last share (the probe's core's), after a lone one
        pieces.insert(probe_at, parallel.Piece(request_probe_piece, (model,), WEIGHTS["request_probe"]))
        start = len(first)
        first += pieces
    n = cores if not reference_file.is_file() else 0
    ref_share = WEIGHTS["reference"] / max(n, 1)
    total = sum(p.weight for p in first) + (WEIGHTS["reference"] if n else 0.0)
    done = sum(p.weight for p in first) / total if total else 1.0
    if first:
        got = parallel.run(first, settings, device, lambda f, m, met: progress(f * done, m))
        if need_anchors:
            parts = got[start:]
            probe = parts.pop(probe_at)
            joined = anchors.join(parts)
            anchors.save(anchors_file, joined.with_probe(probe, anchors.anchors_key()))
    if n:
        pieces = [parallel.Piece(reference_piece, (model, (i, n)), ref_share) for i in range(n)]
        parts = parallel.run(pieces, settings, device, lambda f, m, met: progress(done + f * (1 - done), m))
        reference.store(reference_file, REFERENCE_FILE, parts)
    progress(1.0, "ready")


def base_eval_entries(model: str, settings: Settings, fingerprint: str, n_layers: int) -> list[Path]:
    """The evaluation cache's files (relative) that ``warm_base_eval`` fills for the base with
    ``fingerprint`` (``n_layers`` blocks): the probe judge and the chat run."""
    from worker.stages import evaluate
    from worker.stages.spec import with_overrides

    cfg = with_overrides(evaluate.EvalConfig(model=model), evaluate.SPEC.name, settings)
    return evaluate.base_chat_entries(cfg, settings, fingerprint, n_layers)


def base_eval_cached(model: str, settings: Settings) -> bool:
    """Whether the base's own evaluation in chat is in the evaluation cache (shipped or computed)."""
    from worker.ml.models import resolve_model
    from worker.prepare.shipped_caches import layers

    resolved = resolve_model(model, settings)
    entries = base_eval_entries(model, settings, resolved.fingerprint, layers(resolved.path))
    return all((settings.eval_cache_path / e).is_file() for e in entries)


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
