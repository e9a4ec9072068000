"""Validate stage: re-check the job's files with the base model's own tokenizer before any compute is spent.

The API checks structure at upload time without a tokenizer; here every example is rendered exactly as the
train stage will render it (``worker.ml.render.encode``), so an over-long or response-less example fails the
job now, naming the file and line, instead of an hour into training. Writes ``stats.json``, ``result.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from models.jobs import JobStatus
from models.tables import Job
from tunegate.artifacts import atomic_write_json
from tunegate.conversation import Conversation, check_example, iter_examples
from tunegate.errors import InvalidConfig, InvalidFile
from tunegate.settings import Settings
from worker.ml.models import context_length, load_tokenizer, resolve_model
from worker.ml.render import encode
from worker.ml.stage_io import StageIO
from worker.stages.base import StageResult, finish
from worker.stages.spec import Applied, StageContext, StageSpec

STEP_EVERY = 200  # examples between progress reports


@dataclass(frozen=True)
class ValidateConfig:
    model: str
    min_examples: int = 10
    max_tokens: int = 0  # 0: the model's context length; otherwise the smaller of the two

    def __post_init__(self) -> None:
        if self.min_examples < 1:
            raise InvalidConfig("ValidateConfig.min_examples must be >= 1", param="min_examples")
        if self.max_tokens < 0:
            raise InvalidConfig("ValidateConfig.max_tokens must be >= 0", param="max_tokens")


@dataclass
class ValidateInputs:
    training_file: Path
    io: StageIO
    settings: Settings  # the model registry (resolving the base model's tokenizer)
    validation_file: Path | None = None
    labels: tuple[str, str] = ("training_file", "validation_file")  # how errors name the files (their ids)


@dataclass
class ValidateResult(StageResult):
    n_examples: int
    n_validation: int
    token_limit: int
    max_example_tokens: int
    total_tokens: int


def _load(path: Path, label: str) -> list[Conversation]:
    try:
        with Path(path).open("rb") as fh:
            convs = list(iter_examples(fh))
    except InvalidFile as exc:
        raise InvalidFile(
            exc.reason, line=exc.line, field=exc.field, filename=label, code="invalid_training_file"
        ) from exc
    for conv in convs:
        problems = check_example(conv)
        if problems:
            p = problems[0]
            raise InvalidFile(
                p.reason, line=p.line, field=p.field, filename=label, code="invalid_training_file"
            )
    return convs


def _token_lengths(
    tok: Any, convs: list[Conversation], limit: int, label: str, io: StageIO, offset: float
) -> list[int]:
    lengths = []
    for i, conv in enumerate(convs):
        try:
            lengths.append(len(encode(tok, conv, max_len=limit)))
        except InvalidFile as exc:
            raise InvalidFile(
                exc.reason, line=exc.line, field=exc.field, filename=label, code="invalid_training_file"
            ) from exc
        if i % STEP_EVERY == 0:
            io.step(offset + 0.5 * i / max(len(convs), 1), f"{label}: {i}/{len(convs)} examples tokenized")
    return lengths


def run(cfg: ValidateConfig, inputs: ValidateInputs) -> ValidateResult:
    from transformers import AutoConfig

    out = Path(inputs.io.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolved = resolve_model(cfg.model, inputs.settings)
    tok = load_tokenizer(resolved.path)
    model_limit = context_length(AutoConfig.from_pretrained(resolved.path))
    limit = min(model_limit, cfg.max_tokens) if cfg.max_tokens else model_limit
    train = _load(inputs.training_file, inputs.labels[0])
    if len(train) < cfg.min_examples:
        raise InvalidFile(
            f"has {len(train)} examples; at least {cfg.min_examples} are required",
            filename=inputs.labels[0],
            code="invalid_training_file",
        )
    lengths = _token_lengths(tok, train, limit, inputs.labels[0], inputs.io, 0.0)
    val: list[Conversation] = []
    if inputs.validation_file is not None:
        val = _load(inputs.validation_file, inputs.labels[1])
        _token_lengths(tok, val, limit, inputs.labels[1], inputs.io, 0.5)
    res = ValidateResult(
        n_examples=len(train),
        n_validation=len(val),
        token_limit=limit,
        max_example_tokens=max(lengths),
        total_tokens=sum(lengths),
    )
    atomic_write_json(out / "stats.json", res.to_dict())
    inputs.io.step(1.0, f"{len(train)} examples valid (longest {max(lengths)} of {limit} tokens)")
    return finish(out, cfg, res)


def build(ctx: StageContext, io: StageIO) -> tuple[ValidateConfig, ValidateInputs]:
    s, view = ctx.settings, ctx.view
    cfg = ValidateConfig(model=view.model, min_examples=s.min_examples, max_tokens=s.max_example_tokens)
    inputs = ValidateInputs(view.training_file, io, s, validation_file=view.validation_file)
    return ctx.configure(cfg, SPEC), inputs


def apply(session: Session, job: Job, res: ValidateResult) -> Applied:
    msg = (
        f"validated {res.n_examples} training examples with the base model's tokenizer "
        f"(longest {res.max_example_tokens} of {res.token_limit} tokens)"
    )
    return Applied(msg, data=res.to_dict(), status=JobStatus.QUEUED)


SPEC = StageSpec("validate", "short", 0.02, ValidateResult, build, run, apply)
