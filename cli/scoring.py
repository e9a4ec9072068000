"""``tunegate models prepare [--aligned] [--scoring]`` and ``tunegate score FILE --out OUT.jsonl``.

Heavy imports (torch, transformers) happen inside the commands so ``tunegate --help`` stays fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli import options
from cli.progress import Progress

if TYPE_CHECKING:
    from tunegate.report import ScoreSummary

models_app = typer.Typer(
    no_args_is_help=True, rich_markup_mode=None, help="Base models: convert the embedded model, build caches."
)


@models_app.command("prepare")
def prepare(
    model: Annotated[
        str, typer.Option(help="Registry name or path of the base model to prepare.")
    ] = "smollm2-135m",
    aligned: Annotated[bool, typer.Option("--aligned", help="Also build the aligned embedded base.")] = False,
    scoring: Annotated[
        bool,
        typer.Option(
            "--scoring", help="Also precompute the scoring caches and the base's evaluation (slow on CPU)."
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Rebuild the aligned base even if it is already built.")
    ] = False,
    rebuild: Annotated[
        bool,
        typer.Option(
            "--rebuild",
            help="Build the aligned base from scratch by the recipe (minutes) instead of folding the shipped "
            "alignment adapter into the embedded model (seconds); implies --force.",
        ),
    ] = False,
) -> None:
    """Convert the embedded GGUF model once into a cached safetensors directory (no download).
    Only what is missing is built: an aligned base already in the cache is kept unless --force."""
    from tunegate.settings import EMBEDDED_ALIGNED, get_settings
    from worker.ml.models import resolve_model

    settings = get_settings()
    with Progress(f"preparing {model}") as bar:
        resolved = resolve_model(model, settings)
        bar(1.0, "ready")
    typer.echo(f"{resolved.name}: {resolved.path} (fingerprint {resolved.fingerprint})")
    if aligned or rebuild:
        _prepare_aligned(EMBEDDED_ALIGNED, settings, force or rebuild, rebuild)
    if scoring:
        _prepare_scoring(model, settings)
        if aligned:
            _prepare_scoring(EMBEDDED_ALIGNED, settings)


def _prepare_aligned(name: str, settings: Any, force: bool, rebuild: bool) -> None:
    from tunegate.model_cache import ALIGNED_SOURCE, embedded_dir, model_available
    from worker.prepare.align import prepare_aligned

    if not force and model_available(name, settings):
        typer.echo(
            f"aligned base: {embedded_dir(ALIGNED_SOURCE, settings)} (already built; --force rebuilds it)"
        )
        return
    with Progress("aligning") as bar:
        target = prepare_aligned(settings, progress=bar, rebuild=rebuild)
    typer.echo(f"aligned base: {target}")


def _prepare_scoring(model: str, settings: Any) -> None:
    """The base's scoring caches and its own evaluation (what every job on it reuses; one process per core),
    then its answers to the contrastive pool."""
    from worker.prepare.caches import warm_all, warm_contrast_answers

    with Progress("scoring and evaluation caches") as bar:
        warm_all(model, settings, bar)
    typer.echo(f"scoring and evaluation caches of {model} ready")
    with Progress("contrastive answers") as bar:
        answers = warm_contrast_answers(model, settings, progress=bar)
    typer.echo(f"contrastive answers ready in {answers}")


@models_app.command("export-aligned")
def export_aligned(
    dest: Annotated[Path, typer.Option("--to", help="Where to write the shipped adapter.")] = Path(
        "tunegate/data/aligned"
    ),
    caches: Annotated[
        bool,
        typer.Option(
            "--caches",
            help="Instead: copy this home's caches of the shipped base (its reference distributions and "
            "its own evaluation in chat) beside the shipped adapter.",
        ),
    ] = False,
) -> None:
    """For maintainers: turn this machine's aligned base, built by the recipe (models prepare --aligned
    --rebuild), into the shipped alignment adapter (float16), recording the fingerprint folding it gives.
    Then, with the shipped adapter folded here (models prepare --aligned --scoring --model
    smollm2-135m-aligned), --caches ships the caches computed on it."""
    from tunegate.model_cache import ALIGNED_SOURCE, embedded_dir
    from tunegate.settings import EMBEDDED_ALIGNED, EMBEDDED_BASE, get_settings
    from worker.ml.models import resolve_model
    from worker.prepare import shipped_caches
    from worker.prepare.shipped import export

    settings = get_settings()
    if caches:
        aligned = resolve_model(EMBEDDED_ALIGNED, settings)
        files = shipped_caches.export(
            settings, aligned.fingerprint, shipped_caches.layers(aligned.path), dest
        )
        typer.echo(f"{len(files)} cache files of {aligned.fingerprint} in {dest / shipped_caches.CACHES}")
        return
    build = export(embedded_dir(ALIGNED_SOURCE, settings), resolve_model(EMBEDDED_BASE, settings).path, dest)
    typer.echo(f"shipped adapter in {dest}: folds into {build.fingerprint} (from {build.source_fingerprint})")


def score(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="Training file (JSONL: chat, prompt/completion or Alpaca).",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Per-example scores (JSONL); the summary goes beside it.")
    ],
    model: Annotated[str | None, typer.Option(help="Registry name or local model directory.")] = None,
    # the default, every scorer, and the names in the help are filled in when the command is built
    # (options.ScorersCommand)
    scorers: Annotated[str, typer.Option(help="Comma-separated: {scorers}.")] = "",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 8,
    batched: Annotated[
        bool | None,
        typer.Option(
            "--batched/--one-at-a-time", help="Gradient scorers in batches (default: on CUDA only)."
        ),
    ] = None,
    seed: int = 0,
) -> None:
    """Score every example of FILE and print a summary."""
    from tunegate.conversation import load_examples
    from tunegate.settings import get_settings
    from worker.scoring.score_all import score_examples
    from worker.stages.score import ScoreConfig, write_records

    settings = get_settings()
    cfg = ScoreConfig(
        model=model or settings.default_model,
        scorers=tuple(s.strip() for s in scorers.split(",")),
        batch_size=batch_size,
        batched=batched,
        seed=seed,
    )
    examples = load_examples(file)
    with Progress(f"scoring {file.name}") as bar:
        scored = score_examples(
            cfg.model,
            examples,
            scorers=cfg.scorers,
            batch_size=cfg.batch_size,
            batched=cfg.batched,
            seed=cfg.seed,
            rules=cfg.rules(),
            settings=settings,
            progress=bar,
        )
    write_records(scored.records, out)
    summary_path = out.with_name(out.stem + ".summary.json")
    summary_path.write_text(json.dumps(scored.summary.to_dict(), indent=2), encoding="utf-8")
    _print_summary(scored.summary, out, summary_path)


def _print_summary(summary: ScoreSummary, out: Path, summary_path: Path) -> None:
    typer.echo(f"scored {summary.n_examples} examples with {summary.model} -> {out}")
    for s, dist in (summary.distributions or {}).items():
        typer.echo(f"  {s:<20} median {dist['p50']:.4g}  p95 {dist['p95']:.4g}  max {dist['max']:.4g}")
    for pair, rho in (summary.agreement["spearman"] if summary.agreement else {}).items():
        typer.echo(f"  spearman {pair}: {rho:.3f}")
    for item in (summary.top_flagged or ())[:5]:
        typer.echo(f"  line {item.line}: risk {item.risk:.1f}  {item.response_preview[:70]!r}")
    if summary.verdict is not None:
        verdict = summary.verdict
        typer.echo(f"verdict: {'FLAGGED' if verdict.flagged else 'ok'} - {verdict.reason}")
    typer.echo(f"summary: {summary_path}")


def register(app: typer.Typer) -> None:
    """Add ``models prepare`` and ``score`` to the root app."""
    app.add_typer(models_app, name="models")
    app.command("score", cls=options.ScorersCommand)(score)
