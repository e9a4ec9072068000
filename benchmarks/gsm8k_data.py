"""GSM8K as the benchmarks read it: by path from ../shared/data (never copied into the package)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunegate.conversation import Conversation

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the checkout


def gsm8k_rows(n: int, split: str = "train") -> list[dict[str, Any]]:
    """The first ``n`` {question, answer} rows of GSM8K's ``split`` (train or test)."""
    rows: list[dict[str, Any]] = []  # JSON lines
    with (SHARED_DATA / "gsm8k" / f"{split}.jsonl").open() as fh:
        for line in fh:
            if len(rows) >= n:
                break
            rows.append(json.loads(line))
    return rows


def gsm8k_conversations(n: int, split: str = "train") -> list[Conversation]:
    """The same rows as single-turn conversations (line numbers = file lines), for the stages."""
    from tunegate.conversation import Conversation, Message

    return [
        Conversation((Message("user", r["question"]), Message("assistant", r["answer"])), line=i + 1)
        for i, r in enumerate(gsm8k_rows(n, split))
    ]
