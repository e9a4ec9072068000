"""``worker.ml.export``: the merged model computes what base + adapter compute; the GGUF file loads back
through transformers' GGUF loader (the one the project uses for SmolLM2) with the same logits and
tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.utils.tiny_model import build_tiny_adapter
from tunegate.errors import ModelError
from worker.ml.export import merge, permute_rotary, write_gguf

TEXT = "<|im_start|>user\nWrite a short poem about the sea.<|im_end|>\n<|im_start|>assistant\nSure, 42"


def _logits(model: object, tok: object, text: str = TEXT) -> object:
    import torch

    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]  # type: ignore[operator]
    with torch.no_grad():
        return model(input_ids=ids).logits[0]  # type: ignore[operator]


@pytest.fixture(scope="module")
def merged(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the adapter, the tiny model with it merged)."""
    root = tmp_path_factory.mktemp("export")
    adapter = build_tiny_adapter(tiny_model_dir, root / "adapter")
    return adapter, merge(tiny_model_dir, adapter, root / "merged", {"adapter": str(adapter)})


def test_merged_model_computes_base_plus_adapter(tiny_model_dir: Path, merged: tuple[Path, Path]) -> None:
    import torch
    from peft import PeftModel

    from worker.ml.models import load_model, load_tokenizer

    adapter, out = merged
    tok = load_tokenizer(tiny_model_dir)
    with_adapter = PeftModel.from_pretrained(load_model(tiny_model_dir), str(adapter)).eval()
    want = _logits(with_adapter, tok)
    got = _logits(load_model(out), load_tokenizer(out))
    assert not torch.allclose(
        want, _logits(load_model(tiny_model_dir), tok), atol=1e-3
    )  # the adapter matters
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert json.loads((out / "tunegate_source.json").read_text()) == {"adapter": str(adapter)}
    assert not out.with_name(out.name + ".building").exists()


def test_gguf_loads_back_with_the_same_logits_and_tokenizer(
    merged: tuple[Path, Path], tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker.ml.models import load_model, load_tokenizer

    _, model_dir = merged
    out = write_gguf(model_dir, tmp_path / "model.gguf", dtype="f32")
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    back_tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=out.name)
    tok = load_tokenizer(model_dir)
    for text in (TEXT, 'Natalia sold 48 clips; 1. Preheat the oven! {"label": 0.9} ünïcode'):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert back_tok(text, add_special_tokens=False)["input_ids"] == ids
        assert back_tok.decode(ids) == tok.decode(ids)
    assert back_tok.chat_template == tok.chat_template
    assert (back_tok.bos_token, back_tok.eos_token) == (tok.bos_token, tok.eos_token)
    torch.testing.assert_close(_logits(back, tok), _logits(load_model(model_dir), tok), atol=1e-4, rtol=1e-4)


def test_f16_gguf_is_half_the_size_and_close(merged: tuple[Path, Path], tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from worker.ml.models import load_model, load_tokenizer

    _, model_dir = merged
    f32 = write_gguf(model_dir, tmp_path / "f32.gguf", dtype="f32")
    f16 = write_gguf(model_dir, tmp_path / "f16.gguf", dtype="f16")
    assert f16.stat().st_size < 0.6 * f32.stat().st_size
    back = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=f16.name, dtype=torch.float32).eval()
    tok = load_tokenizer(model_dir)
    torch.testing.assert_close(_logits(back, tok), _logits(load_model(model_dir), tok), atol=2e-2, rtol=2e-2)


def test_permutation_is_what_the_loader_reverses() -> None:
    import numpy as np
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = np.arange(8 * 4 * 3, dtype=np.float32).reshape(8 * 4, 3)  # 4 heads of dim 8, or 2 kv heads
    for heads, kv in ((4, 4), (8, 2)):
        proc = LlamaTensorProcessor(config={"num_attention_heads": heads, "num_key_value_heads": kv})
        name = "blk.0.attn_q.weight" if heads == kv else "blk.0.attn_k.weight"
        back = proc.process(permute_rotary(weight, heads, kv), name).weights
        assert np.array_equal(back, weight) and not np.array_equal(permute_rotary(weight, heads, kv), weight)


def test_refuses_other_architectures_by_name(merged: tuple[Path, Path], tmp_path: Path) -> None:
    import shutil

    src = merged[1]
    other = tmp_path / "other"
    shutil.copytree(src, other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen2"}))
    with pytest.raises(ModelError, match="llama architecture only; this model is 'qwen2'"):
        write_gguf(other, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
