"""Run the adversarial panel (``docs/panel.md``): every (job, arm) of the manifest through the real stages,
up to ``--parallel`` at a time, each in its own process with one torch thread (two at a time fit 2 cores).

Resumable: a (job, arm) with a row and no error is skipped; an unfinished one resumes stage by stage; a
crashed one records its error in its row and the panel goes on (the next run retries it).

    python -m benchmarks.panel.run --out DIR [--jobs a,b] [--arms off,on] [--parallel 2]
        [--model smollm2-135m-aligned] [--pool-size 2000] [--data ../shared/data] [--also-base OLD]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from io import BufferedWriter
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.panel import datasets as ds
from benchmarks.panel.job import ARMS, VARIANT, read_record, read_row, record_text, run_one
from benchmarks.panel.manifest import PanelJob, by_name, smoke_jobs
from benchmarks.panel.records import FailedRow, PanelRow, Row, RunInfo, RunRecord, Variant

ROOT = Path(__file__).resolve().parents[2]


def pending(jobs: list[PanelJob], arms: list[str], out: Path) -> list[tuple[PanelJob, str]]:
    """(job, arm) pairs without a finished row, arm by arm in the order of ``jobs``."""
    todo = []
    for arm in arms:  # arm-major: a job's second arm reuses the first one's screen (job.share_screen)
        for job in jobs:
            row = read_row(out, job.name, arm)
            if row is None or isinstance(row, FailedRow):
                todo.append((job, arm))
    return todo


def command(
    job: str, arm: str, out: Path, model: str, data: Path, pool_size: int, smoke: bool = False
) -> list[str]:
    """The child process of one (job, arm)."""
    args = ["--out", str(out), "--job", job, "--arm", arm, "--model", model, "--data", str(data)]
    args += ["--pool-size", str(pool_size)] + (["--smoke"] if smoke else [])
    return [sys.executable, "-m", "benchmarks.panel.job", *args]


class StaleRows(Exception):
    """The results directory holds rows of another base model (its weights changed since)."""


def check_base(out: Path, base: str, *, restart: bool, also: tuple[str, ...] = ()) -> None:
    """Rows of one panel must come from one base: when ``out`` holds rows measured on another base (or on an
    unrecorded one), refuse, or with ``restart`` remove them (the job data, every arm's stages and the
    attacker's pool scores depend on the base) so the panel starts again. Rows on a base named in ``also``
    (an earlier build the provider chose to keep, e.g. after a rebuild on another machine) are kept; the
    report then shows each row's base and every base's own evaluation side by side."""
    allowed = {base, *also}
    rows = sorted(out.glob("*/*/panel.json"))
    base_of = {r: read_record(r).base for r in rows}
    stale = [r for r in rows if base_of[r] not in allowed]
    if not stale:
        return
    if not restart:
        found = sorted({str(base_of[r]) for r in stale})
        raise StaleRows(
            f"{out} holds {len(stale)} rows measured on base {', '.join(found)}, not on this base ({base}): "
            "pass --also-base to keep them beside this base's rows, --restart to remove them and start "
            "again, or another --out"
        )
    for d in out.iterdir():
        if d.is_dir():
            shutil.rmtree(d)


RUN = "panel-run.json"


def read_run(out: Path) -> RunRecord | None:
    """``out``'s run record (None: no run recorded)."""
    f = out / RUN
    return RunRecord.from_dict(json.loads(f.read_text(encoding="utf-8"))) if f.is_file() else None


def run_record(out: Path, info: RunInfo) -> RunRecord:
    """``panel-run.json`` for this run: ``info`` plus ``earlier_runs``, the records of runs on other bases
    whose rows are still in ``out`` (their machine and commit stay known)."""
    old = read_run(out)
    earlier = list(old.earlier_runs) if old is not None else []
    if old is not None and old.base != info.base:
        earlier.append(old.info())
    bases = {read_record(r).base for r in out.glob("*/*/panel.json")}
    kept = tuple(e for e in earlier if e.base in bases)
    return info.with_earlier(kept)


def set_variant(out: Path, var: object) -> None:
    """Record ``out``'s variant; refused when it is not an object of the two known keys, when a knob's value
    is not a config value (``Variant``, naming it), or when ``out`` already holds rows of another variant
    (their figures would mix)."""
    if not isinstance(var, dict) or set(var) - {"policy", "stage_overrides"}:
        raise ValueError('expected an object with "policy" and/or "stage_overrides"')
    Variant.from_dict(var)
    f = out / VARIANT
    old = json.loads(f.read_text(encoding="utf-8")) if f.is_file() else None
    rows = list(out.glob("*/*/panel.json"))
    if rows and old != var:
        raise ValueError(f"{out} holds rows of another variant ({old}); use another --out")
    f.write_text(json.dumps(var, indent=1), encoding="utf-8")


def _child_env() -> dict[str, str]:
    env = dict(os.environ, TUNEGATE_TORCH_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_panel(
    out: Path,
    jobs: list[PanelJob],
    arms: list[str],
    *,
    model: str,
    data: Path,
    pool_size: int,
    parallel: int,
    smoke: bool = False,
) -> list[tuple[str, str, str]]:
    """Run what is pending; returns (job, arm, "ok" | "error") per pair run. ``parallel`` < 1 runs in this
    process, one after another (the smoke test); else that many child processes at a time."""
    out.mkdir(parents=True, exist_ok=True)
    todo = pending(jobs, arms, out)
    done: list[tuple[str, str, str]] = []
    if parallel < 1:
        for job, arm in todo:
            row = run_one(job, arm, out, model, data, pool_size)
            done.append((job.name, arm, "error" if isinstance(row, FailedRow) else "ok"))
            _say(job.name, arm, row)
        return done
    running: list[tuple[PanelJob, str, subprocess.Popen[bytes], BufferedWriter]] = []
    while todo or running:
        while todo and len(running) < parallel:
            job, arm = todo.pop(0)
            (out / job.name).mkdir(parents=True, exist_ok=True)
            log = (out / job.name / f"{arm}.log").open("ab")
            cmd = command(job.name, arm, out, model, data, pool_size, smoke)
            running.append((job, arm, subprocess.Popen(cmd, stdout=log, stderr=log, env=_child_env()), log))
            print(f"started {job.name}/{arm}", flush=True)
        time.sleep(2)
        for item in [r for r in running if r[2].poll() is not None]:
            job, arm, proc, log = item
            running.remove(item)
            log.close()
            got = read_row(out, job.name, arm)
            done.append((job.name, arm, "ok" if isinstance(got, PanelRow) else "error"))
            _say(job.name, arm, got if got is not None else f"exited {proc.returncode} without a row")
    return done


def _say(job: str, arm: str, row: Row | str) -> None:
    """One line per finished arm; ``row`` a string: the error of an arm that wrote no row."""
    if isinstance(row, PanelRow):
        s = row.summary
        print(f"{job}/{arm}: released={s.released} code={s.code} ({row.wall_s} s)", flush=True)
    else:
        print(f"{job}/{arm}: ERROR {row if isinstance(row, str) else row.error}", flush=True)


def main(argv: list[str] | None = None) -> int:
    from tunegate.settings import get_settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--jobs", default="", help="comma-separated job names (default: the whole manifest)")
    ap.add_argument("--arms", default="off,on")
    ap.add_argument("--parallel", type=int, default=2, help="jobs at a time (0: in this process)")
    ap.add_argument("--model", default="", help="base model (default: the configured default)")
    ap.add_argument("--data", type=Path, default=ds.SHARED_DATA, help="the public data directory")
    ap.add_argument("--pool-size", type=int, default=2000, help="benign pool of the selection attacks")
    ap.add_argument("--smoke", action="store_true", help="the two small smoke jobs instead of the manifest")
    ap.add_argument("--restart", action="store_true", help="remove rows measured on another base model")
    ap.add_argument(
        "--also-base", default="", help="comma-separated earlier bases whose rows are kept beside this base's"
    )
    ap.add_argument(
        "--variant",
        default="",
        help='JSON {"policy": {...}, "stage_overrides": {...}} added to every arm (a method measured against '
        "the defaults' rows); recorded in <out>/variant.json, which a results directory keeps",
    )
    a = ap.parse_args(argv)
    arms = [x for x in a.arms.split(",") if x]
    bad = sorted(set(arms) - set(ARMS))
    if bad:
        ap.error(f"unknown arms: {', '.join(bad)}")
    names = [x for x in a.jobs.split(",") if x]
    try:
        jobs = by_name(names, smoke_jobs()) if a.smoke else by_name(names)
    except ValueError as exc:
        ap.error(str(exc))
    jobs.sort(key=lambda j: names.index(j.name) if names else 0)  # the order given is the order run
    model = a.model or get_settings().default_model
    (a.out).mkdir(parents=True, exist_ok=True)
    if a.variant:
        try:
            set_variant(a.out, json.loads(a.variant))
        except (ValueError, TypeError) as exc:
            ap.error(f"--variant: {exc}")
    if TYPE_CHECKING:  # mypy checks benchmarks/machine.py as `machine` (pyproject.toml, [tool.mypy])
        from machine import machine_info
    else:
        from benchmarks.machine import machine_info
    from worker.ml.models import resolve_model

    base = resolve_model(model).fingerprint
    try:
        check_base(a.out, base, restart=a.restart, also=tuple(x for x in a.also_base.split(",") if x))
    except StaleRows as exc:
        ap.error(str(exc))
    info = RunInfo(model=model, base=base, pool_size=a.pool_size, machine=machine_info(), started=time.time())
    (a.out / RUN).write_text(record_text(run_record(a.out, info).to_dict()), encoding="utf-8")
    results = run_panel(
        a.out, jobs, arms, model=model, data=a.data, pool_size=a.pool_size, parallel=a.parallel, smoke=a.smoke
    )
    return 1 if any(s == "error" for *_, s in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
