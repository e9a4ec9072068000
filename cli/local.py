"""``tunegate eval`` (ASR/over-refusal of any model or adapter) and ``tunegate finetune`` (the whole pipeline
locally: score -> mitigate -> train -> evaluate -> gate, with the same stage functions the workers run).

Heavy imports happen inside the commands so ``tunegate --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import options
from tunegate.errors import TunegateError, UnsafeTrainingData

BLOCKED_EXIT = 3  # `tunegate finetune` exit status when the gate blocks the adapter


def _judge(name: str) -> Any:
    from tunegate.settings import get_settings
    from worker.stages.evaluate import EvalConfig, make_judge

    return make_judge(EvalConfig(model="-", judge=name), get_settings())  # type: ignore[arg-type]


ReadableFile = {"exists": True, "dir_okay": False, "readable": True}


def eval_cmd(
    prompts: Annotated[
        Path, typer.Option(**ReadableFile, help="Harmful prompts: AdvBench/HarmBench CSV or JSONL.")
    ],
    model: Annotated[
        str | None,
        typer.Option(help="Registry name or local model directory (default: the configured default)."),
    ] = None,
    adapter: Annotated[
        Path | None,
        typer.Option(exists=True, file_okay=False, help="A LoRA adapter directory (peft format)."),
    ] = None,
    judge: Annotated[
        options.JudgeName, typer.Option(help="keyword (offline) or llm (TUNEGATE_LLM_JUDGE_*).")
    ] = options.JudgeName.keyword,
    template: Annotated[
        str,
        typer.Option(
            callback=options.template, help="chat, or a training JSONL whose format wraps the prompts."
        ),
    ] = "chat",
    probe: Annotated[
        bool,
        typer.Option(help="Also judge with the base-model probe and report the judges' agreement."),
    ] = True,
    benign: Annotated[
        Path | None,
        typer.Option(
            **ReadableFile,
            help="Benign prompts for over-refusal (XSTest CSV: safe rows); "
            "default: the project's borderline set.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=0, help="Use only the first N harmful prompts (0: all).")] = 0,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Generation length per prompt.")] = 64,
    records: Annotated[
        Path | None, typer.Option(help="Also write every prompt, response and verdict here (JSONL).")
    ] = None,
) -> None:
    """Evaluate a model or adapter on a prompt file; prints ASR and over-refusal as JSON."""
    from cli.progress import Progress
    from tunegate.settings import get_settings
    from worker.evaluation.prompts import load_prompts
    from worker.evaluation.single import SingleEval, evaluate_prompts

    harmful = load_prompts(prompts)
    harmful = harmful[:limit] if limit > 0 else harmful
    benign_set = load_prompts(benign, safe_only=True) if benign else None
    cfg = SingleEval(
        model=model or get_settings().default_model,
        adapter=str(adapter) if adapter else None,
        template=template,
        max_new_tokens=max_new_tokens,
        second_judge="probe" if probe else "none",
    )
    with Progress("evaluating") as bar:
        res = evaluate_prompts(cfg, harmful, benign_set, _judge(judge.value), progress=bar)
    if records:
        lines = (json.dumps(r, ensure_ascii=False) + "\n" for r in res.records())
        records.write_text("".join(lines), encoding="utf-8")
    typer.echo(json.dumps(res.to_dict(), indent=2))


def finetune_cmd(
    file: Annotated[
        Path,
        typer.Argument(**ReadableFile, help="Training file (JSONL: chat, prompt/completion or Alpaca)."),
    ],
    out: Annotated[Path, typer.Option(help="Output directory (stages resume from what is already there).")],
    model: Annotated[str | None, typer.Option(help="Base model (default: the configured default).")] = None,
    no_mitigation: Annotated[
        bool,
        typer.Option(
            "--no-mitigation",
            help="Train on the data as uploaded (mitigation=none, inject_safety_examples=false).",
        ),
    ] = False,
    policy: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            metavar="KNOB=VALUE",
            help="A safety-policy knob over the provider defaults (repeatable; JSON values; knobs below).",
        ),
    ] = None,
    n_epochs: Annotated[
        str, typer.Option(callback=options.number_or_auto(int), metavar="N|auto", help="Epochs.")
    ] = "auto",
    batch_size: Annotated[
        str, typer.Option(callback=options.number_or_auto(int), metavar="N|auto", help="Batch size.")
    ] = "auto",
    learning_rate_multiplier: Annotated[
        str,
        typer.Option(
            callback=options.number_or_auto(float), metavar="X|auto", help="Learning-rate multiplier."
        ),
    ] = "auto",
    # the default, every scorer, is filled in when the command is built (options.ScorersCommand)
    scorers: Annotated[str, typer.Option(help="Comma-separated scorers to run.")] = "",
) -> None:
    """Run validate -> score -> mitigate -> train -> evaluate -> gate locally (the workers' stages, in this
    process) and print the decision."""
    from models.policy import org_policy
    from tunegate.settings import get_settings
    from worker.job_view import local_view
    from worker.runner import run_local
    from worker.stages import score

    hp = options.hyperparameters(
        n_epochs=n_epochs, batch_size=batch_size, learning_rate_multiplier=learning_rate_multiplier
    )
    knobs = options.parse_policy(policy or [], options.job_policy_keys())
    if no_mitigation:
        knobs.update(mitigation="none", inject_safety_examples=False)
    try:
        settings = get_settings()
        overrides = {**settings.stage_overrides}
        chosen = [s for s in scorers.split(",") if s]
        overrides[score.SPEC.name] = {**overrides.get(score.SPEC.name, {}), "scorers": chosen}
        settings = settings.model_copy(update={"stage_overrides": overrides})
        view = local_view(
            file, model or settings.default_model, policy=org_policy(settings, knobs), hyperparameters=hp
        )
        out.mkdir(parents=True, exist_ok=True)
        gate: Any = run_local(
            view,
            out,
            settings,
            progress_for=_bars(),
            on_reuse=lambda name, d: typer.echo(f"{name:>9}: reusing {d}"),
        )[-1]
    except TunegateError as exc:
        typer.echo(f"error: {exc}", err=True)
        report = getattr(exc, "report", "")  # a refused training file still has its safety report
        if report:
            typer.echo(f"report: {report}", err=True)
        raise typer.Exit(BLOCKED_EXIT if isinstance(exc, UnsafeTrainingData) else 1) from exc
    typer.echo(
        json.dumps(
            {
                "released": gate.released,
                "code": gate.code,
                "message": gate.message,
                "report": gate.report_html,
            },
            indent=2,
        )
    )
    if not gate.released:
        raise typer.Exit(BLOCKED_EXIT)


def _bars() -> Any:
    """One progress bar per stage (``cli.progress.Progress``), each closed when the next stage starts."""
    from cli.progress import Progress

    open_bars: list[Progress] = []

    def progress_for(name: str) -> Any:
        while open_bars:
            open_bars.pop().close()
        bar = Progress(f"{name:>9}")
        open_bars.append(bar)
        return bar

    return progress_for


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("eval")(eval_cmd)
    app.command("finetune", cls=options.KnobsScorersCommand)(finetune_cmd)
