"""Running the service: ``serve`` (embedded), ``api``, ``worker``, ``reap``, ``follow``, ``demo``."""

from __future__ import annotations

import subprocess
import time
from typing import TYPE_CHECKING

import typer

from cli.errors import UNREACHABLE_S, UsageError
from tunegate.settings import EMBEDDED_ALIGNED, get_settings

if TYPE_CHECKING:
    from cli.stack import Stack


DETACH_WAIT_S = 180.0  # how long `serve --detach` waits for the API to answer before it gives up
SERVING = "tunegate is serving at "


def serve(
    host: str = typer.Option(None, help="Bind address (default: TUNEGATE_API_HOST)."),
    port: int = typer.Option(None, help="Port (default: TUNEGATE_API_PORT)."),
    detach: bool = typer.Option(
        False,
        "--detach",
        help="Run in the background: return once the API answers, printing its address and pid (stop it "
        "with kill PID); its output goes to <home>/logs/serve.log.",
    ),
) -> None:
    """Embedded mode in one command: migrate, then run the API and two Celery workers (heavy: gpu,cpu; light:
    short) until Ctrl-C or SIGTERM, which stop them all."""
    from cli.stack import embedded_stack, stop_signals

    s = get_settings()
    host, port = host or s.api_host, port or s.api_port
    if detach:
        raise typer.Exit(_detach(host, port))
    with stop_signals():  # SIGTERM/SIGHUP stop the children like Ctrl-C, even while starting
        try:
            with embedded_stack(s, host=host, port=port) as stack:
                code = _run(stack)
        except KeyboardInterrupt:  # stopped while starting: the stack's exit stopped what had started
            typer.echo("stopped")
            code = 0
    raise typer.Exit(code)


def _run(stack: Stack) -> int:
    """Say where the started stack serves, then wait until a stop is asked (0) or a child ends (1)."""
    from tunegate.model_cache import missing_reason

    s = get_settings()
    why = missing_reason(s.default_model, s)
    if why is not None:  # the README's snippet would be refused: say what builds it, once
        typer.echo(f"note: the default model {why}; jobs for it are refused until then", err=True)
    short = stack.short_worker.pid if stack.short_worker else None
    typer.echo(
        f"{SERVING}{stack.base_url}/v1 (worker pids: {stack.workers[0].pid} gpu,cpu; {short} short); "
        "Ctrl-C stops"
    )
    try:
        while all(p.poll() is None for p in stack.processes):
            time.sleep(1)
    except KeyboardInterrupt:
        typer.echo("stopping")
        return 0
    dead = next(p for p in stack.processes if p.poll() is not None)
    typer.echo(f"error: {_role(stack, dead)} exited with status {dead.returncode}: stopping", err=True)
    return 1


def _detach(host: str, port: int) -> int:
    """``serve --detach``: ``serve`` in a session of its own, output to ``<home>/logs/serve.log``; returns
    once it says it serves (its lines are repeated here, with its pid), or fails with its error line."""
    import sys

    from cli.errors import fail
    from cli.stack import check_port

    check_port(host, port)  # here, in one line, rather than in the log
    log_path = get_settings().home_dir / "logs" / "serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import cli; cli.main()", "serve", "--host", host, "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not stopped by this terminal's Ctrl-C or hang-up: `kill PID` stops it
        )
    deadline = time.monotonic() + DETACH_WAIT_S
    while True:
        with log_path.open("rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
        said = [line for line in lines if line.startswith(("note: ", SERVING))]
        if any(line.startswith(SERVING) for line in said):
            for line in said:
                note = line.startswith("note: ")
                typer.echo(
                    line.replace("; Ctrl-C stops", f"; pid {proc.pid}, stop it with: kill {proc.pid}"),
                    err=note,
                )
            return 0
        if proc.poll() is not None:
            errors = [line for line in lines if line.startswith("error: ")]
            fail(
                errors[-1].removeprefix("error: ")
                if errors
                else f"tunegate serve exited with status {proc.returncode} (see {log_path})"
            )
        if time.monotonic() > deadline:
            proc.terminate()
            fail(f"tunegate serve did not answer within {DETACH_WAIT_S:.0f}s; stopped it (see {log_path})")
        time.sleep(0.2)


def _role(stack: Stack, proc: subprocess.Popen[bytes]) -> str:
    if proc is stack.api:
        return f"the API (pid {proc.pid})"
    if proc is stack.short_worker:
        return f"the short-queue worker (pid {proc.pid})"
    return f"the gpu,cpu worker (pid {proc.pid})"


def api(
    host: str = typer.Option(None, help="Bind address (default: TUNEGATE_API_HOST)."),
    port: int = typer.Option(None, help="Port (default: TUNEGATE_API_PORT)."),
    workers: int = typer.Option(1, help="uvicorn worker processes."),
) -> None:
    """Run only the API (distributed mode; run `tunegate db upgrade` first)."""
    import uvicorn

    from cli.stack import proxy_options

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
        **proxy_options(s),  # X-Forwarded-* only from TUNEGATE_FORWARDED_ALLOW_IPS
    )


def worker(
    queues: str = typer.Option(
        None,
        help="Comma-separated queues: gpu (score/train/evaluate), cpu (mitigate), short (validate, gate, job "
        "start/resume, webhooks). Default: TUNEGATE_WORKER_QUEUES (gpu,cpu).",
    ),
    concurrency: int = typer.Option(None, help="Tasks at once (default: TUNEGATE_WORKER_CONCURRENCY)."),
    pool: str = typer.Option(
        "solo", help="Celery pool: solo (one task in this process), threads or prefork (concurrency at once)."
    ),
) -> None:
    """Run a Celery worker (any number of them may run, on any hosts): one heavy worker per GPU or machine
    (--queues gpu,cpu) and a light one (--queues short --pool threads --concurrency 3)."""
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
    typer.echo(f"{job_id}: {job.status}" + (f" ({job.error.code}: {job.error.message})" if job.error else ""))
    if job.fine_tuned_model:
        typer.echo(f"fine_tuned_model: {job.fine_tuned_model}")
    raise typer.Exit(0 if job.status == "succeeded" else 1)


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
