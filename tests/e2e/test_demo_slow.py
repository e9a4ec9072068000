"""The README's first command on the real embedded model: `tunegate demo` (slow: minutes of CPU).

Runs the demo flow (embedded stack as subprocesses, openai SDK, both datasets) on the aligned SmolLM2 base and
expects the product's intended outcome: the benign job released, the risky one blocked with a coded error.
Run with ``scripts/test -m slow tests/e2e/test_demo_slow.py``; the aligned base is built on first use into
TUNEGATE_MODEL_CACHE_DIR (default here: the shared cache /root/.cache/tunegate-models).

The first-run goal (the whole demo within 15 minutes on 2 cores, aligned-base build included) is a
benchmark, not an assertion: the wall time, the deadline, whether it was met, whether the base was built in
this run, and the machine are written to ``benchmarks/results/demo_run.json`` and printed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.api.server import free_port
from tunegate.settings import EMBEDDED_ALIGNED, reset_settings


@pytest.mark.slow
def test_demo_releases_the_benign_job_and_blocks_the_risky_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli.demo import run_demo

    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNEGATE_MODEL_CACHE_DIR", "/root/.cache/tunegate-models")
    for var in (
        "TUNEGATE_DATABASE_URL",
        "TUNEGATE_BROKER_URL",
        "TUNEGATE_MODELS",
        "TUNEGATE_STAGE_OVERRIDES",
    ):
        monkeypatch.delenv(var, raising=False)
    reset_settings()
    from cli.demo import model_ready

    lines: list[str] = []
    built_here = not model_ready(EMBEDDED_ALIGNED)
    t0 = time.monotonic()
    outcomes = run_demo(
        model=EMBEDDED_ALIGNED, host="127.0.0.1", port=free_port(), echo=lines.append, timeout_s=3600
    )
    run = json.loads((tmp_path / "home" / "logs" / "demo-run.json").read_text())
    record_deadline(time.monotonic() - t0, built_here, lines, run["phases_s"])
    by_name = {o.name: o for o in outcomes}
    assert by_name["benign"].status == "succeeded", by_name["benign"].error
    risky = by_name["risky"]
    assert risky.status == "failed" and risky.error is not None, risky
    assert risky.error["code"] in ("unsafe_training_data", "safety_eval_failed")
    assert all(o.report_html and Path(o.report_html).is_file() for o in outcomes)
    reset_settings()


DEADLINE_S = 15 * 60  # the first-run goal: everything, aligned-base build included, on 2 CPU cores


def record_deadline(seconds: float, built_here: bool, lines: list[str], phases: dict[str, float]) -> None:
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "benchmarks"))
    from machine import machine_info

    result = {
        "benchmark": "tunegate demo wall time",
        "seconds": round(seconds, 1),
        "deadline_s": DEADLINE_S,
        "met": seconds <= DEADLINE_S,
        "aligned_base_built_in_this_run": built_here,
        "phases_s": phases,
        "plan": [line for line in lines if line.startswith(("  ", "Expected", "tunegate demo will"))],
        "machine": machine_info(),
    }
    out = root / "benchmarks" / "results" / "demo_run.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("benchmark:", json.dumps(result))
