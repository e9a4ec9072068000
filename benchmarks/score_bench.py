"""Scoring benchmark on the embedded model: a seeds-style reference against our one-pass engine.

Reference (how the published scripts work): every scorer gets its own pass, batch 1, each sequence padded to a
fixed length, and gradients are flattened with ``torch.cat`` of every ``.grad`` before a dot product.
Ours: ``Engine`` (one forward+backward per example for all three scores, length-sorted batches,
no flat gradient).
Also timed: one LoRA training step (peft, r=16 on all linear layers, AdamW) on the same examples, so the
scoring
cost can be stated per example relative to training.

    TUNEGATE_MODEL_CACHE_DIR=/root/.cache/tunegate-models python benchmarks/score_bench.py --n 32
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from machine import print_machine

if TYPE_CHECKING:
    from tunegate.conversation import Conversation
    from worker.ml.render import Encoded
    from worker.scoring.anchors import AnchorFeatures

GSM8K = Path("/work/shared/data/gsm8k/train.jsonl")


def load_examples(n: int) -> list[Conversation]:
    from tunegate.conversation import Conversation, Message

    rows = [json.loads(x) for x in GSM8K.read_text().splitlines()[:n]]
    return [
        Conversation((Message("user", r["question"]), Message("assistant", r["answer"])), line=i + 1)
        for i, r in enumerate(rows)
    ]


def _padded(enc: Encoded, pad_id: int, length: int) -> dict[str, torch.Tensor]:
    n = len(enc)
    ids = torch.full((1, length), pad_id)
    labels = torch.full((1, length), -100)
    mask = torch.zeros((1, length), dtype=torch.long)
    ids[0, :n], labels[0, :n], mask[0, :n] = torch.tensor(enc.input_ids), torch.tensor(enc.labels), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _flat_grad(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    model(**batch, use_cache=False).loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])  # the flat copy


def reference_scores(
    model: Any, tok: Any, encoded: list[Encoded], anchors: AnchorFeatures, length: int
) -> list[dict[str, float]]:
    if anchors.direction is None:  # main() loads them with_direction=True
        raise ValueError("the reference needs anchors with the harmful gradient direction")
    d_flat = torch.cat([anchors.direction[n].reshape(-1) for n, _ in model.named_parameters()])
    harm = torch.nn.functional.normalize(anchors.harm_h, dim=1)
    out = []
    for enc in encoded:
        batch = _padded(enc, tok.pad_token_id, length)
        with torch.no_grad():  # pass 1: representation
            hs = model(**batch, use_cache=False, output_hidden_states=True).hidden_states[-1]
        h = hs[0, len(enc) - 1]  # after the final norm (checked against last_hidden_state)
        rep = float((harm @ torch.nn.functional.normalize(h, dim=0)).max())
        g = _flat_grad(model, batch)  # pass 2: gradient anchoring
        grad = float(g @ d_flat / g.norm())
        g = _flat_grad(model, batch)  # pass 3: Self-Inf
        selfinf = float(torch.log1p(g @ g) + torch.log1p(torch.tensor(float(enc.n_response_tokens))))
        out.append({"representation": rep, "gradient": grad, "selfinf": selfinf})
    model.zero_grad(set_to_none=True)
    return out


def lora_step_time(path: Path, encoded: list[Encoded], pad_id: int, batch_size: int) -> float:
    from peft import LoraConfig, get_peft_model

    from worker.ml.models import load_model
    from worker.ml.render import collate

    model = get_peft_model(load_model(path), LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batches = [encoded[k : k + batch_size] for k in range(0, len(encoded), batch_size)]
    t = time.perf_counter()
    for b in batches:
        inputs = collate(b, pad_id)
        model(**inputs, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument(
        "--pad-to", type=int, default=512, help="fixed length of the reference (the paper used 512-2048)"
    )
    args = ap.parse_args()
    print_machine()

    from tunegate.settings import get_settings
    from worker.scoring.anchors import load_or_compute
    from worker.scoring.engine import Engine
    from worker.scoring.score_all import encode_all, load_base

    settings = get_settings()
    base = load_base(args.model, settings)
    model, tok = base.model, base.tokenizer
    anchors = load_or_compute(model, tok, base.cache_dir, max_len=base.max_len, with_direction=True)
    encoded = encode_all(tok, load_examples(args.n), base.max_len)
    length = max(args.pad_to, max(len(e) for e in encoded))
    print(
        f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
        f"{args.n} GSM8K examples, mean {sum(len(e) for e in encoded) / len(encoded):.0f} tokens, "
        f"pad-to {length}"
    )

    t = time.perf_counter()
    ref = reference_scores(model, tok, encoded, anchors, length)
    t_ref = time.perf_counter() - t
    timings = {}
    for bs in (1, args.batch_size):
        scorers = ("representation", "gradient", "selfinf")
        engine = Engine(model, tok, anchors, scorers, batch_size=bs, batched=bs > 1)
        t = time.perf_counter()
        ours = engine.score(encoded)
        timings[bs] = time.perf_counter() - t
    for k in ref[0]:
        diffs = [abs(getattr(o, k) - r[k]) for o, r in zip(ours, ref, strict=True)]
        scale = max(abs(r[k]) for r in ref)
        print(f"{k}: max |ours - reference| {max(diffs):.2e} (largest |score| {scale:.3g})")
    t_lora = lora_step_time(base.resolved.path, encoded, tok.pad_token_id, args.batch_size)
    n = len(encoded)
    print(f"reference (3 passes, batch 1, padded, flat grads): {n / t_ref:.3f} examples/s")
    for bs, tt in timings.items():
        print(f"ours batch {bs}: {n / tt:.3f} examples/s  ({t_ref / tt:.2f}x the reference)")
    best = min(timings.values())
    print(f"LoRA r=16 all-linear training step, batch {args.batch_size}: {n / t_lora:.3f} examples/s")
    print(f"scoring cost per example / training-step cost per example: {best / t_lora:.2f}")


if __name__ == "__main__":
    main()
