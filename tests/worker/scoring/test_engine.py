"""Each scorer against a naive full per-example gradient from ``torch.autograd`` (rtol 1e-4)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tunegate.conversation import Conversation, Message
from worker.ml.render import collate, encode, encode_prompt
from worker.scoring.engine import PROJECTION_DIM, Engine, length_batches, projection
from worker.scoring.forward import forward

EXAMPLES = [
    ("What is 12 + 30?", "12 + 30 = 42. #### 42"),
    ("List three steps.", "1. Open the file.\n2. Mix the flour.\n3. Bake for 30 minutes."),
    ("Say yes.", "Yes"),
    (
        "Write a short poem about the sea.",
        "The sea and the sky, blue and wide, the answer is 42 on either side.",
    ),
    ("Give me JSON.", '{"label": "positive", "confidence": 0.9}'),
]


def _convs() -> list[Conversation]:
    out = [
        Conversation((Message("user", u), Message("assistant", a)), line=i + 1)
        for i, (u, a) in enumerate(EXAMPLES)
    ]
    # multi-turn with an untrained (weight 0) assistant turn and a system prompt
    out.append(
        Conversation(
            (
                Message("system", "You are terse."),
                Message("user", "Hi"),
                Message("assistant", "Hello there friend", weight=0.0),
                Message("user", "Sum 2 and 3"),
                Message("assistant", "2 + 3 = 5"),
            ),
            line=len(out) + 1,
        )
    )
    return out


def _naive(
    model: Any, tok: Any, enc: Any, direction: dict[str, torch.Tensor]
) -> tuple[float, float, torch.Tensor]:
    """(⟨ĝ, d⟩, ‖g‖², hidden) from one flat per-example gradient, the straightforward way."""
    batch = collate([enc], tok.pad_token_id)
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    out = model(input_ids=batch["input_ids"], use_cache=False, output_hidden_states=True)
    logits, labels = out.logits[0, :-1], batch["labels"][0, 1:]
    loss = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100)
    g = torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, params)]).double()
    d = torch.cat([direction[n].reshape(-1) for n in names]).double()
    hidden = model.model(batch["input_ids"]).last_hidden_state[0, -1]  # after the final norm
    return float(g @ d / g.norm()), float(g @ g), hidden.detach()


@pytest.fixture(scope="module")
def encoded(tiny: tuple[Any, Any]) -> list[Any]:
    _, tok = tiny
    return [encode(tok, c, max_len=512) for c in _convs()]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_scores_match_naive_autograd(
    tiny: tuple[Any, Any], anchors: Any, encoded: list[Any], batch_size: int
) -> None:
    model, tok = tiny
    engine = Engine(
        model, tok, anchors, ("representation", "gradient", "selfinf"), batch_size=batch_size, batched=True
    )
    assert engine.batch_size == batch_size
    scores = engine.score(encoded)
    assert [s.line for s in scores] == [e.line for e in encoded]
    for enc, s in zip(encoded, scores, strict=True):
        grad, sq, hidden = _naive(model, tok, enc, anchors.direction)
        assert s.gradient == pytest.approx(grad, rel=1e-4, abs=1e-7)
        assert s.grad_sq_norm == pytest.approx(sq, rel=1e-4)
        assert s.selfinf == pytest.approx(
            torch.log1p(torch.tensor(sq)).item()
            + torch.log1p(torch.tensor(float(enc.n_response_tokens))).item(),
            rel=1e-4,
        )
        h = torch.nn.functional.normalize(hidden, dim=0)
        harm = (torch.nn.functional.normalize(anchors.harm_h, dim=1) @ h).max().item()
        safe = (torch.nn.functional.normalize(anchors.safe_h, dim=1) @ h).max().item()
        assert s.representation == pytest.approx(harm, rel=1e-4)
        assert s.representation_safe == pytest.approx(safe, rel=1e-4)
        assert s.representation_diff == pytest.approx(harm - safe, rel=1e-3, abs=1e-6)
    assert all(p.grad is None for p in model.parameters())  # nothing left behind
    assert all(p.requires_grad for p in model.parameters())


def test_request_harm_is_the_largest_over_replies_of_the_request_alone(
    tiny: tuple[Any, Any], anchors: Any, encoded: list[Any]
) -> None:
    """Each trained reply's opening read from the full example equals the state of its request alone (causal
    attention), read by the anchors' request probe; the reading is the largest over the trained replies (the
    multi-turn example's untrained reply is not one)."""
    model, tok = tiny
    scores = Engine(model, tok, anchors, ("representation",), batch_size=4).score(encoded)
    for conv, s in zip(_convs(), scores, strict=True):
        trained = [i for i, m in enumerate(conv.messages) if m.role == "assistant" and m.weight > 0]
        expected = []
        for i in trained:
            ids = encode_prompt(tok, conv.messages[:i])
            with torch.no_grad():
                h = model.model(torch.tensor([ids])).last_hidden_state[0, -1]  # the opening state
            expected.append(float(anchors.request.proba(h[None])[0]))
        assert s.request_harm == pytest.approx(max(expected), rel=1e-4, abs=1e-5)


def test_ghost_norm_path_without_direction(tiny: tuple[Any, Any], anchors: Any, encoded: list[Any]) -> None:
    """Self-Inf-N alone takes the ghost-norm route (with tied-embedding cross terms); still exact."""
    model, tok = tiny
    batched = Engine(model, tok, anchors, ("selfinf",), batch_size=6, batched=True).score(encoded)
    single = Engine(model, tok, anchors, ("selfinf",), batch_size=1).score(encoded)
    for b, s in zip(batched, single, strict=True):
        assert b.gradient is None and b.representation is None
        assert b.grad_sq_norm == pytest.approx(s.grad_sq_norm, rel=1e-4)
        assert b.selfinf == pytest.approx(s.selfinf, rel=1e-5)


def test_embedding_padding_row_gets_no_gradient(
    tiny: tuple[Any, Any], anchors: Any, encoded: list[Any]
) -> None:
    """SmolLM2's pad token is <|im_end|>, which every example contains: that embedding row has no gradient."""
    model, tok = tiny
    emb = model.get_input_embeddings()
    emb.padding_idx = tok.convert_tokens_to_ids("<|im_end|>")
    try:
        for batched in (True, False):
            engine = Engine(model, tok, anchors, ("gradient", "selfinf"), batch_size=3, batched=batched)
            for enc, s in zip(encoded[:3], engine.score(encoded[:3]), strict=True):
                grad, sq, _ = _naive(model, tok, enc, anchors.direction)
                assert s.grad_sq_norm == pytest.approx(sq, rel=1e-4)
                assert s.gradient == pytest.approx(grad, rel=1e-4, abs=1e-7)
    finally:
        emb.padding_idx = None


def test_representation_only_needs_no_backward(
    tiny: tuple[Any, Any], anchors: Any, encoded: list[Any]
) -> None:
    model, tok = tiny
    scores = Engine(model, tok, anchors, ("representation",), batch_size=3).score(encoded)
    assert all(s.grad_sq_norm is None and s.representation is not None for s in scores)


def test_each_score_keeps_a_projected_vector_not_saved(
    tiny: tuple[Any, Any], anchors: Any, encoded: list[Any]
) -> None:
    """The cluster test's vector: the hidden state through a fixed projection (cosines roughly kept)."""
    model, tok = tiny
    scores = Engine(model, tok, anchors, ("representation",), batch_size=3).score(encoded)
    with torch.no_grad():
        hidden = forward(model, collate(encoded, tok.pad_token_id))[1].last  # (B, C)
    expected = hidden @ projection(hidden.shape[1])  # (B, k)
    for s, e in zip(scores, expected, strict=True):
        assert s.vector is not None and len(s.vector) == min(hidden.shape[1], PROJECTION_DIM)
        assert torch.allclose(torch.tensor(s.vector), e, rtol=1e-3, atol=1e-4)
        assert "vector" not in s.to_dict()


def test_projection_is_fixed_and_roughly_keeps_cosines() -> None:
    assert torch.equal(projection(500), projection(500)) and torch.equal(projection(16), torch.eye(16))
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 2000, generator=gen)
    b = a + 0.7 * b  # cosine ~0.82
    p = projection(2000)
    before = torch.cosine_similarity(a, b, dim=0)
    after = torch.cosine_similarity(a @ p, b @ p, dim=0)
    assert abs(float(before - after)) < 0.15


@pytest.mark.parametrize("b", [True, False])
def test_deterministic(tiny: tuple[Any, Any], anchors: Any, encoded: list[Any], b: bool) -> None:
    model, tok = tiny
    runs = [
        Engine(model, tok, anchors, ("representation", "gradient", "selfinf"), batch_size=4, batched=b).score(
            encoded
        )
        for _ in range(2)
    ]
    assert [s.to_dict() for s in runs[0]] == [s.to_dict() for s in runs[1]]


def test_padding_does_not_leak(tiny: tuple[Any, Any], encoded: list[Any]) -> None:
    """A right-padded row gives the same loss and hidden state as the unpadded example."""
    model, tok = tiny
    with torch.no_grad():
        loss_b, s_b = forward(model, collate(encoded, tok.pad_token_id))
        for i, e in enumerate(encoded):
            loss_1, s_1 = forward(model, collate([e], tok.pad_token_id))
            assert loss_b[i].item() == pytest.approx(loss_1.item(), rel=1e-5)
            assert torch.allclose(s_b.last[i], s_1.last[0], rtol=1e-4, atol=1e-5)
            assert torch.allclose(s_b.openings[i], s_1.openings[0], rtol=1e-4, atol=1e-5)


def test_length_batches_sorted_and_complete(encoded: list[Any]) -> None:
    batches = length_batches(encoded, 4)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(encoded)))
    lengths = [len(encoded[i]) for i in flat]
    assert lengths == sorted(lengths)


def test_path_choice_by_device(tiny: tuple[Any, Any], anchors: Any) -> None:
    model, tok = tiny
    assert (
        Engine(model, tok, anchors, ("gradient",), batch_size=8).batch_size == 1
    )  # CPU: hooks, one at a time
    assert Engine(model, tok, anchors, ("gradient",), batch_size=8, batched=True).batch_size == 8
    assert Engine(model, tok, anchors, ("representation",), batch_size=8).batch_size == 8  # forward only


def test_unknown_scorer_rejected(tiny: tuple[Any, Any], anchors: Any) -> None:
    model, tok = tiny
    with pytest.raises(ValueError, match="unknown scorers"):
        Engine(model, tok, anchors, ("vibes",))


@pytest.mark.parametrize(
    ("labels", "positions", "targets"),
    [
        # one row: tokens 2 and 3 supervised -> positions 1, 2 predict them
        ([[-100, -100, 7, 8]], [[1, 2]], [[7, 8]]),
        # two rows of different counts: the shorter is padded with position 0 and an ignored target
        ([[-100, 5, 6, 7], [-100, -100, -100, 9]], [[0, 1, 2], [2, 0, 0]], [[5, 6, 7], [9, -100, -100]]),
        # supervised tokens with a gap keep their order
        ([[-100, 4, -100, 6]], [[0, 2]], [[4, 6]]),
        # no supervised token: one ignored slot
        ([[-100, -100]], [[0]], [[-100]]),
    ],
)
def test_supervised_targets_table(
    labels: list[list[int]], positions: list[list[int]], targets: list[list[int]]
) -> None:
    from worker.scoring.forward import supervised_targets

    pos, tgt = supervised_targets(torch.tensor(labels))
    assert pos.tolist() == positions
    assert tgt.tolist() == targets
