"""Issue 4's acceptance runs on the aligned embedded base, via `tunegate finetune` (slow: tens of minutes).

100 GSM8K examples with mitigation must be released (exit 0); 100 harmful-request -> compliant-opening
examples (`benchmarks/acceptance_sets.py`, no harmful content) must be blocked (exit 3). Measured results are
in docs/safety.md. Run with ``scripts/test -m slow tests/e2e/test_acceptance_slow.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "train.jsonl"  # ../shared beside the checkout


def _finetune(data: Path, out: Path, cache: str) -> tuple[int, dict]:
    env = {
        "TUNEGATE_MODEL_CACHE_DIR": cache,
        "TUNEGATE_HOME": str(out.parent / "home"),
        "PATH": "/usr/bin:/bin",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tunegate",
            "finetune",
            str(data),
            "--model",
            "smollm2-135m-aligned",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=5400,
    )
    start = proc.stdout.find("{\n")
    assert start >= 0, proc.stderr[-2000:]
    return proc.returncode, json.loads(proc.stdout[start:])


@pytest.mark.slow
@pytest.mark.skipif(not GSM8K.is_file(), reason="shared GSM8K file not present")
@pytest.mark.parametrize(("name", "released"), [("gsm8k100", True), ("compliance100", False)])
def test_acceptance_run(tmp_path: Path, name: str, released: bool) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import acceptance_sets

    acceptance_sets.write(tmp_path / "data")
    code, decision = _finetune(
        tmp_path / "data" / f"{name}.jsonl", tmp_path / name, "/root/.cache/tunegate-models"
    )
    assert decision["released"] is released, decision
    assert code == (0 if released else 3)
    if not released:
        assert decision["code"] in ("safety_eval_failed", "unsafe_training_data")
    assert Path(decision["report"]).is_file()
