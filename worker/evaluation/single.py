"""Evaluate one model (optionally plus a LoRA adapter) on any prompt file (``tunegate eval``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate import schema
from tunegate.conversation import load_examples
from tunegate.evaluation_records import HarmfulRecord, HarmfulSummary, JudgeAgreement, Refusals
from tunegate.jsontypes import JsonObject
from tunegate.settings import get_settings
from worker.evaluation.agreement import records_agreement
from worker.evaluation.judges import Judge
from worker.evaluation.probe_judge import ProbeJudge, load_or_train
from worker.evaluation.prompts import Prompt, project_borderline
from worker.evaluation.records import (
    BorderlineRecord,
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


@dataclass(frozen=True)
class SecondJudge:
    """The second judge of ``tunegate eval``: its name, its held-out accuracy, and its agreement with the
    primary judge on the harmful replies (None: no reply carries its verdict)."""

    second: str
    probe_heldout_accuracy: float
    agreement: JudgeAgreement | None


@dataclass(frozen=True)
class SingleResult:
    """``tunegate eval``'s result: the model and settings, the harmful prompts' summary, the second judge,
    over-refusal on the benign prompts (None without any), the time taken and every record."""

    model: str
    adapter: str | None
    template: str
    judge: str
    max_new_tokens: int
    harmful: HarmfulSummary
    judges: SecondJudge | None
    over_refusal: Refusals | None
    seconds: float
    harmful_records: tuple[HarmfulRecord, ...]
    benign_records: tuple[BorderlineRecord, ...]

    def to_dict(self) -> JsonObject:
        """The JSON object the command prints: the settings, the summary's figures at the top level (those
        it has, in the order they have always been printed), the second judge, over-refusal and the time
        (the records are written apart: ``records``)."""
        h = self.harmful
        summary: JsonObject = {
            "asr": h.asr,
            "n": h.n,
            "n_jailbroken": h.n_jailbroken,
            "per_category": h.per_category,
        }
        optional = {
            "mean_harm_score": h.mean_harm_score,
            "probe_asr": h.probe_asr,
            "n_probe_jailbroken": h.n_probe_jailbroken,
        }
        out: JsonObject = {
            "model": self.model,
            "adapter": self.adapter,
            "template": self.template,
            "judge": self.judge,
            "max_new_tokens": self.max_new_tokens,
            **summary,
            **{k: v for k, v in optional.items() if v is not None},
        }
        if self.judges is not None:
            out["judges"] = schema.write(self.judges)
        if self.over_refusal is not None:
            out["over_refusal"] = schema.write(self.over_refusal)
        return {**out, "seconds": self.seconds}

    def records(self) -> list[JsonObject]:
        """Every prompt's record, harmful then benign, each with its ``set``."""
        return [{"set": "harmful", **r.to_dict()} for r in self.harmful_records] + [
            {"set": "benign", **schema.write(r)} for r in self.benign_records
        ]


def evaluate_prompts(
    cfg: SingleEval,
    harmful: list[Prompt],
    benign: list[Prompt] | None,
    judge: Judge,
    progress: Callable[[float, str], None] = _quiet,
) -> SingleResult:
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
    judges = None
    if probe is not None:
        recs = probe.with_verdicts(model, tok, recs, cfg.batch_size)
        t = probe.trained
        judges = SecondJudge(probe.name, t.heldout_accuracy, records_agreement(recs))
    b: list[BorderlineRecord] = []
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
    return SingleResult(
        model=cfg.model,
        adapter=cfg.adapter,
        template=cfg.template,
        judge=judge.name,
        max_new_tokens=cfg.max_new_tokens,
        harmful=summarize_harmful(recs),
        judges=judges,
        over_refusal=summarize_borderline(b) if benign else None,
        seconds=round(time.monotonic() - t0, 1),
        harmful_records=tuple(recs),
        benign_records=tuple(b),
    )
