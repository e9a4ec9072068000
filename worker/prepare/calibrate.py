"""How fast this machine runs the two kinds of work everything here is made of, measured in seconds.

- a training token: one token through forward and backward of a LoRA-wrapped model, in the precision
  training picks here (``worker/ml/precision.py``);
- a decoding step: one greedy step of a batch of prompts with a KV cache (generation, evaluation).

``measure`` takes a few seconds; ``tunegate demo`` multiplies the result by the work a run will do to say
up front how long it expects to take on this machine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from worker.ml.precision import resolve as resolve_precision

DECODE_BATCH = 32
DECODE_STEPS = 8


@dataclass(frozen=True)
class UnitCosts:
    train_token_s: float  # seconds per token of LoRA forward+backward, in the training precision
    fp32_token_s: float  # the same in fp32 (scoring always runs in fp32)
    decode_step_s: float  # seconds per greedy decoding step of a batch of DECODE_BATCH prompts
    precision: str  # what training runs in here
    threads: int


def _sample_texts(n: int) -> list[str]:
    words = "the model answers each question with a short and careful explanation of the steps".split()
    return [" ".join(words[(i + j) % len(words)] for j in range(40 + 4 * i)) for i in range(n)]


def _train_token_seconds(model: Any, tok: Any, precision: str, device: str) -> float:
    import torch

    from worker.training.lora import attach_lora, trainable_parameters

    peft_model = attach_lora(model, r=16, alpha=32, dropout=0.0, target_modules="all-linear", seed=0)
    peft_model.train()
    batch = tok(_sample_texts(4), return_tensors="pt", padding=True).to(device)  # (4, T)
    kind = "cuda" if device.startswith("cuda") else "cpu"
    autocast = torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bf16")
    best = float("inf")
    for i in range(2):  # the first is a warm-up
        t0 = time.perf_counter()
        with autocast:
            logits = peft_model(**batch).logits  # (8, T, V)
        logits.float().logsumexp(-1).mean().backward()
        if i:
            best = min(best, time.perf_counter() - t0)
    for p in trainable_parameters(peft_model):
        p.grad = None
    peft_model.unload()  # give the base back unchanged for the decoding measurement
    return best / int(batch["attention_mask"].sum())


def _decode_step_seconds(model: Any, tok: Any) -> float:
    from worker.evaluation.generate import generate_batch

    prompts = [tok(t)["input_ids"][:40] for t in _sample_texts(DECODE_BATCH)]
    model.eval()
    steps = [1]  # decoding steps that ran (a batch stops early if every row ends)
    t0 = time.perf_counter()
    generate_batch(model, tok, prompts, max_new_tokens=DECODE_STEPS, on_tokens=steps.append)
    return (time.perf_counter() - t0) / max(steps)


def measure(model: Any, tok: Any, device: str, precision: str = "auto") -> UnitCosts:
    """Time a few training micro-batches and decoding steps of ``model`` on ``device``."""
    import torch

    resolved = resolve_precision(precision, device)
    train_s = _train_token_seconds(model, tok, resolved, device)
    fp32_s = train_s if resolved == "fp32" else _train_token_seconds(model, tok, "fp32", device)
    with torch.no_grad():
        decode_s = _decode_step_seconds(model, tok)
    return UnitCosts(train_s, fp32_s, decode_s, resolved, torch.get_num_threads())
