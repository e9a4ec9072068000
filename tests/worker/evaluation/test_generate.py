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


def test_rows_leaving_the_batch_do_not_change_the_others(tmp_path):
    """Rows that settle leave the batch (their KV cache rows dropped); the others decode exactly as before."""
    path = build_tiny_model(tmp_path / "m", seed=3)
    model, tok = load_model(path), load_tokenizer(path)
    torch.manual_seed(0)
    with torch.no_grad():  # noisy weights: every prompt gets its own continuation
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    ids = _ids(tok)
    full = generate_batch(model, tok, ids, max_new_tokens=16)
    assert len(set(full)) == len(full)

    calls = iter(range(1000))
    settle_first_check = {0, 2}  # the first check sees the rows in order: rows 0 and 2 settle there

    def settled(text: str) -> bool:
        return next(calls) in settle_first_check

    steps: list[int] = []
    part = generate_batch(model, tok, ids, max_new_tokens=16, settled=settled, on_tokens=steps.append)
    assert part[1] == full[1] and part[3] == full[3]  # decoded on at batch 2: unchanged
    assert part[0] != full[0] and full[0].startswith(part[0]) and full[2].startswith(part[2])
    assert steps == [4, 8, 12, 16]


def test_refilled_rows_decode_as_if_alone(tmp_path):
    """Continuous batching: prompts that join a running batch (their cache rows left-padded to its length,
    or its rows padded to theirs) decode exactly as they do alone; settled rows free their slots."""
    path = build_tiny_model(tmp_path / "m", seed=5)
    model, tok = load_model(path), load_tokenizer(path)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    prompts = PROMPTS + ["Tell me about rivers", "x", "A much longer request that goes on and on for a while"]
    ids = [encode_prompt(tok, [Message("user", p)]) for p in prompts]
    alone = [generate_batch(model, tok, [p], max_new_tokens=10)[0] for p in ids]

    def settled(text: str) -> bool:  # some rows stop after 4 tokens, freeing their slots mid-flight
        return len(text) % 3 == 0

    alone_settled = [generate_batch(model, tok, [p], max_new_tokens=10, settled=settled)[0] for p in ids]
    for refill in (True, False):
        assert generate_all(model, tok, ids, max_new_tokens=10, batch_size=2, refill=refill) == alone
        progress: list[float] = []
        got = generate_all(
            model,
            tok,
            ids,
            max_new_tokens=10,
            batch_size=4,
            settled=settled,
            refill=refill,
            on_progress=progress.append,
        )
        assert got == alone_settled
        assert progress == sorted(progress) and progress[-1] == 1.0
