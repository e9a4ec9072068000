"""Using a trained adapter outside tunegate: fold it into its base (``merge``) and write a llama-architecture
model as one GGUF file (``write_gguf``) that llama.cpp-style runtimes load.

The GGUF follows llama.cpp's ``convert_hf_to_gguf.py`` for the ``llama`` architecture: gguf-py's tensor
names, the q/k projections permuted into llama.cpp's rotary layout (transformers' GGUF loader reverses the
same permutation), 1-D tensors (norms) always f32, and the byte-level BPE tokenizer as ``gpt2`` metadata
(tokens, token types, merges, special ids, the chat template).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from tunegate.artifacts import atomic_write_json
from tunegate.errors import ModelError
from tunegate.jsontypes import JsonObject, JsonValue
from worker.ml.models import SOURCE_FILE, load_model, load_tokenizer

log = logging.getLogger(__name__)

GgufType = Literal["f32", "f16"]
Progress = Callable[[float, str], None]

# llama.cpp's token types (gguf.TokenType): what ``tokenizer.ggml.token_type`` holds per token
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
# the ``tokenizer.ggml.pre`` name of the pre-tokenizers we recognise in a tokenizer.json (llama.cpp's names)
GPT2_SPLIT: JsonObject = {"type": "ByteLevel", "use_regex": True}
SMOLLM_SPLIT: list[JsonObject] = [{"type": "Digits", "individual_digits": True}, GPT2_SPLIT]


def _quiet(fraction: float, message: str) -> None:
    del fraction, message


def merge(
    base_path: Path,
    adapter_dir: Path,
    target: Path,
    source: Mapping[str, JsonValue],
    progress: Progress = _quiet,
) -> Path:
    """Fold a LoRA adapter into its base and save the result as a plain safetensors model with the base's
    tokenizer, atomically (a half-written model never sits at ``target``); ``source`` is recorded in
    ``tunegate_source.json`` (where the model came from)."""
    import torch
    from peft import PeftModel

    tmp = target.with_name(target.name + ".building")
    shutil.rmtree(tmp, ignore_errors=True)
    progress(0.0, "loading the base model")
    base = load_model(base_path, "cpu", dtype=torch.float32)
    progress(0.3, "merging the adapter")
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    progress(0.6, "saving the merged model")
    merged.save_pretrained(tmp, safe_serialization=True)
    load_tokenizer(base_path).save_pretrained(tmp)
    atomic_write_json(tmp / SOURCE_FILE, source)
    if target.exists():
        shutil.rmtree(target)
    tmp.replace(target)
    progress(1.0, "merged")
    return target


def write_gguf(
    model_dir: Path, out_file: Path, *, dtype: GgufType = "f16", progress: Progress = _quiet
) -> Path:
    """Write the llama-architecture HF model in ``model_dir`` as one GGUF file (atomically).

    Raises ``ModelError`` naming the architecture (or the setting) when the model is not one this writer
    represents faithfully: another architecture, another activation, or scaled rotary embeddings.
    """
    import torch

    check_llama(model_dir)
    tok = load_tokenizer(model_dir)
    progress(0.0, "loading the model")
    model = load_model(model_dir, "cpu", dtype=torch.float32)
    tmp = out_file.with_name(out_file.name + ".writing")
    try:
        writer = _writer(tmp, model.config, dtype)
        _add_tokenizer(writer, tok, model_dir, model.config.vocab_size)
        progress(0.3, "converting the tensors")
        _add_tensors(writer, model, dtype)
        progress(0.6, "writing the file")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        tmp.replace(out_file)
    finally:
        tmp.unlink(missing_ok=True)
    progress(1.0, "written")
    return out_file


def check_llama(model_dir: Path) -> None:
    """``ModelError`` unless the model in ``model_dir`` is one ``write_gguf`` writes faithfully (callers ask
    before a slow merge)."""
    config = json.loads((model_dir / "config.json").read_text())
    kind = config.get("model_type") or "unknown"
    if kind != "llama":
        raise ModelError(
            f"GGUF export supports the llama architecture only; this model is {kind!r} "
            "(export it --merged and convert it with llama.cpp's convert_hf_to_gguf.py)",
            code="unsupported_architecture",
        )
    if config.get("hidden_act", "silu") != "silu":
        raise ModelError(f"GGUF export: llama with activation {config['hidden_act']!r} is not supported")
    scaling = config.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type", "default")) != "default":
        raise ModelError(f"GGUF export: scaled rotary embeddings ({scaling}) are not supported")


def _writer(path: Path, cfg: Any, dtype: GgufType) -> Any:
    """A GGUF writer holding the llama hyperparameters under llama.cpp's keys."""
    import gguf

    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    rope = getattr(cfg, "rope_parameters", None) or {}
    theta = float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0)))
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    w.add_name(
        str(getattr(cfg, "_name_or_path", "") or "tunegate export").split("/")[-1] or "tunegate export"
    )
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    w.add_vocab_size(int(cfg.vocab_size))
    w.add_context_length(int(cfg.max_position_embeddings))
    w.add_embedding_length(int(cfg.hidden_size))
    w.add_block_count(int(cfg.num_hidden_layers))
    w.add_feed_forward_length(int(cfg.intermediate_size))
    w.add_head_count(heads)
    w.add_head_count_kv(int(cfg.num_key_value_heads or heads))
    w.add_rope_dimension_count(head_dim)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    return w


def _pre_tokenizer(model_dir: Path) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer, from its tokenizer.json ("default" if unknown)."""
    tj = model_dir / "tokenizer.json"
    pre = json.loads(tj.read_text()).get("pre_tokenizer") if tj.is_file() else None
    pre = pre or {}

    def like(step: JsonObject, want: JsonObject) -> bool:
        return all(step.get(k) == v for k, v in want.items())

    if like(pre, GPT2_SPLIT):
        return "gpt-2"
    steps = pre.get("pretokenizers") or []
    if len(steps) == len(SMOLLM_SPLIT) and all(like(s, w) for s, w in zip(steps, SMOLLM_SPLIT, strict=True)):
        return "smollm"
    log.warning("unrecognised pre-tokenizer %s: GGUF gets tokenizer.ggml.pre=default", pre.get("type"))
    return "default"


def _merges(model_dir: Path) -> list[str]:
    """The BPE merges as "left right" strings (tokenizer.json stores strings or pairs)."""
    model = json.loads((model_dir / "tokenizer.json").read_text())["model"]
    if model.get("type") != "BPE":
        raise ModelError(f"GGUF export needs a byte-level BPE tokenizer; this one is {model.get('type')!r}")
    return [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]


def _add_tokenizer(w: Any, tok: Any, model_dir: Path, n_vocab: int) -> None:
    """The byte-level BPE tokenizer as llama.cpp's ``gpt2`` metadata; embedding rows past the tokenizer's
    vocabulary become ``[PAD<i>]`` tokens of type UNUSED (as llama.cpp's converter writes them)."""
    if not (model_dir / "tokenizer.json").is_file():
        raise ModelError("GGUF export needs a fast tokenizer (tokenizer.json) in the model directory")
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = dict(tok.added_tokens_decoder)
    if len(by_id) > n_vocab:
        raise ModelError(f"the tokenizer has {len(by_id)} tokens, more than the model's {n_vocab} embeddings")
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(CONTROL if added[i].special else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_pre_tokenizer(model_dir))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(_merges(model_dir))
    for add, token_id in (
        (w.add_bos_token_id, tok.bos_token_id),
        (w.add_eos_token_id, tok.eos_token_id),
        (w.add_unk_token_id, tok.unk_token_id),
        (w.add_pad_token_id, tok.pad_token_id),
    ):
        if token_id is not None:
            add(int(token_id))
    bos = tok.bos_token_id
    w.add_add_bos_token(bool(bos is not None and tok("a")["input_ids"][:1] == [bos]))
    w.add_add_space_prefix(False)
    if tok.chat_template:
        w.add_chat_template(str(tok.chat_template))


def permute_rotary(weight: Any, n_head: int, n_head_kv: int) -> Any:
    """llama.cpp's q/k layout: each head's rotary halves interleaved (the inverse of what transformers'
    ``LlamaTensorProcessor._reverse_permute_weights`` undoes when it loads a GGUF)."""
    if n_head_kv != n_head:
        n_head = n_head_kv
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _add_tensors(w: Any, model: Any, dtype: GgufType) -> None:
    """Every weight under its gguf-py name (the output head left out when tied to the embeddings)."""
    import gguf
    import numpy as np

    cfg = model.config
    heads, kv = int(cfg.num_attention_heads), int(cfg.num_key_value_heads or cfg.num_attention_heads)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, int(cfg.num_hidden_layers))
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        stem, _, suffix = hf_name.rpartition(".")
        gguf_name = names.get_name(stem)
        if gguf_name is None:
            raise ModelError(f"GGUF export: no llama.cpp name for the tensor {hf_name!r}")
        data = tensor.detach().float().numpy()
        if stem.endswith("self_attn.q_proj"):
            data = permute_rotary(data, heads, heads)
        elif stem.endswith("self_attn.k_proj"):
            data = permute_rotary(data, heads, kv)
        keep_f32 = dtype == "f32" or data.ndim == 1  # norms stay f32, as llama.cpp writes them
        w.add_tensor(
            f"{gguf_name}.{suffix}", np.ascontiguousarray(data, np.float32 if keep_f32 else np.float16)
        )
