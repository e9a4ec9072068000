"""Using the result: ``tunegate export`` (the adapter, the merged model, or a GGUF file for llama.cpp-style
runtimes) and ``tunegate chat`` (talk to a base or fine-tuned model in the terminal).

``export`` takes an adapter directory (a download, unpacked, or ``finetune``'s ``train/adapter``) or, on the
provider's side, a job id read from the configured database: only a released adapter that was neither
revoked nor had its fine-tuned model deleted leaves (the download's rule, ``models.jobs.check_released``).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from tunegate.errors import NotFound

JOB_PREFIX = "ftjob-"


class GgufType(StrEnum):
    """The GGUF file's tensor type (norms are f32 either way)."""

    f16 = "f16"
    f32 = "f32"


@dataclass(frozen=True)
class AdapterSource:
    name: str  # the job id or the adapter directory's name: names the GGUF file
    adapter: Path
    base: str | None  # the base model's registry name or directory, when known


def _empty_out(value: Path) -> Path:
    if value.exists() and (not value.is_dir() or any(value.iterdir())):
        raise typer.BadParameter(f"{value} exists and is not an empty directory")
    return value


def _adapter_dir(path: Path) -> AdapterSource:
    if not (path / "adapter_config.json").is_file():
        raise NotFound(f"{path} is not a LoRA adapter directory (no adapter_config.json)")
    base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    return AdapterSource(path.resolve().name, path, str(base) if base else None)


def _job_adapter(job_id: str) -> AdapterSource:
    """A released job's adapter, from the configured database (the provider's side)."""
    from models.db import new_session
    from models.jobs import check_released
    from models.tables import Job

    with new_session(readonly=True) as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"no job {job_id} in the configured database")
        check_released(job)
        if not job.adapter_path or not Path(job.adapter_path).is_dir():
            raise NotFound(f"the adapter files of job {job.id} are missing")
        return AdapterSource(job.id, Path(job.adapter_path), job.model)


def find_adapter(job_or_dir: str) -> AdapterSource:
    """An adapter directory, or a job id looked up in the database; ``NotFound`` for anything else."""
    path = Path(job_or_dir).expanduser()
    if path.is_dir():
        return _adapter_dir(path)
    if job_or_dir.startswith(JOB_PREFIX) and not path.exists():
        return _job_adapter(job_or_dir)
    raise NotFound(f"{job_or_dir} is neither an adapter directory nor a job id ({JOB_PREFIX}...)")


def _base_path(src: AdapterSource, model: str | None) -> Path:
    from tunegate.errors import ModelError
    from worker.ml.models import resolve_model

    base = model or src.base
    if base is None:
        raise ModelError(f"the adapter {src.adapter} does not name its base model: pass --model")
    return resolve_model(base).path


def export_cmd(
    job_or_dir: Annotated[
        str,
        typer.Argument(
            metavar="JOB_OR_DIR",
            help="An adapter directory (peft format), or a job id (ftjob-...) read from the configured "
            "database (provider side: released adapters only).",
        ),
    ],
    out: Annotated[
        Path, typer.Option(callback=_empty_out, help="Output directory (new or empty).", show_default=False)
    ],
    merged: Annotated[
        bool, typer.Option("--merged", help="Write the merged model (safetensors, tokenizer, config).")
    ] = False,
    gguf: Annotated[
        bool,
        typer.Option("--gguf", help="Write one .gguf file for llama.cpp-style runtimes (llama models)."),
    ] = False,
    gguf_type: Annotated[GgufType, typer.Option(help="The GGUF file's tensor type.")] = GgufType.f16,
    model: Annotated[
        str | None,
        typer.Option(
            help="The base model to merge into (registry name or directory); default: the job's model, "
            "or the one the adapter names."
        ),
    ] = None,
) -> None:
    """Write a fine-tuned adapter for use outside tunegate: the adapter (default), the merged model, or a GGUF
    file (merged first)."""
    src = find_adapter(job_or_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not (merged or gguf):
        shutil.copytree(src.adapter, out, dirs_exist_ok=True)
        typer.echo(f"adapter: {out}")
        return
    base = _base_path(src, model)
    if gguf:
        from worker.ml.export import check_llama

        check_llama(base)  # before a merge that would be wasted
    source = {"adapter": src.name, "base": model or src.base}
    if merged:  # the merged model is the output directory; a GGUF file joins it there
        _merge_then_gguf(src, base, out, source, gguf_type if gguf else None, out)
        typer.echo(f"merged model: {out}")
        return
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.merging-") as work:
        _merge_then_gguf(src, base, Path(work) / "merged", source, gguf_type, out)


def _merge_then_gguf(
    src: AdapterSource,
    base: Path,
    target: Path,
    source: dict[str, str | None],
    gguf_type: GgufType | None,
    out: Path,
) -> None:
    """Merge into ``target``; with a ``gguf_type``, write ``<name>.gguf`` from it into ``out``."""
    from cli.progress import Progress
    from worker.ml.export import merge, write_gguf

    with Progress("merging") as bar:
        merge(base, src.adapter, target, source, progress=bar)
    if gguf_type is not None:
        with Progress("writing GGUF") as bar:
            written = write_gguf(target, out / f"{src.name}.gguf", dtype=gguf_type.value, progress=bar)
        typer.echo(f"gguf: {written}")


def _reply(loaded: Any, history: list[Any], max_new_tokens: int) -> str:
    from worker.evaluation.generate import generate_batch
    from worker.ml.models import context_length
    from worker.ml.render import encode_prompt

    model, tok = loaded
    room = max(1, context_length(model) - max_new_tokens)
    ids = encode_prompt(tok, history, max_len=room)
    return generate_batch(model, tok, [ids], max_new_tokens=max_new_tokens)[0].strip()


def chat_cmd(
    model: Annotated[
        str,
        typer.Argument(metavar="MODEL", help="Registry name or model directory (e.g. an --merged export)."),
    ],
    adapter: Annotated[
        Path | None,
        typer.Option(exists=True, file_okay=False, help="A LoRA adapter directory (peft format) on top."),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest reply, in tokens.")] = 256,
    system: Annotated[str | None, typer.Option(help="A system message that opens the conversation.")] = None,
) -> None:
    """Talk to a model: each line you type is a user turn; the reply (greedy, through the model's chat
    template, with the conversation so far) follows. /reset clears the conversation; /exit or end of input
    quits."""
    from tunegate.conversation import Message
    from worker.evaluation.single import load_for_eval

    loaded = load_for_eval(model, str(adapter) if adapter else None)
    opening = [Message("system", system)] if system else []
    history = list(opening)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            typer.echo("> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            break
        text = line.strip()
        if text == "/reset":
            history = list(opening)
            typer.echo("(conversation cleared)", err=True)
            continue
        if not text:
            continue
        history.append(Message("user", text))
        reply = _reply(loaded, history, max_new_tokens)
        history.append(Message("assistant", reply))
        typer.echo(reply)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("export")(export_cmd)
    app.command("chat")(chat_cmd)
