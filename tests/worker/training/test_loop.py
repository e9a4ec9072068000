"""The training loop's teacher pass: computed for the anchor rows only, equal to the full-batch pass there."""

from __future__ import annotations

from pathlib import Path

import torch

from tunegate.conversation import Conversation, Message
from worker.ml.models import load_model, load_tokenizer
from worker.ml.render import collate, encode
from worker.training.loop import _base_logits
from worker.training.lora import attach_lora


def test_teacher_logits_only_for_anchor_rows(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(tiny_model_dir)
    model = attach_lora(
        load_model(tiny_model_dir), r=2, alpha=4, dropout=0.0, target_modules="all-linear", seed=0
    )
    convs = [
        Conversation((Message("user", f"question {i} " * (i + 1)), Message("assistant", f"answer {i}")))
        for i in range(4)
    ]
    batch = collate([encode(tok, c, max_len=256) for c in convs], int(tok.pad_token_id), "cpu")
    anchor = torch.tensor([True, False, True, False])
    full = _base_logits(model, batch, torch.ones(4, dtype=torch.bool))  # (4, T, V)
    part = _base_logits(model, batch, anchor)  # (4, T, V), zeros in rows 1 and 3
    assert part.shape == full.shape
    assert torch.allclose(part[anchor], full[anchor], atol=1e-5)
    assert not part[~anchor].any()
