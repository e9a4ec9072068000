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
from tunegate.errors import TunegateError

BLOCKED_EXIT = 3  # `tunegate finetune` exit status when the gate blocks the adapter


def _judge(name: str) -> Any:
    from worker.stages.evaluate import EvalConfig, make_judge

    return make_judge(EvalConfig(model="-", judge=name))


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
    )
    with Progress("evaluating") as bar:
        res = evaluate_prompts(cfg, harmful, benign_set, _judge(judge.value), progress=bar)
    recs = res.pop("records")
    if records:
        records.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    typer.echo(json.dumps(res, indent=2))


def finetune_cmd(
    file: Annotated[
        Path,
        typer.Argument(**ReadableFile, help="Training file (JSONL: chat, prompt/completion or Alpaca)."),
    ],
    out: Annotated[Path, typer.Option(help="Output directory (stages resume from what is already there).")],
    model: Annotated[str | None, typer.Option(help="Base model (default: the configured default).")] = None,
    no_mitigation: Annotated[
        bool, typer.Option("--no-mitigation", help="Train on the data as uploaded.")
    ] = False,
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
    scorers: Annotated[
        str, typer.Option(help="Comma-separated scorers to run.")
    ] = "representation,gradient,selfinf",
) -> None:
    """Run score -> mitigate -> train -> evaluate -> gate locally and print the decision."""
    from tunegate.conversation import load_examples
    from tunegate.settings import get_settings

    hp = options.hyperparameters(
        n_epochs=n_epochs, batch_size=batch_size, learning_rate_multiplier=learning_rate_multiplier
    )
    try:
        examples = load_examples(file)
        gate = run_local(
            model or get_settings().default_model,
            examples,
            out,
            mitigation=not no_mitigation,
            hparams=hp,
            scorers=tuple(s for s in scorers.split(",") if s),
        )
    except TunegateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
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


def _stage(name: str, out: Path, fn: Any) -> dict[str, Any]:
    """Run one stage with a progress bar unless its result already exists (then it is reused)."""
    from cli.progress import Progress
    from worker.ml.stage_io import StageIO
    from worker.stages.base import load_result, result_exists

    d = out / name
    if result_exists(d):
        typer.echo(f"{name:>9}: reusing {d}")
        return load_result(d)
    with Progress(f"{name:>9}") as bar:
        fn(StageIO(d, progress=bar, stage=name))
    return load_result(d)


def run_local(
    model: str,
    examples: list[Any],
    out: Path,
    *,
    mitigation: bool,
    hparams: dict[str, Any],
    scorers: tuple[str, ...],
) -> Any:
    """score -> mitigate -> train -> evaluate -> gate in ``out``; returns the GateResult."""
    from tunegate.conversation import load_examples
    from tunegate.settings import get_settings
    from worker.stages import evaluate, gate, mitigate, score, train

    out.mkdir(parents=True, exist_ok=True)
    _stage(
        "score",
        out,
        lambda io: score.run(
            score.ScoreConfig(model=model, scorers=scorers), score.ScoreInputs(examples, io)
        ),
    )
    records, summary = score.load_score_records(out / "score"), score.load_score_summary(out / "score")
    mcfg = mitigate.MitigateConfig() if mitigation else mitigate.MitigateConfig(action="none", inject=False)
    mres = _stage(
        "mitigate", out, lambda io: mitigate.run(mcfg, mitigate.MitigateInputs(examples, records, io))
    )
    train_set = load_examples(mres["train_file"])
    tcfg = train.config_from_openai(model, hparams, len(train_set), precision=get_settings().precision)
    tres = _stage("train", out, lambda io: train.run(tcfg, train.TrainInputs(train_set, io)))
    eres = _stage(
        "evaluate",
        out,
        lambda io: evaluate.run(
            evaluate.EvalConfig(model=model), evaluate.EvalInputs(Path(tres["adapter_dir"]), examples, io)
        ),
    )
    gcfg = gate.GateConfig.from_settings()

    def gate_fn(io: Any) -> Any:
        return gate.run(
            gcfg,
            gate.GateInputs(
                eres,
                summary,
                io,
                mitigation=mres if mitigation else None,
                score_records=records,
                training=tres,
            ),
        )

    return gate.GateResult(**_stage("gate", out, gate_fn))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("eval")(eval_cmd)
    app.command("finetune")(finetune_cmd)
