"""Cache of base-model evaluation results, keyed by (model fingerprint, prompt sets, template, settings).

The base model's answers do not change between jobs on the same base, template and judge settings, so
each job only generates with its fine-tuned model. Entries are JSON files written atomically, each read back
by its record's reader: an entry that is missing, unreadable or of a shape this version does not read is a
miss (computed afresh and stored again).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tunegate.artifacts import atomic_write_json, read_json
from tunegate.records import RecordError

T = TypeVar("T")


def cache_key(**parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def load(cache_dir: Path, key: str, read: Callable[[object], T]) -> T | None:
    """The entry ``key`` as ``read`` (a record's ``from_dict``) reads its JSON (None: a miss)."""
    path = cache_dir / f"{key}.json"
    if not path.is_file():
        return None
    try:
        return read(read_json(path))
    except (OSError, json.JSONDecodeError, RecordError):
        return None


def store(cache_dir: Path, key: str, entry: object) -> None:
    """Write ``entry`` (a record's JSON object) as the entry ``key``."""
    atomic_write_json(cache_dir / f"{key}.json", entry)
