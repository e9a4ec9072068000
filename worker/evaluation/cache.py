"""Cache of base-model evaluation results, keyed by (model fingerprint, prompt sets, template, settings).

The base model's answers do not change between jobs on the same base, template and judge settings, so
each job only generates with its fine-tuned model. Entries are JSON files written atomically.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tunegate.artifacts import atomic_write_json, read_json


def cache_key(**parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def load(cache_dir: Path, key: str) -> dict[str, Any] | None:
    path = cache_dir / f"{key}.json"
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def store(cache_dir: Path, key: str, value: dict[str, Any]) -> None:
    atomic_write_json(cache_dir / f"{key}.json", value)
