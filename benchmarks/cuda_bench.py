"""The ML stages' throughput on a CUDA device, on a model of SmolLM2-135M's shape (random weights).

Timings do not depend on the weights' values (except how early a refusal stops a generation: here every
row runs to its token limit, the worst case), so a randomly initialised model of the embedded model's exact
architecture measures what a job costs on the GPU without its weights on the machine. Side by side, one run:

- training: a LoRA micro-batch (8 x 128 tokens, r 16 on all linear layers), forward and backward, bf16
  autocast against fp32: tokens/s and the ratio;
- scoring: the three scorers on 32 chat examples (about 90 tokens), one at a time with per-parameter hooks
  against length-sorted batches of 8 with exact per-example statistics (ghost capture): examples/s, ratio;
- generation: 64 prompts, 64 new tokens each, batch 16 against batch 64 (continuous batching): tokens/s.

    python benchmarks/cuda_bench.py [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from machine import print_machine

if TYPE_CHECKING:
    import torch
    from transformers.modeling_rope_utils import RopeParameters


class LlamaShape(TypedDict):
    """``LlamaConfig`` keywords: the architecture measured."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_parameters: RopeParameters
    tie_word_embeddings: bool


SMOLLM2_135M: LlamaShape = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"},
    "tie_word_embeddings": True,
}


DEVICE = "cuda"


def _sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up
    _sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _model(dtype: torch.dtype) -> torch.nn.Module:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**SMOLLM2_135M, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    # as a Module: mypy cannot bind PreTrainedModel.to, whose signature comes from functools.wraps
    model: torch.nn.Module = LlamaForCausalLM(cfg)
    return model.to(DEVICE, dtype=dtype).eval()


def training(tok: Any) -> dict[str, float]:
    import torch

    from worker.ml.lm import decoder_hidden, head_logits
    from worker.training.lora import attach_lora

    ids = torch.randint(3, 49152, (8, 128), device=DEVICE)
    att = torch.ones_like(ids)
    peft_model = attach_lora(
        _model(torch.float32), r=16, alpha=32, dropout=0.0, target_modules="all-linear", seed=0
    )
    peft_model.train()
    out: dict[str, float] = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):

        def step(bf16: bool = bf16) -> None:
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
                h = decoder_hidden(peft_model, ids, att)  # (8, 128, 576)
                loss = head_logits(peft_model, h[:, -64:]).float().logsumexp(-1).mean()
            loss.backward()

        out[f"{name}_tokens_per_s"] = round(ids.numel() / _timed(step, 5))
    out["bf16_speedup"] = round(out["bf16_tokens_per_s"] / out["fp32_tokens_per_s"], 2)
    return out


def scoring(tok: Any) -> dict[str, float]:
    import torch

    from tunegate.conversation import Conversation, Message
    from tunegate.scorers import SCORERS
    from worker.ml.render import encode
    from worker.scoring.anchors import compute_anchors
    from worker.scoring.engine import Engine

    model = _model(torch.float32)
    model.requires_grad_(True)
    t0 = time.perf_counter()
    anchors = compute_anchors(model, tok, max_len=2048, with_direction=True)
    anchors_s = time.perf_counter() - t0
    words = "the plan keeps every step short and checks each number twice before moving on".split()
    convs = [
        Conversation(
            (
                Message("user", " ".join(words[: 4 + i % 9]) + "?"),
                Message("assistant", " ".join((words * 4)[i % 5 : 20 + 2 * (i % 11)])),
            ),
            line=i + 1,
        )
        for i in range(32)
    ]
    encoded = [encode(tok, c, max_len=2048) for c in convs]
    out: dict[str, float] = {"anchors_s": round(anchors_s, 2), "examples": len(encoded)}
    out["mean_tokens"] = round(sum(len(e) for e in encoded) / len(encoded), 1)
    for name, batch in (("hooks_batch1", 1), ("ghost_batch8", 8)):
        engine = Engine(model, tok, anchors, SCORERS, batch_size=batch, batched=batch > 1)
        out[f"{name}_examples_per_s"] = round(len(encoded) / _timed(partial(engine.score, encoded), 2), 1)
    out["ghost_speedup"] = round(out["ghost_batch8_examples_per_s"] / out["hooks_batch1_examples_per_s"], 2)
    return out


def generation(tok: Any) -> dict[str, float]:
    import torch

    from worker.evaluation.generate import generate_all

    model = _model(torch.bfloat16)
    prompts = [list(range(3 + i % 50, 40 + i % 37)) for i in range(64)]
    out: dict[str, float] = {"prompts": len(prompts), "new_tokens": 64}
    for batch in (16, 64):
        s = _timed(partial(generate_all, model, tok, prompts, max_new_tokens=64, batch_size=batch), 2)
        out[f"batch{batch}_tokens_per_s"] = round(len(prompts) * 64 / s)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--layers", type=int, default=30, help="fewer blocks: a quick check of the script")
    ap.add_argument("--parts", default="training,scoring,generation")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    SMOLLM2_135M["num_hidden_layers"] = args.layers
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.utils.tiny_model import build_tiny_tokenizer

    info = print_machine()
    tok = build_tiny_tokenizer(Path("/tmp/cuda-bench-tok"))  # renders the chat template (ids < its vocab)
    tok.pad_token = tok.pad_token or tok.eos_token
    parts = {f.__name__: f for f in (training, scoring, generation)}
    timings: dict[str, dict[str, float]] = {}  # part -> its figures and seconds
    for part in (parts[p] for p in args.parts.split(",")):
        t0 = time.perf_counter()
        timings[part.__name__] = part(tok)
        timings[part.__name__]["seconds"] = round(time.perf_counter() - t0, 1)
        print(part.__name__, json.dumps(timings[part.__name__]), flush=True)
    result = json.dumps({"machine": info, "layers": args.layers, **timings}, indent=2)
    print(result)
    if args.out:
        args.out.write_text(result + "\n")


if __name__ == "__main__":
    main()
