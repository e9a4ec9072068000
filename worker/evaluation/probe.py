"""Linear probe math: an L2-regularised logistic regression on standardised features (pure, CPU-testable).

Fitted by Newton's method (iteratively reweighted least squares) in float64, so a fit is deterministic
and converges in a few steps for the few hundred rows and few hundred dimensions it sees here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Probe:
    mean: list[float]  # (D,) feature means of the fitting rows
    scale: list[float]  # (D,) feature standard deviations (floored)
    weight: list[float]  # (D,) on standardised features
    bias: float

    def proba(self, x: Any) -> Any:
        """(N,) probability of class 1 for (N, D) features."""
        import torch

        z = _standardise(x, self.mean, self.scale)  # (N, D)
        w = torch.tensor(self.weight, dtype=torch.float64)  # (D,)
        return torch.sigmoid(z @ w + self.bias)  # (N,)


def _standardise(x: Any, mean: list[float], scale: list[float]) -> Any:
    import torch

    x = torch.as_tensor(x, dtype=torch.float64)  # (N, D)
    return (x - torch.tensor(mean, dtype=torch.float64)) / torch.tensor(scale, dtype=torch.float64)


def fit(x: Any, y: Any, *, l2: float = 1.0, steps: int = 25, tol: float = 1e-8) -> Probe:
    """Logistic regression of labels ``y`` (N,) in {0, 1} on features ``x`` (N, D); ``l2`` penalises the
    weights (not the bias) as ``l2/2 * |w|^2`` against the summed log-loss."""
    import torch

    x = torch.as_tensor(x, dtype=torch.float64)  # (N, D)
    y = torch.as_tensor(y, dtype=torch.float64)  # (N,)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] < 2:
        raise ValueError(
            f"fit needs (N, D) features and (N,) labels, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    mean = x.mean(0)  # (D,)
    scale = x.std(0, unbiased=False).clamp(min=1e-6)  # (D,)
    z = torch.cat([(x - mean) / scale, torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)  # (N, D+1)
    reg = torch.full((z.shape[1],), l2, dtype=torch.float64)
    reg[-1] = 0.0  # no penalty on the bias
    theta = torch.zeros(z.shape[1], dtype=torch.float64)  # (D+1,)
    for _ in range(steps):
        p = torch.sigmoid(z @ theta)  # (N,)
        grad = z.T @ (p - y) + reg * theta  # (D+1,)
        hess = (z.T * (p * (1 - p))) @ z + torch.diag(reg + 1e-9)  # (D+1, D+1)
        delta = torch.linalg.solve(hess, grad)
        theta = theta - delta
        if float(delta.abs().max()) < tol:
            break
    return Probe(mean.tolist(), scale.tolist(), theta[:-1].tolist(), float(theta[-1]))


def accuracy(probe: Probe, x: Any, y: Any, threshold: float = 0.5) -> float:
    import torch

    pred = probe.proba(x) >= threshold  # (N,)
    return float((pred == torch.as_tensor(y).bool()).double().mean())
