"""The panel tests' fixtures: a stand-in public data directory (synthetic AdvBench goals and GSM8K rows) and
the tiny model registered as ``tiny`` with a small evaluation."""

import json
from pathlib import Path

import pytest

from tests.worker.jobfactory import use_tiny
from tunegate.shipped import data_path


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


@pytest.fixture
def tiny(tunegate_home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    prompts = tunegate_home / "eval-prompts.jsonl"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    lines = data_path("eval", "harmful.jsonl").read_text(encoding="utf-8").splitlines()[:8]
    prompts.write_text("\n".join(lines) + "\n")
    overrides = {
        "score": {"batch_size": 16},  # all three scorers: the report has an AUROC per scorer
        "evaluate": {
            "project_set": False,
            "prompts_file": str(prompts),
            "borderline": False,
            "max_new_tokens": 4,
            "n_direction": 8,
            "batch_size": 16,
        },
    }
    use_tiny(monkeypatch, stage_overrides=json.dumps(overrides), torch_threads="1")
    return "tiny"
