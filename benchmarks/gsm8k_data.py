"""GSM8K as the benchmarks read it: by path from ../shared/data (never copied into the package)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from tunegate.conversation import Conversation

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the checkout


class Gsm8kRow(TypedDict):
    """One GSM8K line: a word problem and its worked answer (ending ``#### <number>``)."""

    question: str
    answer: str


def gsm8k_rows(n: int, split: str = "train") -> list[Gsm8kRow]:
    """The first ``n`` {question, answer} rows of GSM8K's ``split`` (train or test)."""
    rows: list[Gsm8kRow] = []
    path = SHARED_DATA / "gsm8k" / f"{split}.jsonl"
    with path.open() as fh:
        for i, line in enumerate(fh):
            if len(rows) >= n:
                break
            data = json.loads(line)
            question = data.get("question") if isinstance(data, dict) else None
            answer = data.get("answer") if isinstance(data, dict) else None
            if not isinstance(question, str) or not isinstance(answer, str):
                raise ValueError(f"{path} line {i + 1} is not a GSM8K row (a question and an answer string)")
            rows.append({"question": question, "answer": answer})
    return rows


def gsm8k_conversations(n: int, split: str = "train") -> list[Conversation]:
    """The same rows as single-turn conversations (line numbers = file lines), for the stages."""
    from tunegate.conversation import Conversation, Message

    return [
        Conversation((Message("user", r["question"]), Message("assistant", r["answer"])), line=i + 1)
        for i, r in enumerate(gsm8k_rows(n, split))
    ]
