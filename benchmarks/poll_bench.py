"""Poll path benchmark: job retrieve, list_events and list against a plain async FastAPI endpoint, with wrk.

One run starts two real uvicorn servers side by side, with the configuration ``tunegate api`` uses (one
worker, ``--no-server-header``): tunegate (``api.main:app``) on a fresh home, and the floor
(``benchmarks/poll_floor.py``: a plain ``async def`` endpoint, and a plain ``def`` endpoint running
``SELECT 1`` on a pooled SQLAlchemy session). For each concurrency level wrk (a compiled load generator:
``apt-get install -y wrk``) drives each endpoint in turn for ``--seconds``, one endpoint at a time, so the
ratios to the floor come from the same minutes on the same machine. Run for SQLite (embedded) and
PostgreSQL (a fresh schema, dropped at the end).

    apt-get install -y wrk
    PYTHONPATH=$PWD .venv/bin/python benchmarks/poll_bench.py --seconds 10 --connections 10,200

The seeded organization has 20 jobs (the list's default page); the polled job has 20 events (list_events'
default page). The per-organization rate limit is lifted for the run (capacity, not the limiter, is
measured); the per-organization concurrency limit is set above the connection count, so the abuse guard
still counts every request. wrk's own timeout (2 s) counts a client timeout; a non-2xx answer is an error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from machine import print_machine

REPO = Path(__file__).resolve().parents[1]
PG_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
N_JOBS = 20
N_EVENTS = 20
ENDPOINTS = ("floor", "select1", "retrieve", "list_events", "list")
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass(frozen=True)
class Result:
    endpoint: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx answers plus connect/read/write errors
    timeouts: int


def seed() -> None:
    """(child process) Migrate, create a key, 20 queued jobs (the provider's default policy as their
    ``safety``, as created jobs have), 20 events on the first; print the key and that job as JSON."""
    import migrations
    from models.db import session_scope
    from models.jobs import record_event
    from models.keys import create_key
    from models.policy import org_policy
    from models.tables import File, Job
    from tunegate.settings import get_settings

    migrations.upgrade()
    with session_scope() as session:
        key = create_key(session, "bench")
        file = File(
            org_id=key.org_id,
            filename="train.jsonl",
            purpose="fine-tune",
            bytes=1000,
            sha256="0" * 64,
            storage_key="0" * 64,
            status="processed",
            n_examples=20,
        )
        session.add(file)
        session.flush()
        jobs = [
            Job(
                org_id=key.org_id,
                model="smollm2-135m",
                training_file=file.id,
                status="queued",
                hyperparameters={"n_epochs": 3},
                method={"type": "supervised"},
                metadata_={"run": str(i)},
                safety=org_policy(get_settings(), {}),  # what a created job stores
                seed=i,
            )
            for i in range(N_JOBS)
        ]
        session.add_all(jobs)
        session.flush()
        for i in range(N_EVENTS):
            record_event(
                session,
                jobs[0],
                f"Step {i}: training loss 1.{i:02d}",
                type="metrics",
                data={"step": i, "train_loss": 1.0 + i / 100},
            )
    print(json.dumps({"key": key.key, "job": jobs[0].id}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uvicorn_command(app: str, port: int) -> list[str]:
    """What ``tunegate api`` runs (cli/service.py: one worker, no server header), as a command line."""
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)] + [
        "--log-level",
        "warning",
        "--no-server-header",
    ]


@contextmanager
def serving(app: str, env: dict[str, str], cwd: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(uvicorn_command(app, port), env=env, cwd=cwd)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{app} did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema; the URL puts it first on the search path."""
    from sqlalchemy import create_engine, text

    schema = "poll_" + secrets.token_hex(6)
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()  # type: ignore[union-attr]
    return float(number) * UNITS[unit]


def parse_wrk(out: str, endpoint: str, connections: int) -> Result:
    def grab(pattern: str) -> str | None:
        m = re.search(pattern, out)
        return m.group(1) if m else None

    socket_errors = re.search(r"connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    connect, read, write, timeout = (int(x) for x in socket_errors.groups()) if socket_errors else (0,) * 4
    return Result(
        endpoint=endpoint,
        connections=connections,
        rps=float(grab(r"Requests/sec:\s+([\d.]+)") or 0.0),
        p50_ms=_ms(grab(r"\s50%\s+(\S+)") or "0ms"),
        p99_ms=_ms(grab(r"\s99%\s+(\S+)") or "0ms"),
        errors=int(grab(r"Non-2xx or 3xx responses: (\d+)") or 0) + connect + read + write,
        timeouts=timeout,
    )


def wrk(url: str, connections: int, seconds: float, headers: dict[str, str]) -> str:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    return subprocess.run(cmd + [url], check=True, capture_output=True, text=True).stdout


def run_database(label: str, database_url: str | None, levels: list[int], seconds: float) -> list[Result]:
    home = Path(tempfile.mkdtemp(prefix="tunegate-poll-"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(REPO), str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")]
        ),
        "TUNEGATE_HOME": str(home),
        "TUNEGATE_RATE_LIMIT_PER_MINUTE": "1000000000",
        "TUNEGATE_MAX_CONCURRENT_REQUESTS_PER_ORG": str(10 * max(levels)),
        "TUNEGATE_LOG_LEVEL": "WARNING",
    }
    env.pop("TUNEGATE_DATABASE_URL", None)
    if database_url:
        env["TUNEGATE_DATABASE_URL"] = database_url
    out = subprocess.run(
        [sys.executable, __file__, "--seed"], env=env, cwd=REPO, check=True, capture_output=True, text=True
    )
    seeded = json.loads(out.stdout.strip().splitlines()[-1])
    auth = {"Authorization": f"Bearer {seeded['key']}"}
    results: list[Result] = []
    try:
        with serving("api.main:app", env, REPO) as api, serving("poll_floor:app", env, REPO) as floor:
            jobs = f"{api}/v1/fine_tuning/jobs"
            urls = {
                "floor": (f"{floor}/floor", {}),
                "select1": (f"{floor}/select1", {}),
                "retrieve": (f"{jobs}/{seeded['job']}", auth),
                "list_events": (f"{jobs}/{seeded['job']}/events", auth),
                "list": (jobs, auth),
            }
            for url, headers in urls.values():  # warm both servers (imports, pools, caches)
                wrk(url, 2, 1, headers)
            for connections in levels:
                for endpoint in ENDPOINTS:
                    url, headers = urls[endpoint]
                    result = parse_wrk(wrk(url, connections, seconds, headers), endpoint, connections)
                    results.append(result)
                    print(f"{label}: {row(result, results)}", flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return results


def row(r: Result, results: list[Result]) -> str:
    floor = next(x for x in results if x.endpoint == "floor" and x.connections == r.connections)
    return (
        f"{r.endpoint:12s} c={r.connections:<4d} {r.rps:8.1f}/s ({r.rps / floor.rps:4.2f}x floor) "
        f"p50={r.p50_ms:7.1f} ms p99={r.p99_ms:7.1f} ms errors={r.errors} timeouts={r.timeouts}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="wrk duration per endpoint and level")
    ap.add_argument("--connections", default="10,200", help="comma-separated concurrency levels")
    ap.add_argument("--databases", default="sqlite,postgres", help="sqlite, postgres or both")
    ap.add_argument("--seed", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.seed:
        seed()
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")
    print_machine()
    with open("/proc/loadavg") as f:
        print(f"load average at start: {f.read().split()[:3]}")
    levels = [int(c) for c in args.connections.split(",")]
    for database in args.databases.split(","):
        if database == "postgres":
            with pg_schema() as url:
                run_database("postgres", url, levels, args.seconds)
        else:
            run_database("sqlite", None, levels, args.seconds)
    with open("/proc/loadavg") as f:
        print(f"load average at end: {f.read().split()[:3]}")


if __name__ == "__main__":
    main()
