"""The probe's logistic regression: separable data is fitted exactly, fits are deterministic."""

import pytest
import torch

from worker.evaluation.probe import Probe, accuracy, fit


def _blobs(n: int = 40, d: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 3.0 * y[:, None] * torch.ones(d)
    return x * 10 + 5, y.double()  # off-scale features: standardisation must handle them


def test_separable_data_is_fitted_and_generalises() -> None:
    x, y = _blobs()
    probe = fit(x, y)
    assert accuracy(probe, x, y) == 1.0
    xt, yt = _blobs(seed=1)
    assert accuracy(probe, xt, yt) >= 0.95
    p = probe.proba(x)
    assert p.shape == (40,) and bool(((p > 0.5) == y.bool()).all())


def test_fit_is_deterministic_and_l2_shrinks_weights() -> None:
    x, y = _blobs()
    a, b = fit(x, y), fit(x.clone(), y.clone())
    assert a == b
    strong = fit(x, y, l2=100.0)
    assert sum(w * w for w in strong.weight) < sum(w * w for w in a.weight)


def test_unlearnable_labels_give_chance_and_a_calibrated_bias() -> None:
    x = torch.zeros(10, 3, dtype=torch.float64)
    y = torch.tensor([1.0] * 3 + [0.0] * 7)
    probe = fit(x, y)
    assert probe.proba(x)[0].item() == pytest.approx(0.3, abs=1e-6)  # the base rate


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="features"):
        fit(torch.zeros(4), torch.zeros(4))
    assert isinstance(fit(torch.eye(2), torch.tensor([0.0, 1.0])), Probe)
