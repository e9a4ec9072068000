"""What the training benchmarks (``objective_bench``, ``train_step_bench``) build their micro-batch on: the
embedded aligned SmolLM2 in float32 with a fresh LoRA adapter (r 16, alpha 32, on all linear layers), in train
mode, and the project's refusals as conversations.

Imported inside a benchmark's ``main``, after ``print_machine``, as torch and the worker are.
"""

from __future__ import annotations

from typing import Any

import torch

from tunegate.conversation import Conversation, Message
from tunegate.settings import EMBEDDED_BASE
from tunegate.shipped import data_path, read_jsonl
from worker.ml.models import LoadedModel, load_resolved
from worker.training.lora import attach_lora


def lora_base() -> tuple[LoadedModel, Any]:
    """The loaded base (its tokenizer and device) and the base with the adapter, in train mode."""
    lm = load_resolved(EMBEDDED_BASE, dtype=torch.float32)
    model = attach_lora(lm.model, r=16, alpha=32, dropout=0.0, target_modules="all-linear", seed=0)
    model.train()
    return lm, model


def refusal_conversations(n: int) -> list[Conversation]:
    """The first ``n`` project refusals (``align/refusals.jsonl``), each a prompt and its refusal."""
    return [
        Conversation((Message("user", str(r["prompt"])), Message("assistant", str(r["response"]))))
        for r in read_jsonl(data_path("align", "refusals.jsonl"))[:n]
    ]
