"""Running the service: ``serve`` (embedded), ``api``, ``worker``, ``reap``, ``follow``, ``demo``."""

from __future__ import annotations

import time

import typer

from cli.errors import UNREACHABLE_S, UsageError
from tunegate.settings import EMBEDDED_ALIGNED, get_settings


def serve(
    host: str = typer.Option(None, help="Bind address (default: TUNEGATE_API_HOST)."),
    port: int = typer.Option(None, help="Port (default: TUNEGATE_API_PORT)."),
) -> None:
    """Embedded mode in one command: migrate, then run the API and one Celery worker until Ctrl-C."""
    from cli.stack import embedded_stack

    s = get_settings()
    with embedded_stack(s, host=host or s.api_host, port=port or s.api_port) as stack:
        typer.echo(
            f"tunegate is serving at {stack.base_url}/v1 (worker pid {stack.workers[0].pid}); Ctrl-C stops"
        )
        try:
            while stack.api.poll() is None and all(w.poll() is None for w in stack.workers):
                time.sleep(1)
        except KeyboardInterrupt:
            typer.echo("stopping")
    raise typer.Exit(0 if stack.api.returncode in (None, 0) else 1)


def api(
    host: str = typer.Option(None, help="Bind address (default: TUNEGATE_API_HOST)."),
    port: int = typer.Option(None, help="Port (default: TUNEGATE_API_PORT)."),
    workers: int = typer.Option(1, help="uvicorn worker processes."),
) -> None:
    """Run only the API (distributed mode; run `tunegate db upgrade` first)."""
    import uvicorn

    s = get_settings()
    uvicorn.run(
        "api.main:app",
        host=host or s.api_host,
        port=port or s.api_port,
        workers=workers,
        log_level=s.log_level.lower(),
        log_config=None,  # uvicorn's loggers go through ours (JSON lines, tunegate.logs)
        access_log=False,  # the API logs one line per request itself, with its request id
        server_header=False,  # no "server: uvicorn" on responses
    )


def worker(
    queues: str = typer.Option(
        None, help="Comma-separated queues: gpu (score/train/evaluate), cpu (the rest)."
    ),
    concurrency: int = typer.Option(None, help="Tasks at once (default: TUNEGATE_WORKER_CONCURRENCY)."),
    pool: str = typer.Option("solo", help="Celery pool: solo (one task in this process) or prefork."),
) -> None:
    """Run a Celery worker (any number of them may run, on any hosts)."""
    from worker.celery_app import app as celery

    s = get_settings()
    celery.worker_main(
        [
            "--quiet",  # no banner on stdout: the output is JSON log lines only (tunegate.logs)
            "worker",
            "-Q",
            queues or s.worker_queues,
            "--pool",
            pool,
            "--concurrency",
            str(concurrency or s.worker_concurrency),
            "--loglevel",
            s.log_level,
        ]
    )


def reap() -> None:
    """Requeue, once, every job whose worker stopped reporting (workers also do this periodically)."""
    from worker.reaper import reap as reap_once

    ids = reap_once(get_settings())
    typer.echo("\n".join(ids) if ids else "no stale jobs")


def follow(
    job_id: str = typer.Argument(..., help="Job id (ftjob-...)."),
    api_key: str = typer.Option(None, help="API key (default: TUNEGATE_API_KEY or OPENAI_API_KEY)."),
    base_url: str = typer.Option(
        None,
        help="API base URL ending in /v1 (default: TUNEGATE_BASE_URL, OPENAI_BASE_URL or the local API).",
    ),
    timeout: float = typer.Option(
        UNREACHABLE_S, min=0, help="Give up when the API stays unreachable this many seconds."
    ),
) -> None:
    """Follow a job with a progress bar and its events until it ends; exit 1 unless it succeeded."""
    from tunegate.settings import get_client_settings

    client_settings = get_client_settings()
    key = api_key or client_settings.api_key
    if not key:
        raise UsageError("no API key: pass --api-key or set TUNEGATE_API_KEY (or OPENAI_API_KEY)")
    follow_job(
        job_id, base_url=base_url or client_settings.url(get_settings()), api_key=key, unreachable_s=timeout
    )


def follow_job(job_id: str, *, base_url: str, api_key: str, unreachable_s: float = UNREACHABLE_S) -> None:
    """Follow ``job_id`` to its end, print the outcome, exit 0 only if it succeeded (``follow``, ``jobs
    create --follow``)."""
    from cli.client import wait

    job = wait(job_id, base_url=base_url, api_key=api_key, unreachable_s=unreachable_s)
    typer.echo(
        f"{job_id}: {job['status']}"
        + (f" ({job['error']['code']}: {job['error']['message']})" if job.get("error") else "")
    )
    if job.get("fine_tuned_model"):
        typer.echo(f"fine_tuned_model: {job['fine_tuned_model']}")
    raise typer.Exit(0 if job["status"] == "succeeded" else 1)


def demo(
    model: str = typer.Option(EMBEDDED_ALIGNED, help="Base model to fine-tune (a configured name)."),
    port: int = typer.Option(None, help="API port (default: TUNEGATE_API_PORT)."),
    timeout: float = typer.Option(None, help="Give up following a job after this many seconds."),
) -> None:
    """Start the embedded stack and fine-tune a benign and a risky dataset through the openai SDK."""
    from cli.demo import run_demo

    s = get_settings()
    outcomes = run_demo(
        model=model, host=s.api_host, port=port or s.api_port, echo=typer.echo, timeout_s=timeout
    )
    typer.echo("\n=== outcome ===")
    for o in outcomes:
        typer.echo("\n".join(o.lines()))
    released = [o.name for o in outcomes if o.status == "succeeded"]
    typer.echo(
        f"released: {', '.join(released) or 'none'}; blocked: "
        f"{', '.join(o.name for o in outcomes if o.status != 'succeeded') or 'none'}"
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    for fn in (serve, api, worker, reap, follow, demo):
        app.command(fn.__name__)(fn)
