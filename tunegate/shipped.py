"""The data files the project wrote and ships in ``tunegate/data/`` (package data), and their reader.

align/      the aligned base's refusal set and self-distillation prompts
anchors/    the scorers' harmful and safe anchors
eval/       the project's harmful and borderline evaluation prompts
judge/      labelled (request, reply) rows the probe judge is fitted on
pool/       harmful requests and refusal parts for format-mimicking safety examples
reference/  the benign reference corpus the scorers' percentiles are taken against
"""

from __future__ import annotations

import json
from pathlib import Path

from tunegate.errors import InvalidFile

DATA_DIR = Path(__file__).resolve().parent / "data"


def data_path(*parts: str) -> Path:
    return DATA_DIR.joinpath(*parts)


def read_jsonl(path: Path) -> list[dict[str, object]]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InvalidFile(f"not valid JSON ({exc.msg})", line=i, filename=str(path)) from exc
    return rows
