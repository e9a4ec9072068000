"""The pure math core against explicit computations."""

from __future__ import annotations

import math

import pytest
import torch

from worker.scoring import math as sm
from worker.scoring.pieces import LowRank, Vec, materialize, stats


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


def test_ghost_identities_match_the_formed_gradient() -> None:
    a, b, d = _rand(7, 5, seed=1), _rand(7, 3, seed=2), _rand(3, 5, seed=3)
    g = b.T @ a  # (3, 5)
    assert torch.allclose(sm.ghost_dot(a, b, d), (g * d).sum(), rtol=1e-5)
    assert torch.allclose(sm.ghost_sq_norm(a, b), g.pow(2).sum(), rtol=1e-5)
    dot, sq = sm.direct_stats(a, b, d)
    assert torch.allclose(dot, (g * d).sum(), rtol=1e-5) and torch.allclose(sq, g.pow(2).sum(), rtol=1e-5)


def test_tied_pieces_include_cross_terms() -> None:
    vocab, hid, t = 11, 4, 6
    ids = torch.tensor([1, 3, 3, 0, 10, 1])
    emb = LowRank(a=_rand(t, hid, seed=4), ids=ids)  # embedding rows
    head = LowRank(a=_rand(t, hid, seed=5), b=_rand(t, vocab, seed=6))  # lm_head sharing the weight
    shape = torch.Size([vocab, hid])
    g = materialize(emb, shape) + materialize(head, shape)
    d = _rand(vocab, hid, seed=7)
    dot, sq = stats([emb, head], shape, d)
    assert torch.allclose(dot, (g * d).sum(), rtol=1e-5) and torch.allclose(sq, g.pow(2).sum(), rtol=1e-5)
    _, sq_ghost = stats([emb, head], shape, None)  # no direction: the ghost form with 2x2 cross terms
    assert torch.allclose(sq_ghost, g.pow(2).sum(), rtol=1e-5)


def test_vec_pieces_sum() -> None:
    v1, v2, d = _rand(5, seed=8), _rand(5, seed=9), _rand(5, seed=10)
    dot, sq = stats([Vec(v1), Vec(v2)], torch.Size([5]), d)
    assert torch.allclose(dot, ((v1 + v2) * d).sum()) and torch.allclose(sq, (v1 + v2).pow(2).sum())


def test_prefer_ghost_cost_model() -> None:
    assert sm.prefer_ghost(10, 576, 1536)
    assert not sm.prefer_ghost(2000, 64, 64)


def test_scalar_formulas() -> None:
    assert sm.self_inf_n(math.e - 1, 0) == pytest.approx(1.0)
    assert sm.self_inf_n(3.0, 9) == pytest.approx(math.log(4) + math.log(10))
    assert sm.unit_direction(3.0, 4.0) == pytest.approx(1.5)
    assert sm.unit_direction(1.0, 0.0) == 0.0
    d = sm.bidirectional(torch.tensor([1.0, 2.0]), [torch.tensor([0.5, 0.5]), torch.tensor([0.25, 1.0])])
    assert d.tolist() == [0.25, 0.5]


def test_max_cosine() -> None:
    h = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    anchors = torch.tensor([[0.0, 2.0], [3.0, 0.0]])
    out = sm.max_cosine(h, anchors)
    assert out.tolist() == pytest.approx([1.0, 1 / math.sqrt(2)])


def test_percentile_quantile_spearman() -> None:
    ref = [1.0, 2.0, 3.0, 4.0]
    assert sm.percentile_of(2.5, ref) == 50.0
    assert sm.percentile_of(9.0, ref) == 100.0
    assert sm.percentile_of(0.0, ref) == 0.0
    assert sm.quantile(ref, 0.5) == 2.5
    assert sm.quantile(ref, 1.0) == 4.0
    assert sm.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert sm.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert sm.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(
        4.5 / math.sqrt(22.5)
    )  # average ranks for ties
    assert math.isnan(sm.spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        sm.quantile([], 0.5)
