"""The README's first command on the real embedded model: `tunegate demo` (slow: minutes of CPU).

Runs the demo flow (embedded stack as subprocesses, openai SDK, both datasets) on the aligned SmolLM2 base and
expects the product's intended outcome: the benign job released, the risky one blocked with a coded error.
Run with ``scripts/test -m slow tests/e2e/test_demo_slow.py``; the aligned base is built on first use into
TUNEGATE_MODEL_CACHE_DIR (default here: the shared cache /root/.cache/tunegate-models).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.server import free_port
from tunegate.settings import EMBEDDED_ALIGNED, reset_settings


@pytest.mark.slow
def test_demo_releases_the_benign_job_and_blocks_the_risky_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tunegate.demo import run_demo

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
    lines: list[str] = []
    outcomes = run_demo(
        model=EMBEDDED_ALIGNED, host="127.0.0.1", port=free_port(), echo=lines.append, timeout_s=3600
    )
    by_name = {o.name: o for o in outcomes}
    assert by_name["benign"].status == "succeeded", by_name["benign"].error
    risky = by_name["risky"]
    assert risky.status == "failed" and risky.error is not None, risky
    assert risky.error["code"] in ("unsafe_training_data", "safety_eval_failed")
    assert all(o.report_html and Path(o.report_html).is_file() for o in outcomes)
    reset_settings()
