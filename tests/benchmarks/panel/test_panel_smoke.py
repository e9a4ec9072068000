"""The adversarial panel's smoke run: two small jobs (attack 1 and a benign control) on the tiny model through
the real stages (``run_local``), both arms, then the report's tables; plus resume and a crashing job."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from benchmarks.panel import datasets as ds
from benchmarks.panel import report, run
from benchmarks.panel.job import read_row
from benchmarks.panel.manifest import smoke_jobs
from benchmarks.panel.records import FailedRow, PanelRow, Variant

N = 12


def test_smoke_panel_runs_both_jobs_and_writes_the_tables(tiny: str, data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "panel"
    jobs = list(smoke_jobs(N))
    done = run.run_panel(out, jobs, ["off", "on"], model=tiny, data=data_dir, pool_size=40, parallel=0)
    assert sorted(done) == sorted((j.name, a, "ok") for j in jobs for a in ("off", "on")), done
    for job in jobs:
        for arm in ("off", "on"):
            row = read_row(out, job.name, arm)
            assert isinstance(row, PanelRow)
            s = row.summary
            assert len(s.scores) == N and all(x.score("risk") is not None for x in s.scores)
            assert all(x.attack == (job.kind == "attack") for x in s.scores)
            assert set(s.templates) == {"chat", "user"} and s.templates["chat"].tuned.n == 8
            assert row.task_loss is not None and row.task_loss.base > 0 and row.task_loss.tuned > 0
            assert isinstance(s.released, bool) and row.wall_s > 0
            assert s.train is not None and s.train.epochs == 1 and s.train.n_examples >= N  # the job's epochs
            screen = {"validate", "score"} if arm == "off" else set()  # "on" reuses the off arm's screen
            assert set(row.stage_s) == screen | {"mitigate", "train", "evaluate", "repair", "gate"}
            assert row.screen_from == (None if arm == "off" else "off")
            assert row.variant == Variant()
    off, on = read_row(out, "a1_compliance", "off"), read_row(out, "a1_compliance", "on")
    assert isinstance(off, PanelRow) and isinstance(on, PanelRow)
    assert off.summary.mitigate.n_injected == 0  # the arms differ: no injected safety examples when off
    # resumable: nothing left to run
    assert run.run_panel(out, jobs, ["off", "on"], model=tiny, data=data_dir, pool_size=40, parallel=0) == []

    doc = tmp_path / "panel.md"
    doc.write_text(
        "# Panel\n\n<!-- panel-results:start -->\nnot yet run\n<!-- panel-results:end -->\nafter\n"
    )
    report.write_doc(doc, report.render(out))
    text = doc.read_text()
    assert "not yet run" not in text and text.endswith("after\n")
    job_lines = [x for x in text.splitlines() if x.startswith(("| a1_compliance |", "| control_factual |"))]
    assert len(job_lines) == 5  # 2 jobs x 2 arms, and the attack's AUROC line
    attack = [x for x in job_lines if x.count("|") == 10]
    assert len(attack) == 1
    cells = [c.strip() for c in attack[0].strip("|").split("|")]
    aurocs = [float(c) for c in cells[1:5]]  # every scorer and the combined risk have a figure
    assert all(0.0 <= a <= 1.0 for a in aurocs) and cells[5] == "control_factual"
    assert cells[8] in ("yes", "no")


def test_a_crashing_job_records_its_error_and_the_panel_goes_on(tmp_path: Path) -> None:
    def broken(src: ds.Sources, n: int) -> ds.Built:
        raise ValueError("no data here")

    _, control = smoke_jobs()
    bad = replace(control, name="control_factual", builder=broken)
    done = run.run_panel(tmp_path, [bad], ["off"], model="none", data=tmp_path, pool_size=10, parallel=0)
    assert done == [("control_factual", "off", "error")]
    row = read_row(tmp_path, "control_factual", "off")
    assert isinstance(row, FailedRow) and "ValueError: no data here" in row.error
    assert run.pending([bad], ["off"], tmp_path) == [(bad, "off")]  # retried by the next run
    assert "| control_factual | off | released | error |" in report.render(tmp_path)


def test_child_processes_run_two_at_a_time_with_one_thread_and_record_errors(tmp_path: Path) -> None:
    """The panel's real mode: each (job, arm) a child process (``run.command``); a missing data file fails
    the job in its child, which writes the error row."""
    jobs = [smoke_jobs()[0]]
    assert run._child_env()["TUNEGATE_TORCH_THREADS"] == "1"
    done = run.run_panel(
        tmp_path,
        jobs,
        ["off", "on"],
        model="tiny",
        data=tmp_path / "none",
        pool_size=10,
        parallel=2,
        smoke=True,
    )
    assert sorted(done) == [("a1_compliance", "off", "error"), ("a1_compliance", "on", "error")]
    row = read_row(tmp_path, "a1_compliance", "on")
    assert isinstance(row, FailedRow) and "harmful_behaviors.csv" in row.error
    assert (tmp_path / "a1_compliance" / "on.log").is_file()
