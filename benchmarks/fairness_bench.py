"""Fair share between tenants (issue 29 section 7): three organizations, one submits 200 jobs and the others 2
each, against a real uvicorn API and real Celery workers (a heavy one on ``gpu,cpu`` and, where the code has
the queue, a light one on ``short``), on PostgreSQL and Redis at 127.0.0.1 (a fresh schema, Redis db 12).

The stages are stubs that sleep a fixed time: ``--serve-worker`` (how this script starts its workers) swaps
each stage's build/run/apply for a sleep in the worker processes it starts, keeping the stage's name and
queue, so the runner, claims, events, hand-offs, dispatcher and reaper are the product's own and the figures
measure scheduling, not training. The first stage moves the job to ``queued``, the last to ``succeeded``.

Reported per organization: the time from its first create to its first job's start (its ``validate started``
event), to its last job's end, how many of the big organization's jobs started before that first start, and
its share of the heavy worker's time (the heavy stages' started-to-done spans), over the whole run and over
the contended window (from the small organizations' first create to their last job's end).

    .venv/bin/python benchmarks/fairness_bench.py [--big 200] [--small 2] [--out result.json]

Nothing here is specific to the dispatcher: run against code without it (FIFO), the same script measures the
old behaviour.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import httpx

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from models.tables import Job
    from worker.ml.stage_io import StageIO
    from worker.stages.spec import StageContext, StageSpec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

PG_ADMIN_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/12"
STAGE_SECONDS = {
    "validate": 0.05,
    "score": 0.2,
    "mitigate": 0.05,
    "train": 0.5,
    "evaluate": 0.2,
    "gate": 0.05,
}
ORGS = ("big", "small-b", "small-c")


# --- the workers: the product's worker with stub stages ---------------------------------------------------


@dataclass(frozen=True)
class StubConfig:
    seconds: float


def stub_pipeline(seconds: dict[str, float]) -> None:
    """Swap every stage of ``worker.stages.all.PIPELINE`` (in place: the tasks and the runner hold that
    object) for a stub that sleeps ``seconds[stage]``; names, queues and weights stay."""
    from models.jobs import JobStatus
    from worker.stages.all import PIPELINE
    from worker.stages.base import StageResult, finish
    from worker.stages.spec import Applied

    @dataclass
    class Slept(StageResult):
        seconds: float

    first, last = PIPELINE.specs[0].name, PIPELINE.specs[-1].name

    def make(spec: StageSpec[Any, Any, Any]) -> StageSpec[Any, Any, Any]:
        def build(ctx: StageContext, io: StageIO) -> tuple[StubConfig, StageIO]:
            return StubConfig(seconds.get(spec.name, 0.0)), io

        def run(cfg: StubConfig, io: StageIO) -> Slept:
            io.out_dir.mkdir(parents=True, exist_ok=True)
            time.sleep(cfg.seconds)
            return finish(io.out_dir, cfg, Slept(cfg.seconds))

        def apply(session: Session, job: Job, res: Slept) -> Applied:
            status = {first: JobStatus.QUEUED, last: JobStatus.SUCCEEDED}.get(spec.name)
            return Applied(f"{spec.name} slept {res.seconds}s", status=status)

        return dataclasses.replace(spec, build=build, run=run, apply=apply, result=Slept)

    specs = tuple(make(s) for s in PIPELINE.specs)
    PIPELINE.specs = specs
    PIPELINE._by_name = {s.name: s for s in specs}  # noqa: SLF001 (the benchmark's stub, never the product's)


def serve_worker(queues: str, pool: str, concurrency: int, seconds: dict[str, float], name: str) -> None:
    stub_pipeline(seconds)
    from worker.celery_app import app

    app.worker_main(
        [
            "--quiet",
            "worker",
            "-Q",
            queues,
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            "--loglevel",
            "WARNING",
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )


# --- the run ----------------------------------------------------------------------------------------------


@contextmanager
def pg_schema() -> Iterator[str]:
    from sqlalchemy import create_engine, text

    schema = "tg_fair_" + secrets.token_hex(4)
    admin = create_engine(PG_ADMIN_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the API exited"
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the API did not start")


def make_keys(big: int) -> dict[str, str]:
    """Migrate; one key per organization. The big one may have all its jobs active at once where the code
    has a per-organization limit (its policy's max_active_jobs)."""
    import migrations
    import models.policy as policy
    from models.db import session_scope
    from models.keys import create_key
    from models.tables import Organization

    migrations.upgrade()
    keys = {}
    with session_scope() as s:
        for org in ORGS:
            made = create_key(s, org)
            row = s.get(Organization, made.org_id)
            assert row is not None
            if org == "big" and hasattr(policy, "MAX_ACTIVE_JOBS_KEY"):
                row.policy = {policy.MAX_ACTIVE_JOBS_KEY: big + 10}
            keys[org] = made.key
    return keys


def upload(base: str, key: str) -> str:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{i} + {i}?"},
                {"role": "assistant", "content": f"{2 * i}"},
            ]
        }
        for i in range(12)
    ]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    h = {"Authorization": f"Bearer {key}"}
    r = httpx.post(
        f"{base}/v1/files", headers=h, files={"file": ("t.jsonl", data)}, data={"purpose": "fine-tune"}
    )
    r.raise_for_status()
    fid = str(r.json()["id"])
    for _ in range(300):
        if httpx.get(f"{base}/v1/files/{fid}", headers=h).json()["status"] == "processed":
            return fid
        time.sleep(0.1)
    raise RuntimeError(f"file {fid} was not processed")


def submit(base: str, key: str, fid: str, n: int, firsts: dict[str, datetime], org: str) -> list[str]:
    ids = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        for _ in range(n):
            firsts.setdefault(org, datetime.now(UTC))
            r = c.post("/v1/fine_tuning/jobs", json={"model": "bench", "training_file": fid})
            r.raise_for_status()
            ids.append(str(r.json()["id"]))
    return ids


def wait_all_ended(total: int, timeout_s: float) -> float:
    from sqlalchemy import func, select

    from models.db import session_scope
    from models.tables import Job

    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        with session_scope() as s:
            ended = s.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.status.in_(("succeeded", "failed", "cancelled")))
            )
        if ended == total:
            return time.monotonic() - start
        time.sleep(1.0)
    raise RuntimeError(f"only {ended} of {total} jobs ended within {timeout_s:.0f}s")


Runs = dict[str, list[tuple[str, datetime, datetime]]]


def spans() -> tuple[dict[str, str], Runs, dict[str, dict[str, datetime]]]:
    """Per job: its org; per org: (stage, start, end) of every stage run; per job: its first start/end."""
    from sqlalchemy import select

    from models.db import session_scope
    from models.tables import Job, JobEvent, Organization

    with session_scope() as s:
        names = dict(s.execute(select(Organization.id, Organization.name)).all())
        org_of = {j: names[o] for j, o in s.execute(select(Job.id, Job.org_id)).all()}
        rows = s.execute(select(JobEvent.job_id, JobEvent.dedupe_key, JobEvent.created_at)).all()
    marks: dict[tuple[str, str], dict[str, datetime]] = defaultdict(dict)
    for job_id, key, at in rows:
        if key and key.count(":") == 1 and key.split(":")[1] in ("started", "done"):
            stage, what = key.split(":")
            marks[(job_id, stage)][what] = at
    by_org: Runs = defaultdict(list)
    jobs: dict[str, dict[str, datetime]] = defaultdict(dict)
    for (job_id, stage), m in marks.items():
        if "started" in m and "done" in m:
            by_org[org_of[job_id]].append((stage, m["started"], m["done"]))
        if stage == "validate" and "started" in m:
            jobs[job_id]["start"] = m["started"]
        if "done" in m:
            jobs[job_id]["end"] = max(m["done"], jobs[job_id].get("end", m["done"]))
    return org_of, by_org, jobs


def heavy_seconds(
    runs: list[tuple[str, datetime, datetime]], heavy: set[str], lo: datetime, hi: datetime
) -> float:
    total = 0.0
    for stage, a, b in runs:
        if stage in heavy:
            total += max(0.0, (min(b, hi) - max(a, lo)).total_seconds())
    return total


class OrgShare(TypedDict):
    """One organization's jobs in the run: when its first started and its last ended (seconds from its
    first submission), how many of the big organization's jobs started before its first, and its share of
    the heavy stages' seconds, over the whole run and while the small organizations waited."""

    jobs: int
    first_start_s: float
    last_end_s: float
    big_jobs_started_before: int
    heavy_share_all: float
    heavy_share_contended: float


@dataclass(frozen=True)
class Fairness:
    """The run's figures: each organization's share, the contended window and the whole run (seconds)."""

    orgs: dict[str, OrgShare]
    contended_window_s: float
    run_s: float

    def to_dict(self) -> dict[str, OrgShare | float]:
        """As the result file's ``orgs`` holds it: each organization by name, then the two durations."""
        return {**self.orgs, "contended_window_s": self.contended_window_s, "run_s": self.run_s}


def report(firsts: dict[str, datetime], heavy: set[str]) -> Fairness:
    org_of, by_org, jobs = spans()
    small_first = min(firsts[o] for o in ORGS[1:])
    small_end = max(j["end"] for job, j in jobs.items() if org_of[job] != "big")
    everything = (min(firsts.values()), max(j["end"] for j in jobs.values()))
    total_all = sum(heavy_seconds(r, heavy, *everything) for r in by_org.values())
    total_window = sum(heavy_seconds(r, heavy, small_first, small_end) for r in by_org.values())
    out: dict[str, OrgShare] = {}
    for org in ORGS:
        mine = [j for job, j in jobs.items() if org_of[job] == org]
        first_start = min(j["start"] for j in mine)
        big_before = sum(1 for job, j in jobs.items() if org_of[job] == "big" and j["start"] < first_start)
        out[org] = {
            "jobs": len(mine),
            "first_start_s": round((first_start - firsts[org]).total_seconds(), 2),
            "last_end_s": round((max(j["end"] for j in mine) - firsts[org]).total_seconds(), 2),
            "big_jobs_started_before": big_before,
            "heavy_share_all": round(heavy_seconds(by_org[org], heavy, *everything) / total_all, 3),
            "heavy_share_contended": round(
                heavy_seconds(by_org[org], heavy, small_first, small_end) / total_window, 3
            ),
        }
    return Fairness(
        out,
        contended_window_s=round((small_end - small_first).total_seconds(), 1),
        run_s=round((everything[1] - everything[0]).total_seconds(), 1),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--big", type=int, default=200, help="jobs of the big organization")
    ap.add_argument("--small", type=int, default=2, help="jobs of each small organization")
    ap.add_argument("--stage-seconds", type=json.loads, default=STAGE_SECONDS, help="JSON {stage: seconds}")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--serve-worker", help=argparse.SUPPRESS)  # the queues of a worker this script starts
    ap.add_argument("--pool", default="solo", help=argparse.SUPPRESS)
    ap.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--name", default="bench", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_worker:
        serve_worker(args.serve_worker, args.pool, args.concurrency, args.stage_seconds, args.name)
        return

    from machine import print_machine

    info = print_machine()
    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fair-bench-")))
        db_url = stack.enter_context(pg_schema())
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
        from tests.utils.tiny_model import build_tiny_model

        model = build_tiny_model(home / "tiny")  # the API checks the model exists; the stubs never load it
        settings_env = {
            "TUNEGATE_HOME": str(home),
            "TUNEGATE_DATABASE_URL": db_url,
            "TUNEGATE_BROKER_URL": REDIS_URL,
            "TUNEGATE_MODELS": json.dumps({"bench": str(model)}),
            "TUNEGATE_MIN_EXAMPLES": "1",
            "TUNEGATE_RATE_LIMIT_PER_MINUTE": "1000000",
            "TUNEGATE_EVENT_INTERVAL_S": "0",
            "TUNEGATE_REAP_INTERVAL_S": "5",
            "TUNEGATE_WORKER_SLOTS": "1",  # one heavy worker, solo pool
            "TUNEGATE_LOG_LEVEL": "WARNING",
            "TUNEGATE_CONSOLE_SECRET": "bench",
        }
        os.environ.update(settings_env)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        keys = make_keys(args.big)

        from tunegate.queue import QUEUES
        from worker.stages.all import PIPELINE

        heavy = {s.name for s in PIPELINE.specs if s.queue in ("gpu", "cpu")}
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        api = spawn(
            [sys.executable, "-m", "uvicorn", "api.main:app", "--port", str(port), "--log-level", "warning"],
            env,
            home / "api.log",
        )
        stack.callback(stop, api)
        wait_healthy(base, api)
        me = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--stage-seconds",
            json.dumps(args.stage_seconds),
        ]
        workers = [("heavy", "gpu,cpu", "solo", 1)]
        if "short" in QUEUES:
            workers.append(("short", "short", "threads", 3))
        alive = []
        for name, queues, pool, conc in workers:
            cmd = [*me, "--serve-worker", queues, "--pool", pool, "--concurrency", str(conc), "--name", name]
            alive.append(home / f"alive-{name}")  # touched once the worker is ready (worker/celery_app.py)
            worker_env = {**env, "TUNEGATE_WORKER_ALIVE_FILE": str(alive[-1])}
            stack.callback(stop, spawn(cmd, worker_env, home / f"worker-{name}.log"))
        files = {org: upload(base, keys[org]) for org in ORGS}
        deadline = time.monotonic() + 300
        while not all(p.is_file() for p in alive):  # their start is not what is measured
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        firsts: dict[str, datetime] = {}
        submit(base, keys["big"], files["big"], args.big, firsts, "big")
        smalls = [
            threading.Thread(target=submit, args=(base, keys[o], files[o], args.small, firsts, o))
            for o in ORGS[1:]
        ]
        for t in smalls:
            t.start()
        for t in smalls:
            t.join()
        print(f"submitted {args.big} + {len(ORGS[1:])} x {args.small} jobs", flush=True)
        wait_all_ended(args.big + args.small * (len(ORGS) - 1), args.timeout)
        result = {
            "machine": info,
            "queues": list(QUEUES),
            "stage_seconds": args.stage_seconds,
            "orgs": report(firsts, heavy).to_dict(),
        }
    print(json.dumps(result["orgs"], indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
