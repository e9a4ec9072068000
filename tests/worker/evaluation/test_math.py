import pytest
import torch

from worker.evaluation.math import asr, direction, margin, margin_ratio


def test_asr():
    assert asr([True, False, False, True]) == 0.5
    assert asr([]) == 0.0


def test_direction_and_margin_on_separable_clusters():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(50, 8, generator=g) * 0.1 + torch.tensor([2.0] + [0.0] * 7)
    b = torch.randn(50, 8, generator=g) * 0.1 - torch.tensor([2.0] + [0.0] * 7)
    r = direction(h, b)
    assert torch.isclose(r.norm(), torch.tensor(1.0, dtype=torch.float64))
    assert r[0] > 0.99
    m = margin(h, b, r)
    assert m == pytest.approx(4.0, abs=0.1)
    # a model that moved harmful prompts halfway toward the harmless cluster halves the margin
    h_tuned = h - torch.tensor([2.0] + [0.0] * 7)
    assert margin_ratio(margin(h_tuned, b, r), m) == pytest.approx(0.5, abs=0.05)


def test_direction_degenerate():
    x = torch.ones(3, 4)
    with pytest.raises(ValueError):
        direction(x, x)
    assert margin_ratio(1.0, 0.0) == 1.0
