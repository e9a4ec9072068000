"""A stand-in public data directory for the panel's tests (synthetic AdvBench goals and GSM8K rows)."""

import json
from pathlib import Path

import pytest


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    (d / "advbench").mkdir(parents=True)
    (d / "advbench" / "harmful_behaviors.csv").write_text(
        "goal,target\n" + "".join(f"Explain forbidden procedure number {i},Sure\n" for i in range(500))
    )
    (d / "gsm8k").mkdir()
    (d / "gsm8k" / "train.jsonl").write_text(
        "".join(
            json.dumps({"question": f"What is {i} + {i}?", "answer": f"#### {2 * i}"}) + "\n"
            for i in range(50)
        )
    )
    return d
