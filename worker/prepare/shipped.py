"""The aligned base as the project ships it: the embedded SmolLM2 plus the LoRA adapter that the alignment
recipe (``worker/prepare/align.py``) trained once, in ``tunegate/data/aligned/``.

A build by the recipe trains in the precision its hardware does well (bf16 or fp32), so two machines built two
different aligned bases, each with its own fingerprint, and every cache and panel row keyed by it. The
shipped adapter is trained once. ``fold`` adds it to the embedded weights in the same way on every machine:
each update ``scale * B A`` is summed rank by rank in float64 with elementwise operations only (no BLAS, whose
summation order differs between CPUs and builds; every elementwise product and sum is one correctly rounded
IEEE operation), added to the float32 weight in float64 and rounded once. So every machine gets the same bytes
and the fingerprint recorded in ``build.json`` when the adapter was exported (a test checks it). Folding
takes seconds, where the recipe takes minutes.

``export`` turns a recipe build (its adapter, kept in the aligned base's ``adapter/``) into the shipped one:
the adapter's tensors in float16 (half the bytes; what is shipped is what is measured), its config, and
``build.json`` (the recipe, the build's figures, the source model's fingerprint and the folded model's).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tunegate import schema
from tunegate.artifacts import atomic_write_json, read_json
from tunegate.errors import ModelError
from tunegate.jsontypes import JsonObject
from tunegate.settings import EMBEDDED_BASE, Settings
from tunegate.shipped import data_path
from worker.ml.models import FINGERPRINT_FILE, SOURCE_FILE, fingerprint, resolve_model

if TYPE_CHECKING:
    import torch

SHIPPED_DIR = data_path("aligned")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
BUILD_FILE = "build.json"
KEPT_ADAPTER = "adapter"  # where a recipe build keeps its adapter, inside the aligned base's directory
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class ShippedBuild:
    """``build.json``: where the shipped adapter comes from and what folding it gives."""

    source_fingerprint: str  # the embedded model it was trained on (and only applies to)
    fingerprint: str  # the folded model's: the same on every machine
    align_config: JsonObject  # the recipe (AlignConfig) it was trained with
    built: JsonObject  # the build's figures (AlignResult) and machine

    @classmethod
    def read(cls, directory: Path | None = None) -> ShippedBuild | None:
        """The shipped build (None: no adapter is shipped there; ``directory``: ``SHIPPED_DIR``)."""
        directory = directory or SHIPPED_DIR
        f = directory / BUILD_FILE
        if not (f.is_file() and (directory / ADAPTER_WEIGHTS).is_file()):
            return None
        return schema.read(cls, read_json(f), str(f))


def shipped_for(source_fingerprint: str, directory: Path | None = None) -> ShippedBuild | None:
    """The shipped build when it was trained on the model with this fingerprint, else None."""
    build = ShippedBuild.read(directory)
    return build if build is not None and build.source_fingerprint == source_fingerprint else None


def for_embedded(settings: Settings) -> tuple[Path, ShippedBuild] | None:
    """The embedded model's directory and the shipped build trained on it (None: none is shipped for this
    embedded model, so the aligned base is built by the recipe)."""
    base = resolve_model(EMBEDDED_BASE, settings)
    build = shipped_for(base.fingerprint)
    return (base.path, build) if build is not None else None


def exact_product(b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """``b @ a`` in float64 as rank-one terms added in a fixed order, elementwise: every machine rounds it
    the same."""
    import torch

    b64, a64 = b.to(torch.float64), a.to(torch.float64)
    out = torch.zeros(b.shape[0], a.shape[1], dtype=torch.float64)
    for k in range(a.shape[0]):
        out.add_(b64[:, k, None] * a64[None, k, :])
    return out


def lora_updates(adapter_dir: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(weight name in the base, float64 update) for each module of a plain LoRA adapter (peft's files)."""
    from safetensors.torch import load_file

    cfg = read_json(adapter_dir / ADAPTER_CONFIG)
    if any(cfg.get(k) for k in ("use_dora", "use_rslora", "rank_pattern", "alpha_pattern")):
        raise ModelError(
            f"{adapter_dir}: only a plain LoRA adapter folds exactly (no DoRA, rsLoRA or per-module ranks)"
        )
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if not isinstance(r, int) or not isinstance(alpha, int | float) or r < 1:
        raise ModelError(f"{adapter_dir / ADAPTER_CONFIG}: r and lora_alpha must be numbers")
    tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    for key in sorted(tensors):
        if key.endswith(".lora_A.weight"):
            stem = key.removesuffix(".lora_A.weight")
            update = exact_product(tensors[f"{stem}.lora_B.weight"], tensors[key]) * (alpha / r)
            yield stem.removeprefix("base_model.model.") + ".weight", update


def fold(base_dir: Path, adapter_dir: Path, target: Path, source: JsonObject) -> Path:
    """Write ``base_dir``'s model with the adapter folded in (``exact_product``) to ``target``, atomically,
    with the base's config and tokenizer files as they are and ``source`` in ``tunegate_source.json``."""
    import torch
    from safetensors.torch import load_file, save_file

    weights = base_dir / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{base_dir} has no single {WEIGHTS} to fold an adapter into")
    state = load_file(str(weights))
    for name, update in lora_updates(adapter_dir):
        if name not in state:
            raise ModelError(f"the adapter changes {name}, which {base_dir} does not have")
        w = state[name]
        if w.shape != update.shape or w.dtype != torch.float32:
            raise ModelError(f"{name}: the adapter's update {tuple(update.shape)} does not fit the base's")
        state[name] = (w.to(torch.float64) + update).to(torch.float32)
    tmp = target.with_name(target.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    skip = {WEIGHTS, FINGERPRINT_FILE, SOURCE_FILE}
    for f in sorted(base_dir.iterdir()):
        if f.is_file() and f.name not in skip:
            shutil.copyfile(f, tmp / f.name)
    save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt"})
    atomic_write_json(tmp / SOURCE_FILE, source)
    if target.exists():
        shutil.rmtree(target)
    tmp.replace(target)
    return target


def export(aligned_dir: Path, base_dir: Path, dest: Path) -> ShippedBuild:
    """A recipe build (``aligned_dir``, which kept its adapter) as the shipped adapter in ``dest``: float16
    tensors, the adapter's config and ``build.json``, whose fingerprint is the model that ``fold`` gives with
    these float16 tensors on ``base_dir`` (folded here once to measure it)."""
    import torch
    from safetensors.torch import load_file, save_file

    kept = aligned_dir / KEPT_ADAPTER
    source = read_json(aligned_dir / SOURCE_FILE)
    tensors = load_file(str(kept / ADAPTER_WEIGHTS))
    dest.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16) for k, v in tensors.items()}, str(dest / ADAPTER_WEIGHTS))
    config = {k: v for k, v in read_json(kept / ADAPTER_CONFIG).items() if k != "base_model_name_or_path"}
    (dest / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    scratch = dest.with_name(dest.name + ".fold-check")
    try:
        folded = fingerprint(fold(base_dir, dest, scratch, {}))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    align_config = source.get("align_config")
    build = ShippedBuild(
        source_fingerprint=fingerprint(base_dir),
        fingerprint=folded,
        align_config=align_config if isinstance(align_config, dict) else {},
        built=read_json(aligned_dir / "align_result.json"),
    )
    (dest / BUILD_FILE).write_text(json.dumps(schema.write(build), indent=2) + "\n", encoding="utf-8")
    return build


def fold_shipped(base_dir: Path, target: Path, build: ShippedBuild, directory: Path | None = None) -> Path:
    """The shipped adapter (in ``directory``, default ``SHIPPED_DIR``) folded into the embedded model at
    ``base_dir``; refused when the result is not the model the build recorded (its fingerprint)."""
    source: JsonObject = {
        "aligned_from": str(base_dir),
        "align_config": build.align_config,
        "source_fingerprint": build.source_fingerprint,
        "adapter": "shipped",
    }
    fold(base_dir, directory or SHIPPED_DIR, target, source)
    got = fingerprint(target)
    if got != build.fingerprint:
        shutil.rmtree(target, ignore_errors=True)
        raise ModelError(
            f"folding the shipped alignment adapter gave weights {got}, not the shipped build's "
            f"{build.fingerprint}; rebuild the aligned base by the recipe (tunegate models prepare --aligned "
            "--rebuild)"
        )
    return target
