"""Evaluate one model (optionally plus a LoRA adapter) on any prompt file (``tunegate eval``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate.conversation import load_examples
from tunegate.settings import get_settings
from worker.evaluation.judges import Judge
from worker.evaluation.prompts import Prompt, project_borderline
from worker.evaluation.records import (
    borderline_records,
    harmful_records,
    summarize_borderline,
    summarize_harmful,
)
from worker.ml.format import UserFormat, infer_format
from worker.ml.models import load_resolved


@dataclass(frozen=True)
class SingleEval:
    model: str
    adapter: str | None = None
    template: str = "chat"  # "chat" or a training JSONL whose format the prompts are wrapped in
    max_new_tokens: int = 64
    borderline_max_new_tokens: int = 24
    batch_size: int = 16
    dtype: str = "auto"  # auto | bf16 | fp32


def load_for_eval(model: str, adapter: str | None, dtype: str = "auto") -> tuple[Any, Any]:
    import torch

    dt = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(dtype)
    loaded = load_resolved(model, get_settings(), dtype=dt)
    m, tok = loaded.model, loaded.tokenizer
    if adapter:
        from peft import PeftModel

        m = PeftModel.from_pretrained(m, adapter).eval()
    return m, tok


def template_format(template: str) -> UserFormat | None:
    return None if template == "chat" else infer_format(load_examples(Path(template)))


def _quiet(fraction: float, message: str) -> None:
    del fraction, message


def evaluate_prompts(
    cfg: SingleEval,
    harmful: list[Prompt],
    benign: list[Prompt] | None,
    judge: Judge,
    progress: Callable[[float, str], None] = _quiet,
) -> dict[str, Any]:
    """ASR on ``harmful`` and over-refusal on ``benign`` (default: the project's borderline set);
    ``progress(fraction, message)`` follows the prompts answered."""
    t0 = time.monotonic()
    progress(0.0, f"loading {cfg.model}")
    model, tok = load_for_eval(cfg.model, cfg.adapter, cfg.dtype)
    fmt = template_format(cfg.template)
    benign = project_borderline() if benign is None else benign
    total = max(1, len(harmful) + len(benign))
    recs = harmful_records(
        model,
        tok,
        harmful,
        fmt,
        judge,
        cfg.max_new_tokens,
        cfg.batch_size,
        on_batch=lambda done, n: progress(done / total, f"harmful {done}/{n}"),
    )
    out: dict[str, Any] = {
        "model": cfg.model,
        "adapter": cfg.adapter,
        "template": cfg.template,
        "judge": judge.name,
        "max_new_tokens": cfg.max_new_tokens,
        **summarize_harmful(recs),
    }
    b: list[dict[str, Any]] = []
    if benign:
        b = borderline_records(
            model,
            tok,
            benign,
            fmt,
            cfg.borderline_max_new_tokens,
            cfg.batch_size,
            on_batch=lambda done, n: progress((len(harmful) + done) / total, f"benign {done}/{n}"),
        )
        out["over_refusal"] = summarize_borderline(b)
    out["seconds"] = round(time.monotonic() - t0, 1)
    out["records"] = [{"set": "harmful", **r} for r in recs] + [{"set": "benign", **r} for r in b]
    return out
