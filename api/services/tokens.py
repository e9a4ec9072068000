"""Approximate example length in tokens at file-processing time, without torch.

With a ``tokenizer.json`` for the default base model (a local HF directory, or the embedded model once
prepared) we count with the ``tokenizers`` library. Otherwise we estimate one token per 4 UTF-8 bytes, which
undercounts for most text: processing then rejects only examples that are clearly too long, and the worker's
validate stage repeats the check with the real tokenizer and chat template.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegate.conversation import Conversation
from tunegate.settings import Settings
from tunegate.unicode import replaced

log = logging.getLogger(__name__)

PER_MESSAGE_OVERHEAD = 4  # role markers and separators of a chat template
BYTES_PER_TOKEN = 4


@dataclass
class TokenCounter:
    limit: int
    tokenizer: Any = None  # tokenizers.Tokenizer | None

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None

    def _tokens(self, text: str) -> int:
        # A lone surrogate (refused at upload, but a file stored before that check may hold one) cannot be
        # encoded as UTF-8: it counts as the replacement character, so counting never fails on the text.
        text = replaced(text)
        if self.tokenizer is not None:
            return len(self.tokenizer.encode(text, add_special_tokens=False).ids)
        return -(-len(text.encode("utf-8")) // BYTES_PER_TOKEN)

    def count(self, conv: Conversation) -> int:
        """Tokens of every turn (tool calls included) and of the declared tools, plus template overhead."""
        total = 2 + (self._tokens(json.dumps(conv.tools)) + PER_MESSAGE_OVERHEAD if conv.tools else 0)
        for m in conv.messages:
            total += self._tokens(m.text) + PER_MESSAGE_OVERHEAD
        return total


def _model_dir(model: str, settings: Settings) -> Path | None:
    source = settings.models.get(model)
    if source is None:
        return None
    if source.startswith("embedded:"):
        return settings.models_path / source.removeprefix("embedded:")
    p = Path(source).expanduser()
    return p if p.is_dir() else None


def _context_length(model_dir: Path) -> int | None:
    cfg = model_dir / "config.json"
    if not cfg.is_file():
        return None
    data = json.loads(cfg.read_text(encoding="utf-8"))
    value = data.get("max_position_embeddings") or data.get("n_positions")
    return int(value) if value else None


def counter_for(model: str, settings: Settings) -> TokenCounter:
    """The best available counter for ``model``; the limit is min(max_example_tokens, model context)."""
    limit = settings.max_example_tokens
    model_dir = _model_dir(model, settings)
    if model_dir is None:
        return TokenCounter(limit=limit)
    ctx = _context_length(model_dir)
    if ctx:
        limit = min(limit, ctx)
    tok_file = model_dir / "tokenizer.json"
    if not tok_file.is_file():
        return TokenCounter(limit=limit)
    from tokenizers import Tokenizer

    return TokenCounter(limit=limit, tokenizer=Tokenizer.from_file(str(tok_file)))
