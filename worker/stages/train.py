"""Train stage: a LoRA adapter (peft format) on the mitigated training set.

Output layout in ``io.out_dir``: ``adapter/`` (released only if the gate passes; with a post-training
``repair`` it is the repaired adapter and ``adapter-unrepaired/`` the trained one), ``checkpoints/epoch-N/``
(one per epoch; a crashed, redelivered or paused run resumes from the latest), ``metrics.jsonl`` (one line
per optimizer step), ``results.csv`` (the job's results file: one row per optimizer step, the validation
columns filled on each epoch's last step when the job has a validation file), ``heldout.jsonl`` (the user's
examples held out of training for the repair stage's task loss, when it holds any), ``result.json``.

Held-out split: a job without a validation file whose adapter the repair stage may repair (the policy's
``repair_on`` allows it for this data, and the base records the model it was aligned from) trains on all but
``heldout_fraction`` of the user's examples, drawn with the job's seed (``heldout_lines``); the repair stage
measures the task loss of the trained and each repaired adapter on them (docs/safety.md, "Repair").
"""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.orm import Session

from models.policy import DEFAULT_POLICY
from models.records import Hyperparameters
from models.tables import File, Job
from tunegate.artifacts import atomic_write_json, atomic_write_text, publish_dir
from tunegate.conversation import ChatMessageJSON, Conversation, dump_examples, load_examples
from tunegate.cpus import available_cpus
from tunegate.errors import InvalidConfig
from tunegate.settings import Settings
from tunegate.storage import Publish, artifact_publisher, get_storage
from worker.ml.models import SOURCE_FILE, context_length, device_for, load_resolved, resolve_model
from worker.ml.render import encode
from worker.ml.stage_io import CheckpointInfo, StageIO
from worker.stages import mitigate, score
from worker.stages.base import StageResult, finish, result_exists
from worker.stages.spec import Applied, StageContext, StageSpec
from worker.training.dataparallel import Shard, cpu_world
from worker.training.hparams import ResolvedHyperparameters, resolve_hyperparameters
from worker.training.loop import ONE, LoopConfig, train_loop
from worker.training.lora import attach_lora
from worker.training.math import Bistate, Constraint
from worker.training.repair_io import RepairApplied, RepairConfig, alignment_reference, repair_adapter

__all__ = [
    "TrainConfig",
    "TrainInputs",
    "TrainResult",
    "run",
    "resolve_hyperparameters",
    "config_from_openai",
]


@dataclass(frozen=True)
class TrainConfig:
    model: str
    n_epochs: int = 3
    batch_size: int = 4  # micro-batch (examples per forward pass)
    grad_accum: int = 1  # micro-batches per optimizer step
    learning_rate: float = 1e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"
    lora_layers: tuple[int, ...] = ()  # decoder blocks to adapt; () = all
    seed: int = 0
    warmup_fraction: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_len: int = 0  # 0: the model's context length
    device: str = ""  # "": from settings (auto = CUDA when present)
    precision: Literal["auto", "bf16", "fp32"] = (
        "auto"  # auto: bf16 autocast where the hardware has native bf16, else fp32 | bf16 | fp32
    )
    anchor_ce_head: int = 0  # TrainInputs.anchors keep cross-entropy on this many opening reply tokens
    # "constrained": the user's tokens are trained by the token-wise constrained objective against the base
    # (worker/training/math.py, Constraint: b = beta_first on a reply's first token, beta_early up to its
    # early_tokens-th, beta_rest after); "sft": plain cross-entropy. Constrained by default: it eroded the
    # base's refusals less than SFT on every benign control measured (docs/safety.md, "Training that keeps
    # the base's safety")
    objective: Literal["sft", "constrained"] = "constrained"
    beta_first: float = 0.5
    beta_early: float = 2.0
    beta_rest: float = 0.1
    early_tokens: int = 5
    # the mitigation's injected examples (safety refusals and contrastive helpful answers) are trained as
    # anchors: cross-entropy on their first anchor_ce_head reply tokens, KL to the base after
    anchor_injected: bool = False
    # "lisa": the injected examples train in steps of their own, alternating in blocks with the user's, each
    # state held near the other's weights by a proximal term (worker/training/math.py, Bistate: lisa_rho,
    # lisa_rounds block pairs an epoch); "mixed": shuffled in with the user's examples
    schedule: Literal["mixed", "lisa"] = "mixed"
    lisa_rho: float = 1.0
    lisa_rounds: int = 2
    # post-training repair from the base's alignment difference (worker/training/repair.py): "none" |
    # "restore" (add repair_alpha x (aligned - unaligned) back) | "project" (Safe LoRA, repair_threshold)
    repair: Literal["none", "restore", "project"] = "none"
    repair_alpha: float = 0.5
    repair_threshold: float = 0.35
    # without a validation file, this share of the user's examples is held out of training when the repair
    # stage may repair the adapter (its task loss is measured on them); 0: never
    heldout_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.repair not in ("none", "restore", "project"):  # merge is the repair stage's (its ladder)
            raise InvalidConfig("repair method must be none, restore or project", param="repair")
        self.repair_config()  # validates the repair knobs
        if not 0 <= self.heldout_fraction <= 0.5:
            raise InvalidConfig("TrainConfig.heldout_fraction must be in [0, 0.5]", param="heldout_fraction")
        for name in ("n_epochs", "batch_size", "grad_accum", "lora_r", "lora_alpha"):
            if int(getattr(self, name)) < 1:
                raise InvalidConfig(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}", param=name)
        if not 0 < self.learning_rate < 1:
            raise InvalidConfig(
                f"TrainConfig.learning_rate must be in (0, 1), got {self.learning_rate}",
                param="learning_rate",
            )
        if not 0 <= self.lora_dropout < 1:
            raise InvalidConfig("TrainConfig.lora_dropout must be in [0, 1)", param="lora_dropout")
        if not 0 <= self.warmup_fraction < 1:
            raise InvalidConfig("TrainConfig.warmup_fraction must be in [0, 1)", param="warmup_fraction")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise InvalidConfig("TrainConfig.precision must be auto, bf16 or fp32", param="precision")
        if not self.target_modules:
            raise InvalidConfig("TrainConfig.target_modules must not be empty", param="target_modules")
        if self.objective not in ("sft", "constrained"):
            raise InvalidConfig("TrainConfig.objective must be sft or constrained", param="objective")
        if min(self.beta_first, self.beta_early, self.beta_rest) <= 0 or self.early_tokens < 1:
            raise InvalidConfig(
                "TrainConfig's betas must be positive and early_tokens at least 1", param="objective"
            )
        if self.schedule not in ("mixed", "lisa"):
            raise InvalidConfig("TrainConfig.schedule must be mixed or lisa", param="schedule")
        if self.lisa_rho < 0 or self.lisa_rounds < 1:
            raise InvalidConfig("TrainConfig.lisa_rho must be >= 0 and lisa_rounds >= 1", param="schedule")
        if self.schedule == "lisa" and self.anchor_injected:
            raise InvalidConfig(
                "TrainConfig.schedule lisa trains the injected examples in their own state; "
                "anchor_injected trains them as anchors: choose one",
                param="schedule",
            )

    def repair_config(self) -> RepairConfig:
        return RepairConfig(self.repair, self.repair_alpha, self.repair_threshold)

    def constraint(self) -> Constraint | None:
        """The constrained objective's betas, or None for plain cross-entropy."""
        if self.objective == "sft":
            return None
        return Constraint(self.beta_first, self.beta_early, self.beta_rest, self.early_tokens)

    def bistate(self) -> Bistate | None:
        """Lisa's alternating states, or None for the mixed schedule."""
        return Bistate(self.lisa_rho, self.lisa_rounds) if self.schedule == "lisa" else None


def config_from_openai(
    model: str, hparams: Hyperparameters | None, n_examples: int, **overrides: Any
) -> TrainConfig:
    """A TrainConfig from a job's OpenAI hyperparameters (``"auto"`` resolved from the dataset size)."""
    r: ResolvedHyperparameters = resolve_hyperparameters(hparams, n_examples)
    return TrainConfig(
        model=model,
        n_epochs=r.n_epochs,
        batch_size=r.micro_batch_size,
        grad_accum=r.grad_accum,
        learning_rate=r.learning_rate,
        **overrides,
    )


@dataclass
class TrainInputs:
    examples: list[Conversation]
    io: StageIO  # its on_checkpoint hears of every saved checkpoint
    settings: Settings  # the model registry, device and torch threads
    # trained toward the base model's own next-token distribution (KL to the adapter-off model) on their
    # assistant tokens instead of toward the text: keeps the base's behaviour there without sharpening it
    anchors: list[Conversation] = field(default_factory=list)
    validation: list[Conversation] = field(default_factory=list)  # measured at each epoch's end
    # the injected examples of the "lisa" schedule's alignment state (split out of ``examples``)
    alignment: list[Conversation] = field(default_factory=list)
    shard: Shard = ONE  # this process's place among data-parallel ones (set by train_ranks)
    # train in this many data-parallel CPU processes, this one the first (``train_ranks``); 1: here alone
    processes: int = 1
    # the user's examples held out of ``examples`` (not trained on): written to heldout.jsonl for the repair
    # stage's task loss, their lines recorded
    heldout: list[Conversation] = field(default_factory=list)


@dataclass
class TrainResult(StageResult):
    adapter_dir: str
    trained_tokens: int
    steps: int
    epochs: int
    resumed_from_epoch: int
    n_examples: int
    base_fingerprint: str
    n_anchors: int = 0
    n_alignment: int = 0  # the "lisa" schedule's alignment examples (not in n_examples)
    metrics: dict[str, float] = field(default_factory=dict)
    results_file: str = ""  # results.csv (RESULT_COLUMNS), stored as the job's result file by ``apply``
    repair: RepairApplied | None = None  # the repair applied to the adapter (None: none; written as {})
    heldout_file: str = ""  # heldout.jsonl: the user's examples held out of training ("" when none)
    heldout_lines: list[int] = field(default_factory=list)  # their lines in the training file

    EMPTY_AS_OBJECT = ("repair",)  # no repair


# OpenAI's results-file columns; the validation ones are empty on steps that end no epoch.
RESULT_COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
RESULTS_PURPOSE = "fine-tune-results"


def results_csv(history: list[dict[str, float]]) -> str:
    """The results file of a run's per-step ``history`` (the loop's metric names mapped to OpenAI's)."""
    names = {"train_accuracy": "train_mean_token_accuracy"}
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(RESULT_COLUMNS)
    for h in history:
        row = [h.get(names.get(c, c)) for c in RESULT_COLUMNS]
        w.writerow(
            [
                "" if v is None else int(v) if c == "step" else f"{v:.6f}"
                for c, v in zip(RESULT_COLUMNS, row, strict=True)
            ]
        )
    return buf.getvalue()


def run(cfg: TrainConfig, inputs: TrainInputs) -> TrainResult:
    import torch

    if not inputs.examples and not inputs.anchors and not inputs.alignment:
        raise InvalidConfig("no training examples left to train on", param="examples")
    if inputs.processes > 1 and inputs.shard.world == 1:
        from worker.stages import train_ranks

        return train_ranks.run(cfg, inputs)
    out_dir = Path(inputs.io.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = load_resolved(cfg.model, inputs.settings, device=cfg.device, dtype=torch.float32)
    resolved, tok, model = loaded.resolved, loaded.tokenizer, loaded.model
    reference = repair_reference(cfg, resolved.path)  # refused before training, not after
    max_len = cfg.max_len or context_length(model)
    data = [encode(tok, c, max_len=max_len) for c in inputs.examples]
    data += [replace(encode(tok, c, max_len=max_len), anchor=True) for c in inputs.anchors]
    valid = [encode(tok, c, max_len=max_len) for c in inputs.validation]
    alignment = [encode(tok, c, max_len=max_len) for c in inputs.alignment]
    model = attach_lora(
        model,
        r=cfg.lora_r,
        alpha=cfg.lora_alpha,
        dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules,
        seed=cfg.seed,
        layers=tuple(cfg.lora_layers),
    )
    loop_cfg = LoopConfig(
        cfg.n_epochs,
        cfg.batch_size,
        cfg.grad_accum,
        cfg.learning_rate,
        cfg.seed,
        cfg.warmup_fraction,
        cfg.weight_decay,
        cfg.max_grad_norm,
        cfg.precision,
        cfg.anchor_ce_head,
        cfg.constraint(),
        cfg.bistate(),
    )
    res = train_loop(
        model,
        data,
        int(tok.pad_token_id),
        loop_cfg,
        inputs.io,
        out_dir / "checkpoints",
        valid=valid,
        shard=inputs.shard,
        alignment=alignment,
    )
    raw = out_dir / ("adapter" if reference is None else UNREPAIRED)
    _publish_adapter(model, tok, raw, resolved.path, resolved.fingerprint)
    repaired = None
    if reference is not None:
        inputs.io.step(1.0, f"repairing the adapter ({cfg.repair})")
        rep = repair_adapter(raw, resolved.path, reference, out_dir / "adapter", cfg.repair_config())
        repaired = rep.applied()
    atomic_write_text(out_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in res.history))
    atomic_write_text(out_dir / "results.csv", results_csv(res.history))
    if inputs.heldout:
        dump_examples(inputs.heldout, out_dir / HELDOUT_FILE)
    result = TrainResult(
        adapter_dir=str(out_dir / "adapter"),
        trained_tokens=res.trained_tokens,
        steps=res.steps,
        epochs=res.epochs,
        resumed_from_epoch=res.resumed_from_epoch,
        n_examples=len(inputs.examples),
        base_fingerprint=resolved.fingerprint,
        n_anchors=len(inputs.anchors),
        n_alignment=len(inputs.alignment),
        metrics=res.history[-1] if res.history else {},
        results_file=str(out_dir / "results.csv"),
        repair=repaired,
        heldout_file=str(out_dir / HELDOUT_FILE) if inputs.heldout else "",
        heldout_lines=sorted(c.line for c in inputs.heldout),
    )
    return finish(out_dir, cfg, result)


HELDOUT_FILE = "heldout.jsonl"


def heldout_lines(lines: list[int], fraction: float, seed: int) -> list[int]:
    """The lines to hold out of training: ``floor(fraction x n)`` of the ``n`` given, drawn with ``seed``
    (the same lines for the same job), sorted; none when that rounds to 0."""
    k = int(len(lines) * fraction)
    return sorted(random.Random(seed).sample(sorted(lines), k)) if k > 0 else []


def _key(c: Conversation) -> tuple[tuple[str, str], ...]:
    """A conversation's turns as text (a down-weighted copy has the same key as the user's example)."""
    return tuple((m.role, m.text) for m in c.messages)


def split_heldout(
    user: list[Conversation], train: list[Conversation], fraction: float, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """(what to train on, the held-out user examples): ``heldout_lines`` of the user's examples that are in
    the (mitigated) training set, removed from it with every copy of their text; the held-out examples are
    the user's own (their original weights)."""
    keys = {_key(c) for c in train}
    candidates = [c for c in user if _key(c) in keys]
    chosen = set(heldout_lines([c.line for c in candidates], fraction, seed))
    held = [c for c in candidates if c.line in chosen]
    gone = {_key(c) for c in held}
    return [c for c in train if _key(c) not in gone], held


def repair_may_run(ctx: StageContext) -> bool:
    """Whether the repair stage may repair this job's adapter (so the train stage holds data out for it):
    no validation file to measure the task loss on, the job's policy's ``repair_on`` allows it for this data
    (the provider default for a job created before the knob existed), and the base records the model it was
    aligned from."""
    view = ctx.view
    if view.validation_file is not None:
        return False
    repair_on = view.safety.get("repair_on", DEFAULT_POLICY["repair_on"])
    if repair_on == "never":
        return False
    if repair_on == "unflagged" and result_exists(ctx.dir_of(score.SPEC)):
        if ctx.result(score.SPEC).verdict.flagged:
            return False
    return alignment_reference(resolve_model(view.model, ctx.settings).path) is not None


UNREPAIRED = "adapter-unrepaired"  # the trained adapter as it was, kept beside the repaired ``adapter/``


def repair_reference(cfg: TrainConfig, base_path: Path) -> Path | None:
    """The unaligned model a repair measures the alignment difference against; None when no repair is asked.
    A base that records no unaligned source cannot be repaired: refused, naming the base."""
    if cfg.repair == "none":
        return None
    ref = alignment_reference(base_path)
    if ref is None or not ref.is_dir():
        raise InvalidConfig(
            f"repair {cfg.repair!r} needs the model {base_path} was aligned from (its {SOURCE_FILE} names "
            f"none, or that model is gone): only a base built by tunegate's alignment can be repaired",
            param="repair",
        )
    return ref


def build(ctx: StageContext, io: StageIO) -> tuple[TrainConfig, TrainInputs]:
    view = ctx.view
    mitigated = ctx.result(mitigate.SPEC)
    examples = load_examples(mitigated.train_file)
    cfg = config_from_openai(
        view.model, view.hyperparameters, len(examples), seed=view.seed, precision=ctx.settings.precision
    )
    io = publishing_checkpoints(io, artifact_publisher(ctx.settings, view.id))
    validation = load_examples(view.validation_file) if view.validation_file is not None else []
    cfg = ctx.configure(cfg, SPEC)
    heldout: list[Conversation] = []
    if cfg.heldout_fraction > 0 and repair_may_run(ctx):
        user = load_examples(view.training_file)
        examples, heldout = split_heldout(user, examples, cfg.heldout_fraction, view.seed)
    anchors: list[Conversation] = []
    alignment: list[Conversation] = []
    if cfg.anchor_injected and mitigated.actions_file:
        examples, anchors = split_injected(examples, Path(mitigated.actions_file))
    elif cfg.schedule == "lisa" and mitigated.actions_file:
        examples, alignment = split_injected(examples, Path(mitigated.actions_file))
    return cfg, TrainInputs(
        examples,
        io,
        ctx.settings,
        anchors=anchors,
        alignment=alignment,
        validation=validation,
        heldout=heldout,
        processes=processes(cfg, ctx.settings),
    )


def processes(cfg: TrainConfig, settings: Settings) -> int:
    """The data-parallel processes a job's training runs in here (``dataparallel.cpu_world``): one per
    torch thread of this worker on CPU, for a model big enough to pay for their start."""
    if settings.train_processes == 1:  # the default: nothing to look up
        return 1
    kind = "cuda" if (cfg.device or device_for(settings)).startswith("cuda") else "cpu"
    path = resolve_model(cfg.model, settings).path
    weights = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    threads = settings.torch_threads or available_cpus()
    step = cfg.batch_size * cfg.grad_accum
    return cpu_world(settings.train_processes, kind, threads, step, weights)


def _chat_key(messages: list[ChatMessageJSON]) -> str:
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def split_injected(
    examples: list[Conversation], actions_file: Path
) -> tuple[list[Conversation], list[Conversation]]:
    """(the user's examples, the injected ones): the mitigated training set split by the injected examples
    ``actions.json`` lists (safety refusals and contrastive helpful answers), matched by their messages."""
    actions = json.loads(actions_file.read_text(encoding="utf-8"))
    keys = {_chat_key(item["messages"]) for item in actions.get("injected", [])}
    is_injected = [_chat_key(c.to_chat_dict()["messages"]) in keys for c in examples]
    user = [c for c, inj in zip(examples, is_injected, strict=True) if not inj]
    return user, [c for c, inj in zip(examples, is_injected, strict=True) if inj]


def publishing_checkpoints(io: StageIO, publish: Publish) -> StageIO:
    """``io`` whose checkpoint callback first publishes the checkpoint's adapter (not its optimizer state),
    so the recorded path is one the API can read: the local directory, or ``jobs/<id>/checkpoints/epoch-N``
    in an object store (the download adds ``/adapter`` to either)."""
    record = io.on_checkpoint
    if record is None:
        return io

    def on_checkpoint(info: CheckpointInfo) -> None:
        path = Path(info["path"])
        ref = publish(path / "adapter", f"checkpoints/{path.name}/adapter")
        record({**info, "path": ref.removesuffix("/adapter")})

    return replace(io, on_checkpoint=on_checkpoint)


def apply(session: Session, job: Job, res: TrainResult) -> Applied:
    job.trained_tokens = res.trained_tokens
    _store_results(session, job, res)
    msg = f"trained {res.steps} steps over {res.epochs} epochs ({res.trained_tokens} tokens)"
    if res.repair is not None:
        rep = res.repair
        msg += f", repaired ({rep.method}: {rep.n_changed} of {rep.n_layers} layers)"
    if res.resumed_from_epoch:
        msg += f", resumed from the epoch-{res.resumed_from_epoch} checkpoint"
    return Applied(msg, data={k: v for k, v in res.metrics.items() if isinstance(v, int | float)})


SPEC = StageSpec("train", "gpu", 0.46, TrainResult, build, run, apply, checkpoints=True)


def _store_results(session: Session, job: Job, res: TrainResult) -> None:
    """The results file as a File of the job's organization (``files.content`` serves it), named in
    ``job.result_files``; once only (a re-applied stage finds it set). Stored even over the storage quota
    (a finished run is not refused for a few kilobytes); it counts toward the quota from then on."""
    path = Path(res.results_file) if res.results_file else None
    if job.result_files or path is None or not path.is_file():
        return
    data = path.read_bytes()
    storage = get_storage()
    staged = storage.stage(io.BytesIO(data), max_bytes=len(data) + 1)
    key = storage.commit(staged)
    row = File(
        org_id=job.org_id,
        filename=f"{job.id}-results.csv",
        purpose=RESULTS_PURPOSE,
        bytes=len(data),
        sha256=staged.sha256,
        storage_key=key,
        status="processed",
    )
    session.add(row)
    session.flush()
    job.result_files = [row.id]


def _publish_adapter(model: Any, tok: Any, target: Path, base_path: Path, fingerprint: str) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_json(
            tmp / "tunegate_adapter.json",
            {"base_model_path": str(base_path), "base_fingerprint": fingerprint},
        )
        publish_dir(tmp, target)
    except BaseException:  # e.g. a full disk: no half-written adapter stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
