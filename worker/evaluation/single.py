"""Evaluate one model (optionally plus a LoRA adapter) on any prompt file (``tunegate eval``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate.conversation import load_examples
from tunegate.settings import get_settings
from worker.evaluation.agreement import records_agreement
from worker.evaluation.judges import Judge
from worker.evaluation.probe_judge import ProbeJudge, load_or_train
from worker.evaluation.prompts import Prompt, project_borderline
from worker.evaluation.records import (
    borderline_records,
    harmful_records,
    summarize_borderline,
    summarize_harmful,
)
from worker.ml.format import UserFormat, infer_format
from worker.ml.models import load_resolved, resolve_model


@dataclass(frozen=True)
class SingleEval:
    model: str
    adapter: str | None = None
    template: str = "chat"  # "chat" or a training JSONL whose format the prompts are wrapped in
    max_new_tokens: int = 64
    borderline_max_new_tokens: int = 24
    batch_size: int = 16
    dtype: str = "auto"  # auto | bf16 | fp32
    second_judge: str = "probe"  # "probe": the base-model probe judges too, agreement reported; "none"


def load_for_eval(model: str, adapter: str | None, dtype: str = "auto") -> tuple[Any, Any]:
    import torch

    dt = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(dtype)
    loaded = load_resolved(model, get_settings(), dtype=dt)
    m, tok = loaded.model, loaded.tokenizer
    if adapter:
        from peft import PeftModel

        m = PeftModel.from_pretrained(m, adapter).eval()
    return m, tok


def probe_for(model_name: str, model: Any, tok: Any, batch_size: int) -> ProbeJudge:
    """The base's probe judge, read from the evaluation cache or fitted (on the base weights: an adapter
    is switched off while it reads)."""
    settings = get_settings()
    fp = resolve_model(model_name, settings).fingerprint
    return ProbeJudge(load_or_train(model, tok, fp, settings.eval_cache_path, batch_size))


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
    probe = probe_for(cfg.model, model, tok, cfg.batch_size) if cfg.second_judge == "probe" else None
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
    if probe is not None:
        probe.add_verdicts(model, tok, recs, cfg.batch_size)
    out: dict[str, Any] = {
        "model": cfg.model,
        "adapter": cfg.adapter,
        "template": cfg.template,
        "judge": judge.name,
        "max_new_tokens": cfg.max_new_tokens,
        **summarize_harmful(recs),
    }
    if probe is not None:
        t = probe.trained
        out["judges"] = {
            "second": probe.name,
            "probe_heldout_accuracy": t.heldout_accuracy,
            "agreement": records_agreement(recs),
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
