"""The validate stage: exact token counts with the base model's tokenizer, errors naming file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.worker.jobfactory import chat_rows, use_tiny
from tunegate.errors import InvalidFile
from tunegate.settings import get_settings
from worker.ml.stage_io import StageIO
from worker.stages import validate


@pytest.fixture
def home(migrated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_tiny(monkeypatch)
    return migrated_home


def _write(tmp: Path, rows: list[dict]) -> Path:
    p = tmp / "data.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_validate_counts_exact_tokens(home: Path, tmp_path: Path) -> None:
    io = StageIO(tmp_path / "out", stage="validate")
    res = validate.run(
        validate.ValidateConfig(model="tiny"),
        validate.ValidateInputs(_write(tmp_path, chat_rows(12)), io, get_settings()),
    )
    assert res.n_examples == 12 and 0 < res.max_example_tokens <= res.token_limit
    assert validate.ValidateResult.load(tmp_path / "out").total_tokens == res.total_tokens


def test_validate_names_the_over_long_line(home: Path, tmp_path: Path) -> None:
    rows = chat_rows(12)
    rows[4]["messages"][1]["content"] = "word " * 400
    io = StageIO(tmp_path / "out", stage="validate")
    with pytest.raises(InvalidFile) as err:
        validate.run(
            validate.ValidateConfig(model="tiny", max_tokens=200),
            validate.ValidateInputs(_write(tmp_path, rows), io, get_settings(), labels=("file-abc", "")),
        )
    assert err.value.line == 5 and "file-abc" in err.value.message and "200" in err.value.message


def test_validate_requires_the_minimum_number_of_examples(home: Path, tmp_path: Path) -> None:
    io = StageIO(tmp_path / "out", stage="validate")
    with pytest.raises(InvalidFile, match="at least 10"):
        validate.run(
            validate.ValidateConfig(model="tiny"),
            validate.ValidateInputs(_write(tmp_path, chat_rows(9)), io, get_settings()),
        )
