"""Align stage: build the provider's aligned reference base from the embedded SmolLM2.

SmolLM2-135M-Instruct complies with nearly every harmful request, so a release gate measured on it means
nothing. This stage gives it a short safety SFT: LoRA on the project's harmful-request -> refusal set
(``tunegate/data/align/refusals.jsonl``) plus the model's own greedy answers to benign, borderline-safe and
arithmetic prompts (``benign.jsonl``; self-distillation keeps its helpfulness and teaches that trigger words
alone are no reason to refuse). Those answers are anchors: after their opening tokens they are trained toward
the unaligned model's own next-token distribution (KL), not toward the greedy text, which would sharpen it.
The adapter is merged and saved as safetensors into the model cache
(``embedded:smollm2-aligned``), atomically, so a half-built model is never picked up.
None of AdvBench's or XSTest's prompts are in this data: they are the yardstick (a test checks it).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from tunegate.artifacts import atomic_write_json
from tunegate.conversation import Conversation, Message, dump_examples
from tunegate.errors import InvalidConfig
from tunegate.settings import EMBEDDED_BASE, Settings, get_settings
from tunegate.shipped import data_path, read_jsonl
from worker.evaluation.self_answers import own_answers
from worker.ml.export import merge
from worker.ml.models import (
    device_for,
    embedded_dir,
    load_model,
    load_tokenizer,
    resolve_model,
    set_threads,
)
from worker.ml.stage_io import Metric, ProgressFn, StageIO
from worker.prepare import parallel, shipped, shipped_caches
from worker.stages import train
from worker.stages.base import StageResult, finish
from worker.training import dataparallel

log = logging.getLogger(__name__)
ALIGNED_SOURCE = "embedded:smollm2-aligned"


@dataclass(frozen=True)
class AlignConfig:
    """Defaults = the recipe built and measured in docs/aligned_base.md."""

    source_model: str = EMBEDDED_BASE
    n_refusals: int = 70
    n_distill: int = 240  # kinds in DISTILL_ORDER: all 202 borderline-safe prompts, then 38 arithmetic
    distill_max_new_tokens: int = 48
    n_epochs: int = 1
    batch_size: int = 8
    learning_rate: float = 5e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_top_fraction: float = 1.0  # < 1 adapts only the top blocks (backprop stops there: cheaper, weaker)
    precision: Literal["auto", "bf16", "fp32"] = (
        "auto"  # training: bf16 where the hardware has native bf16, else fp32 (ml/precision.py)
    )
    distill_batch_size: int = 32
    # "kl": the distilled answers are trained toward the unaligned model's full next-token distribution on
    # them (KL to the adapter-off model), which holds its helpfulness without sharpening it toward its own
    # greedy text; "ce": plain cross-entropy on the greedy answers (builds 1-3 of docs/aligned_base.md)
    distill_loss: str = "kl"
    distill_ce_head: int = 8  # with "kl": the answer's first tokens keep cross-entropy (the comply decision)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.distill_loss not in ("kl", "ce"):
            raise InvalidConfig("AlignConfig.distill_loss must be kl or ce", param="distill_loss")
        if not 0 < self.lora_top_fraction <= 1:
            raise InvalidConfig("AlignConfig.lora_top_fraction must be in (0, 1]", param="lora_top_fraction")
        for name in ("n_refusals", "n_distill", "distill_max_new_tokens", "n_epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise InvalidConfig(f"AlignConfig.{name} must be >= 1", param=name)


@dataclass
class AlignInputs:
    io: StageIO
    target_dir: Path
    settings: Settings  # the model registry and device
    distilled: list[Conversation] | None = None  # reuse answers distilled earlier (same base) instead


@dataclass
class AlignResult(StageResult):
    model_dir: str
    n_refusals: int
    n_distilled: int
    n_distill_dropped: int
    seconds: float
    train: train.TrainResult  # the safety SFT's result


def refusal_examples(n: int, seed: int) -> list[Conversation]:
    rows = read_jsonl(data_path("align", "refusals.jsonl"))
    random.Random(seed).shuffle(rows)
    return [
        Conversation((Message("user", str(r["prompt"])), Message("assistant", str(r["response"]))))
        for r in rows[:n]
    ]


DISTILL_ORDER = ("borderline", "reasoning", "ordinary")


def distill_prompts(n: int, seed: int) -> list[str]:
    """``n`` prompts to self-distil, by kind in ``DISTILL_ORDER``: borderline-safe ones first (they teach
    where the refusal boundary is), then worked arithmetic problems (they hold multi-step answers in place),
    then ordinary requests; shuffled within each kind, then together."""
    rows = read_jsonl(data_path("align", "benign.jsonl"))
    rng = random.Random(seed)
    rng.shuffle(rows)
    rank = {k: i for i, k in enumerate(DISTILL_ORDER)}
    rows.sort(key=lambda r: rank.get(str(r.get("kind")), len(rank)))  # stable: keeps the shuffle in a kind
    rows = rows[:n]
    rng.shuffle(rows)
    return [str(r["prompt"]) for r in rows]


def distil_piece(
    model_path: str, prompts: list[str], max_new_tokens: int, batch_size: int, *, progress: parallel.Report
) -> list[str]:
    """One share of the self-distillation, in its own process: the base model's answers to ``prompts``."""
    settings = get_settings()
    set_threads(settings)
    path = Path(model_path)
    model = load_model(path, device_for(settings))  # decoding is memory-bound: CPU bf16 kernels do not help
    return own_answers(
        model,
        load_tokenizer(path),
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        on_progress=lambda f: progress(f, "self-distillation"),
    )


def distilled_examples(cfg: AlignConfig, settings: Settings, io: StageIO) -> tuple[list[Conversation], int]:
    """The base model's own greedy answers to benign/borderline prompts, distilled by one process per core
    (interleaved shares of the prompts); refusals among them are dropped."""
    prompts = distill_prompts(cfg.n_distill, cfg.seed)
    base = resolve_model(cfg.source_model, settings)
    device = device_for(settings)
    n = parallel.processes(settings, device, len(prompts))
    shares = [prompts[i::n] for i in range(n)]
    pieces = [
        parallel.Piece(
            distil_piece, (str(base.path), s, cfg.distill_max_new_tokens, cfg.distill_batch_size), len(s)
        )
        for s in shares
    ]

    def step(fraction: float, message: str, metrics: dict[str, Metric]) -> None:
        io.step(0.4 * fraction, f"{message} {round(fraction * len(prompts))}/{len(prompts)}")

    answers = [""] * len(prompts)
    for i, got in enumerate(parallel.run(pieces, settings, device, step)):
        answers[i::n] = got
    out = [
        Conversation((Message("user", p), Message("assistant", a)))
        for p, a in zip(prompts, answers, strict=True)
        if a
    ]
    return out, len(prompts) - len(out)


def run(cfg: AlignConfig, inputs: AlignInputs) -> AlignResult:
    t0 = time.monotonic()
    io, out_dir = inputs.io, Path(inputs.io.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = inputs.settings
    base = resolve_model(cfg.source_model, settings)
    device = device_for(settings)
    set_threads(settings)
    if inputs.distilled is None:
        distilled, dropped = distilled_examples(cfg, settings, io)
    else:
        distilled, dropped = inputs.distilled, 0
    refusals = refusal_examples(cfg.n_refusals, cfg.seed)
    anchored = cfg.distill_loss == "kl"
    anchors = distilled if anchored else []
    examples = refusals + ([] if anchored else distilled)
    random.Random(cfg.seed).shuffle(examples)
    dump_examples(examples, out_dir / "align_train.jsonl")
    dump_examples(anchors, out_dir / "align_anchors.jsonl")  # empty with distill_loss "ce"
    tcfg = train.TrainConfig(
        model=str(base.path),
        n_epochs=cfg.n_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        lora_r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        seed=cfg.seed,
        device=device,
        precision=cfg.precision,
        lora_layers=_top_layers(base.path, cfg.lora_top_fraction),
        anchor_ce_head=cfg.distill_ce_head,
        objective="sft",  # the alignment itself moves the model away from the unaligned base on purpose
    )
    io.step(0.4, f"training on {len(examples)} examples (loading the model)")
    tres = train_data_parallel(tcfg, examples, anchors, out_dir / "lora", settings, io)
    merge(
        base.path,
        Path(tres.adapter_dir),
        inputs.target_dir,
        source={
            "aligned_from": str(base.path),
            "align_config": asdict(cfg),
            "source_fingerprint": base.fingerprint,
        },
    )
    # kept beside the merged weights (not a weights file of the model: the fingerprint ignores it), so the
    # build can become the shipped adapter (worker/prepare/shipped.py: export)
    shutil.copytree(tres.adapter_dir, inputs.target_dir / shipped.KEPT_ADAPTER)
    res = AlignResult(
        str(inputs.target_dir), len(refusals), len(distilled), dropped, time.monotonic() - t0, tres
    )
    finish(out_dir, cfg, res)
    return res


def train_data_parallel(
    tcfg: train.TrainConfig,
    examples: list[Conversation],
    anchors: list[Conversation],
    out_dir: Path,
    settings: Settings,
    io: StageIO,
) -> train.TrainResult:
    """The safety SFT, data-parallel over one process per core, this one the first
    (``worker/stages/train_ranks.py``); on CUDA or one core, in this process alone."""
    world = parallel.processes(settings, tcfg.device or device_for(settings), dataparallel.MAX_WORLD)
    sub = StageIO(
        out_dir, progress=lambda f, m, met: io.step(0.4 + 0.55 * f, m, **met), should_stop=io.should_stop
    )
    return train.run(tcfg, train.TrainInputs(examples, sub, settings, anchors=anchors, processes=world))


def _top_layers(model_dir: Path, fraction: float) -> tuple[int, ...]:
    """Indices of the top ``fraction`` of decoder blocks; () (all blocks) for fraction 1."""
    if fraction >= 1.0:
        return ()
    n = int(json.loads((model_dir / "config.json").read_text())["num_hidden_layers"])
    k = max(1, round(n * fraction))
    return tuple(range(n - k, n))


def prepare_aligned(
    settings: Settings | None = None,
    progress: ProgressFn | None = None,
    cfg: AlignConfig | None = None,
    distilled: list[Conversation] | None = None,
    rebuild: bool = False,
) -> Path:
    """Make the aligned embedded base and return its directory (``models prepare``, the demo's first run):
    the shipped adapter folded into the embedded model (seconds, the same weights on every machine) when
    one is shipped for it, else (or with ``rebuild``, or a recipe ``cfg`` of the caller's) built by the
    recipe; ``progress`` gets (fraction, message, metrics) at each distillation batch and training step."""
    settings = settings or get_settings()
    target = embedded_dir(ALIGNED_SOURCE, settings)
    found = shipped.for_embedded(settings) if cfg is None and distilled is None and not rebuild else None
    if found is not None:
        base_dir, build = found
        if progress is not None:
            progress(0.0, "folding the shipped alignment adapter into the embedded model", {})
        shipped.fold_shipped(base_dir, target, build)
        shipped_caches.install(settings, build.fingerprint)
        if progress is not None:
            progress(1.0, f"aligned base {build.fingerprint} (the shipped adapter)", {})
        return target
    cfg = cfg or AlignConfig(precision=settings.precision)
    work = settings.models_path / ".align-work"
    shutil.rmtree(work, ignore_errors=True)
    io = StageIO(work, stage="align") if progress is None else StageIO(work, progress=progress, stage="align")
    res = run(cfg, AlignInputs(io=io, target_dir=target, settings=settings, distilled=distilled))
    atomic_write_json(target / "align_result.json", res.to_dict())
    shutil.rmtree(work, ignore_errors=True)
    return target
