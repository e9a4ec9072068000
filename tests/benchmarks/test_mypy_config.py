"""mypy checks every benchmark script: pyproject.toml lists them by module name (``[tool.mypy] modules``)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_benchmark_script_is_a_mypy_module() -> None:
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    assert mypy["mypy_path"] == ["benchmarks"]
    assert sorted(mypy["modules"]) == sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py"))
    assert "benchmarks.panel" in mypy["packages"]
