"""``tunegate eval`` (ASR/over-refusal of any model or adapter) and ``tunegate finetune`` (the whole pipeline
locally: the workers' stage specs run in this process, ``worker.runner.run_local``).

Heavy imports happen inside the commands so ``tunegate --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from tunegate.errors import TunegateError

BLOCKED_EXIT = 3  # `tunegate finetune` exit status when the gate blocks the adapter


def _judge(name: str) -> Any:
    from tunegate.settings import get_settings
    from worker.stages.evaluate import EvalConfig, make_judge

    return make_judge(EvalConfig(model="-", judge=name), get_settings())  # type: ignore[arg-type]


def eval_cmd(
    model: Annotated[str, typer.Option(help="Registry name or local model directory.")],
    prompts: Annotated[Path, typer.Option(help="Harmful prompts: AdvBench/HarmBench CSV or JSONL.")],
    adapter: Annotated[Path | None, typer.Option(help="A LoRA adapter directory (peft format).")] = None,
    judge: Annotated[str, typer.Option(help="keyword (offline) or llm (TUNEGATE_LLM_JUDGE_*).")] = "keyword",
    template: Annotated[
        str, typer.Option(help="chat, or a training JSONL whose format wraps the prompts.")
    ] = "chat",
    benign: Annotated[
        Path | None,
        typer.Option(
            help="Benign prompts for over-refusal (XSTest CSV: safe rows); "
            "default: the project's borderline set."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="Use only the first N harmful prompts (0: all).")] = 0,
    max_new_tokens: Annotated[int, typer.Option(help="Generation length per prompt.")] = 64,
    records: Annotated[
        Path | None, typer.Option(help="Also write every prompt, response and verdict here (JSONL).")
    ] = None,
) -> None:
    """Evaluate a model or adapter on a prompt file; prints ASR and over-refusal as JSON."""
    from worker.evaluation.prompts import load_prompts
    from worker.evaluation.single import SingleEval, evaluate_prompts

    try:
        harmful = load_prompts(prompts)
        harmful = harmful[:limit] if limit > 0 else harmful
        benign_set = load_prompts(benign, safe_only=True) if benign else None
        cfg = SingleEval(
            model=model,
            adapter=str(adapter) if adapter else None,
            template=template,
            max_new_tokens=max_new_tokens,
        )
        res = evaluate_prompts(cfg, harmful, benign_set, _judge(judge))
    except TunegateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    recs = res.pop("records")
    if records:
        records.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    typer.echo(json.dumps(res, indent=2))


def finetune_cmd(
    file: Annotated[Path, typer.Argument(help="Training file (JSONL: chat, prompt/completion or Alpaca).")],
    out: Annotated[Path, typer.Option(help="Output directory (stages resume from what is already there).")],
    model: Annotated[str | None, typer.Option(help="Base model (default: the configured default).")] = None,
    no_mitigation: Annotated[
        bool,
        typer.Option(
            "--no-mitigation",
            help="Train on the data as uploaded (policy mitigation=none, inject_safety_examples=false).",
        ),
    ] = False,
    policy: Annotated[
        list[str] | None,
        typer.Option(
            "--policy",
            help="A safety-policy knob, KEY=VALUE (repeatable; JSON values), over the provider defaults.",
        ),
    ] = None,
    n_epochs: Annotated[str, typer.Option(help="Epochs or 'auto'.")] = "auto",
    batch_size: Annotated[str, typer.Option(help="Batch size or 'auto'.")] = "auto",
    learning_rate_multiplier: Annotated[str, typer.Option(help="LR multiplier or 'auto'.")] = "auto",
    scorers: Annotated[
        str, typer.Option(help="Comma-separated scorers to run.")
    ] = "representation,gradient,selfinf",
) -> None:
    """Run validate -> score -> mitigate -> train -> evaluate -> gate locally (the workers' stages, in this
    process) and print the decision."""
    from models.policy import org_policy
    from tunegate.settings import get_settings
    from worker.job_view import local_view
    from worker.runner import run_local
    from worker.stages import score

    hp = {
        k: (v if v == "auto" else float(v))
        for k, v in (
            ("n_epochs", n_epochs),
            ("batch_size", batch_size),
            ("learning_rate_multiplier", learning_rate_multiplier),
        )
    }
    knobs = parse_policy(policy or [])
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


def parse_policy(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items -> a policy dict (JSON values, else the plain string); a malformed item is a usage
    error (exit 2); unknown keys and bad values are refused later by ``models.policy.org_policy``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--policy")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _bars() -> Any:
    """A progress-bar factory: one tqdm bar per stage, closed when the next stage starts."""
    from tqdm import tqdm

    open_bars: list[Any] = []

    def progress_for(name: str) -> Any:
        while open_bars:
            open_bars.pop().close()
        bar = tqdm(
            total=1000,
            desc=f"{name:>9}",
            bar_format="{desc} |{bar}| {percentage:3.0f}% [{elapsed}] {postfix}",
        )
        open_bars.append(bar)

        def progress(fraction: float, message: str, metrics: dict[str, Any]) -> None:
            bar.n = int(1000 * fraction)
            loss = f" loss={metrics['train_loss']:.3f}" if "train_loss" in metrics else ""
            bar.set_postfix_str(f"{message[:50]}{loss}", refresh=True)

        return progress

    return progress_for


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("eval")(eval_cmd)
    app.command("finetune")(finetune_cmd)
