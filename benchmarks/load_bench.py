"""API load benchmark: 200 concurrent clients polling job status plus concurrent uploads, on loopback.

Starts a real uvicorn server (``api.main:app``) as a subprocess on a fresh TUNEGATE_HOME (embedded SQLite by
default, or ``--database-url`` for PostgreSQL), creates an organization, a processed training file and a few
jobs (no worker runs: the jobs stay queued, which is what a polling client sees most of the time), then for a
fixed time runs N polling clients (``GET /v1/fine_tuning/jobs/{id}``, each with its own connection) and M
uploaders (``POST /v1/files``, a 20-example JSONL each time). Prints p50/p99 latency, throughput and errors.

    .venv/bin/python benchmarks/load_bench.py --clients 200 --uploaders 4 --seconds 30

The per-organization rate limit is raised for the run (``TUNEGATE_RATE_LIMIT_PER_MINUTE``): this measures
capacity, not the limiter. Any non-2xx answer or transport error counts as an error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from machine import print_machine

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self, seconds: float) -> dict[str, float]:
        lat = sorted(self.latencies)
        q = statistics.quantiles(lat, n=100) if len(lat) > 1 else [lat[0] if lat else 0.0] * 99
        return {
            "requests": len(lat),
            "errors": len(self.errors),
            "rps": len(lat) / seconds,
            "p50_ms": 1000 * q[49],
            "p99_ms": 1000 * q[98],
            "max_ms": 1000 * (lat[-1] if lat else 0.0),
        }


def jsonl(n: int, tag: str) -> bytes:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{tag}: what is {i} + {i}?"},
                {"role": "assistant", "content": f"{2 * i}"},
            ]
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def setup_org(env: dict[str, str]) -> str:
    """Migrate and create a key in a child process with the benchmark's environment."""
    code = (
        "import migrations; migrations.upgrade();"
        "from models.db import session_scope; from models.keys import create_key;"
        "s = session_scope().__enter__(); k = create_key(s, 'bench'); s.commit(); print(k.key)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, check=True, capture_output=True, text=True
    )
    return out.stdout.strip().splitlines()[-1]


async def make_jobs(client: httpx.AsyncClient, n: int) -> list[str]:
    r = await client.post(
        "files", files={"file": ("seed.jsonl", jsonl(20, "seed"))}, data={"purpose": "fine-tune"}
    )
    r.raise_for_status()
    file_id = r.json()["id"]
    for _ in range(100):
        if (await client.get(f"files/{file_id}")).json()["status"] == "processed":
            break
        await asyncio.sleep(0.1)
    jobs = []
    for i in range(n):
        r = await client.post(
            "fine_tuning/jobs",
            json={"model": "smollm2-135m", "training_file": file_id, "suffix": f"bench{i}"},
        )
        r.raise_for_status()
        jobs.append(r.json()["id"])
    return jobs


async def poller(base: str, key: str, job_id: str, stop: float, stats: Stats) -> None:
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        while time.monotonic() < stop:
            t = time.monotonic()
            try:
                r = await c.get(f"fine_tuning/jobs/{job_id}")
                ok = r.status_code == 200 and r.json()["id"] == job_id
            except httpx.HTTPError as exc:
                stats.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            stats.latencies.append(time.monotonic() - t)
            if not ok:
                stats.errors.append(f"GET job -> {r.status_code}")


async def uploader(base: str, key: str, idx: int, stop: float, stats: Stats) -> None:
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        n = 0
        while time.monotonic() < stop:
            t = time.monotonic()
            try:
                r = await c.post(
                    "files",
                    files={"file": (f"u{idx}-{n}.jsonl", jsonl(20, f"u{idx}-{n}"))},
                    data={"purpose": "fine-tune"},
                )
            except httpx.HTTPError as exc:
                stats.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            stats.latencies.append(time.monotonic() - t)
            n += 1
            if r.status_code != 200:
                stats.errors.append(f"POST file -> {r.status_code}: {r.text[:200]}")


async def run(base: str, key: str, clients: int, uploaders: int, seconds: float, n_jobs: int) -> None:
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30) as c:
        jobs = await make_jobs(c, n_jobs)
    polls, uploads = Stats(), Stats()
    stop = time.monotonic() + seconds
    t0 = time.monotonic()
    await asyncio.gather(
        *[poller(base, key, jobs[i % len(jobs)], stop, polls) for i in range(clients)],
        *[uploader(base, key, i, stop, uploads) for i in range(uploaders)],
    )
    elapsed = time.monotonic() - t0
    for name, st in (("poll job status", polls), ("upload file", uploads)):
        s = st.summary(elapsed)
        print(
            f"{name:16s} requests={s['requests']:6.0f} errors={s['errors']:.0f} throughput={s['rps']:7.1f}/s "
            f"p50={s['p50_ms']:7.1f} ms p99={s['p99_ms']:7.1f} ms max={s['max_ms']:7.1f} ms"
        )
        for e in st.errors[:5]:
            print(f"  error: {e}")
    print(f"clients={clients} uploaders={uploaders} seconds={elapsed:.1f} jobs={n_jobs}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--uploaders", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--api-workers", type=int, default=1, help="uvicorn worker processes")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--database-url", default="", help="PostgreSQL URL (default: embedded SQLite)")
    args = ap.parse_args()
    print_machine()
    home = Path(tempfile.mkdtemp(prefix="tunegate-load-"))
    env = {
        **os.environ,
        "TUNEGATE_HOME": str(home),
        "TUNEGATE_RATE_LIMIT_PER_MINUTE": "100000000",
        "TUNEGATE_MAX_CONCURRENT_REQUESTS_PER_ORG": "0",  # one org plays all 200 clients here
        "TUNEGATE_LOG_LEVEL": "WARNING",
    }
    if args.database_url:
        env["TUNEGATE_DATABASE_URL"] = args.database_url
    key = setup_org(env)
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "api.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
        "--workers",
        str(args.api_workers),
        "--log-level",
        "warning",
        "--backlog",
        "4096",
        "--no-server-header",
    ]
    server = subprocess.Popen(cmd, env=env, cwd=REPO)
    base = f"http://127.0.0.1:{args.port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        print(
            f"server: uvicorn api.main:app, {args.api_workers} worker(s), database "
            f"{'PostgreSQL' if args.database_url else 'SQLite (embedded)'}, cpus={os.cpu_count()}"
        )
        asyncio.run(run(f"{base}/v1/", key, args.clients, args.uploaders, args.seconds, args.jobs))
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
