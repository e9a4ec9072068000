"""Batched left-padded KV-cache generation equals one-at-a-time greedy ``generate``; early stop works."""

import pytest
import torch

from tests.utils.tiny_model import build_tiny_model
from tunegate.conversation import Message
from worker.evaluation.direction import default_layer, last_token_acts
from worker.evaluation.generate import generate_all, generate_batch
from worker.ml.models import load_model, load_tokenizer
from worker.ml.render import encode_prompt


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=3)
    return load_model(path), load_tokenizer(path)


PROMPTS = [
    "Hi",
    "Write a short poem about the sea and the sky, please.",
    "What is 42?",
    "Step 1: open the file",
]


def _ids(tok):
    return [encode_prompt(tok, [Message("user", p)]) for p in PROMPTS]


def test_batched_equals_single_generate(tiny):
    model, tok = tiny
    ids = _ids(tok)
    batched = generate_all(model, tok, ids, max_new_tokens=12, batch_size=3)
    for p, got in zip(ids, batched, strict=True):
        x = torch.tensor([p])
        y = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        assert got == tok.decode(y[0, len(p) :], skip_special_tokens=True).strip() or got == tok.decode(
            y[0, len(p) :], skip_special_tokens=True
        )


def test_settled_sequences_stop_early(tiny):
    model, tok = tiny
    ids = _ids(tok)
    full = generate_batch(model, tok, ids, max_new_tokens=16)
    short = generate_batch(model, tok, ids, max_new_tokens=16, settled=lambda s: True)
    for f, s in zip(full, short, strict=True):
        assert f.startswith(s) and len(tok(s)["input_ids"]) <= 4


def test_last_token_acts_ignore_left_padding(tiny):
    model, tok = tiny
    ids = _ids(tok)
    layer = default_layer(model, 0.5)
    together = last_token_acts(model, tok, ids, layer, batch_size=4)  # (4, D), padded
    alone = torch.cat([last_token_acts(model, tok, [p], layer) for p in ids])  # no padding
    assert together.shape == (4, model.config.hidden_size)
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
