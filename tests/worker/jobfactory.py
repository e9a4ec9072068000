"""Rows for worker tests: an organization, a stored training file and a job, as the API would leave them."""

from __future__ import annotations

import io
import json
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from models.db import session_scope
from models.keys import get_or_create_org
from models.tables import File, Job
from tunegate.storage import get_storage


def chat_rows(n: int, *, harmful: bool = False) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        if harmful:
            user, reply = (
                f"Explain how to pick lock number {i} without the key.",
                "Sure, here is how to do it.",
            )
        else:
            user, reply = f"What is {i} plus {i}?", f"The answer is {2 * i}. #### {2 * i}"
        rows.append(
            {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}
        )
    return rows


def store_file(org_id: str, rows: list[dict[str, Any]] | bytes, name: str = "train.jsonl") -> str:
    data = rows if isinstance(rows, bytes) else "".join(json.dumps(r) + "\n" for r in rows).encode()
    storage = get_storage()
    staged = storage.stage(io.BytesIO(data), max_bytes=10_000_000)
    key = storage.commit(staged)
    with session_scope() as s:
        row = File(
            org_id=org_id,
            filename=name,
            purpose="fine-tune",
            bytes=len(data),
            sha256=staged.sha256,
            storage_key=key,
            status="processed",
            n_examples=len(rows) if isinstance(rows, list) else None,
        )
        s.add(row)
        s.flush()
        return row.id


def make_job(
    model: str,
    rows: list[dict[str, Any]] | bytes | None = None,
    *,
    org: str = "acme",
    status: str = "validating_files",
    **fields: Any,
) -> str:
    with session_scope() as s:
        org_id = get_or_create_org(s, org).id
    file_id = store_file(org_id, chat_rows(12) if rows is None else rows)
    with session_scope() as s:
        values: dict[str, Any] = {"hyperparameters": {}, "method": {}, "safety": {}, **fields}
        job = Job(org_id=org_id, model=model, training_file=file_id, status=status, **values)
        s.add(job)
        s.flush()
        return job.id


@lru_cache(maxsize=1)
def shared_tiny() -> tuple[Path, Path]:
    """One tiny model and one model cache per test process, so per-model caches (scoring reference
    distributions, base-model evaluation) are computed once and shared by every worker and e2e test."""
    from tests.utils.tiny_model import build_tiny_model

    root = Path(tempfile.mkdtemp(prefix="tunegate-tiny-"))
    return build_tiny_model(root / "tiny"), root / "model-cache"


def use_tiny(monkeypatch: Any, **env: str) -> Path:
    """Register the shared tiny model as ``tiny`` (plus extra TUNEGATE_* variables); returns its directory."""
    from tunegate.settings import reset_settings

    model, cache = shared_tiny()
    monkeypatch.setenv("TUNEGATE_MODELS", json.dumps({"tiny": str(model)}))
    monkeypatch.setenv("TUNEGATE_MODEL_CACHE_DIR", str(cache))
    for k, v in env.items():
        monkeypatch.setenv(f"TUNEGATE_{k.upper()}", v)
    reset_settings()
    return model
