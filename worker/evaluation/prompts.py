"""Prompt sets: the project's own data files and loaders for the standard benchmark formats.

Project sets live in ``tunegate/data/`` (package data). Standard files are read by path:

- AdvBench CSV (column ``goal``), HarmBench-style CSV (column ``Behavior``, optional ``SemanticCategory``),
  JailbreakBench CSV (``Goal``/``Category``), XSTest CSV (``prompt``/``type``/``label``);
- JSONL with one object per line holding ``prompt`` (or ``goal``/``behavior``/``text``) and an optional
  ``category``; a bare JSON string per line is also accepted.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from tunegate.errors import InvalidFile
from tunegate.shipped import data_path

PROMPT_KEYS = ("prompt", "goal", "Goal", "Behavior", "behavior", "text", "instruction")
CATEGORY_KEYS = ("category", "Category", "SemanticCategory", "type")


@dataclass(frozen=True)
class Prompt:
    text: str
    category: str = "uncategorized"


def _from_row(row: dict[str, object], line: int, path: Path) -> Prompt:
    for key in PROMPT_KEYS:
        val = row.get(key)
        if isinstance(val, str) and val.strip():
            cat = next((str(row[k]) for k in CATEGORY_KEYS if isinstance(row.get(k), str) and row[k]), None)
            return Prompt(val.strip(), cat or "uncategorized")
    raise InvalidFile(
        f"no prompt column (expected one of {', '.join(PROMPT_KEYS)})", line=line, filename=str(path)
    )


def load_prompts(path: str | Path, *, safe_only: bool = False) -> list[Prompt]:
    """Load a standard prompt file (CSV or JSONL). ``safe_only`` keeps XSTest rows labelled ``safe``."""
    path = Path(path)
    if not path.is_file():
        raise InvalidFile("prompt file not found", filename=str(path))
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as fh:
            rows: list[dict[str, object]] = list(csv.DictReader(fh))
    else:
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InvalidFile(f"not valid JSON ({exc.msg})", line=i, filename=str(path)) from exc
                rows.append({"prompt": obj} if isinstance(obj, str) else obj)
    if safe_only:
        rows = [r for r in rows if r.get("label", "safe") == "safe"]
    prompts = [_from_row(r, i + 1, path) for i, r in enumerate(rows)]
    if not prompts:
        raise InvalidFile("prompt file has no prompts", filename=str(path))
    return prompts


def project_harmful() -> list[Prompt]:
    """The project's harmful evaluation set (several categories)."""
    return load_prompts(data_path("eval", "harmful.jsonl"))


def project_borderline() -> list[Prompt]:
    """The project's XSTest-style benign borderline prompts (over-refusal)."""
    return load_prompts(data_path("eval", "borderline.jsonl"))


def prompts_hash(prompts: list[Prompt]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(f"{p.category}\x1f{p.text}\x1e".encode())
    return h.hexdigest()[:16]


def normalize(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def near_duplicates(a: list[str], b: list[str], *, threshold: float = 0.7) -> list[tuple[str, str]]:
    """Pairs (x in a, y in b) that are equal after normalisation or share >= threshold of their word sets."""
    bsets = [(y, set(normalize(y).split())) for y in b]
    out = []
    for x in a:
        xs = set(normalize(x).split())
        for y, ys in bsets:
            if xs and ys and (normalize(x) == normalize(y) or len(xs & ys) / len(xs | ys) >= threshold):
                out.append((x, y))
    return out
