"""The shipped aligned base's caches that are small and the same everywhere, shipped beside its adapter.

Every machine folds the shipped adapter into the same weights (``shipped.py``), so what a cache holds about
those weights alone need not be computed again on each first run. Two parts qualify:

- the reference distributions (``scoring-cache/reference-*.json``, 250 examples' scores per scorer), which
  only turn a raw score into a percentile: another CPU's kernels move a score by float noise, far below the
  gaps between neighbours in the distribution;
- the base's own evaluation in plain chat (``eval-cache/``: the fitted probe judge and the chat run), whose
  greedy replies were compared between kernels before shipping (``docs/aligned_base.md``, "Shipped caches").

The anchors (538 MB, a full gradient direction) are not shipped: each machine computes them.

``install`` copies the shipped files into a home where they are missing (never over a file there); it runs
when the shipped adapter is folded and before the caches are warmed. ``export`` is the maintainers' way to
refresh them from this machine's caches of the shipped base (``tunegate models export-aligned --caches``);
``expected`` names the files the current code reads, and a test checks that each one is shipped.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tunegate.errors import ModelError
from tunegate.settings import Settings
from worker.prepare import shipped
from worker.prepare.shipped import ShippedBuild

CACHES = "caches"  # inside the shipped directory
SCORING = "scoring-cache"  # mirrors Settings.scoring_cache_path
EVAL = "eval-cache"  # mirrors the evaluation cache (Settings.eval_cache_path)


def targets(settings: Settings, fingerprint: str) -> dict[str, Path]:
    """Where each shipped part goes in a home, for the model with ``fingerprint``."""
    return {SCORING: settings.scoring_cache_path(fingerprint), EVAL: settings.eval_cache_path}


def expected(settings: Settings, fingerprint: str, n_layers: int) -> dict[str, list[Path]]:
    """The files (relative to their part) that the current code reads for the base with ``fingerprint``
    (``n_layers`` blocks) in the provider's default configuration."""
    from tunegate.scorers import SCORERS
    from tunegate.settings import EMBEDDED_ALIGNED
    from worker.prepare.caches import base_eval_entries
    from worker.scoring.anchors import anchors_key
    from worker.scoring.reference import reference_path

    return {
        SCORING: [reference_path(Path(), anchors_key(), tuple(SCORERS))],
        EVAL: base_eval_entries(EMBEDDED_ALIGNED, settings, fingerprint, n_layers),
    }


def layers(model_dir: Path) -> int:
    """The number of blocks of the model in ``model_dir`` (its ``config.json``)."""
    return int(json.loads((model_dir / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"])


def applies(settings: Settings, fingerprint: str, directory: Path | None = None) -> bool:
    """Whether the shipped caches serve the model with ``fingerprint`` here: they were computed on it (the
    shipped build's fingerprint) and the provider did not turn them off (``Settings.shipped_caches``)."""
    build = ShippedBuild.read(directory or shipped.SHIPPED_DIR)
    return settings.shipped_caches and build is not None and build.fingerprint == fingerprint


def install(settings: Settings, fingerprint: str, directory: Path | None = None) -> list[Path]:
    """Copy the shipped caches into this home for the model with ``fingerprint`` when they were computed
    on it (the shipped build's fingerprint), each file only where none is, unless the provider turned
    them off (``Settings.shipped_caches``); the files installed."""
    directory = directory or shipped.SHIPPED_DIR
    if not applies(settings, fingerprint, directory):
        return []
    installed = []
    for part, target in targets(settings, fingerprint).items():
        source = directory / CACHES / part
        for f in sorted(source.rglob("*.json")) if source.is_dir() else []:
            dest = target / f.relative_to(source)
            if not dest.exists():
                _copy(f, dest)
                installed.append(dest)
    return installed


def export(settings: Settings, fingerprint: str, n_layers: int, dest: Path) -> list[Path]:
    """Copy this home's caches of the base with ``fingerprint`` that ``expected`` names into ``dest``'s
    ``caches/`` (replacing what was there); a missing one, or an adapter in ``dest`` that does not fold into
    that model, is an error naming it."""
    build = ShippedBuild.read(dest)
    if build is None or build.fingerprint != fingerprint:
        raise ModelError(
            f"the caches are of the model {fingerprint}, but the adapter in {dest} folds into "
            f"{build.fingerprint if build else 'nothing (none is there)'}: fold that adapter here first "
            "(tunegate models prepare --aligned --force)"
        )
    want = expected(settings, fingerprint, n_layers)
    where = targets(settings, fingerprint)
    missing = [where[p] / f for p, files in want.items() for f in files if not (where[p] / f).is_file()]
    if missing:
        raise ModelError(
            f"not cached here yet: {', '.join(map(str, missing))} (run tunegate models prepare --aligned "
            "--scoring --model smollm2-135m-aligned first)"
        )
    shutil.rmtree(dest / CACHES, ignore_errors=True)
    written = []
    for part, files in want.items():
        for f in files:
            out = dest / CACHES / part / f
            # compact, keys in order: the same bytes whichever process wrote the cache entry
            data = json.loads((where[part] / f).read_text(encoding="utf-8"))
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8")
            written.append(out)
    return written


def _copy(src: Path, dest: Path) -> None:
    """``src`` to ``dest`` through a temporary file and a rename (a reader never sees half a file)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dest)
