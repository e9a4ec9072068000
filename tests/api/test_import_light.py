"""api/ never imports torch, transformers or peft (checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import sys
import api.main, api.routes.jobs, api.services.job_create, models, tunegate.queue
heavy = sorted(m for m in ("torch", "transformers", "peft", "accelerate") if m in sys.modules)
print(",".join(heavy))
"""


def test_api_imports_no_ml_stack() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == ""
