"""The dataset-level cluster test: a planted coherent subset is found; random or top-ranked ones are not."""

from __future__ import annotations

import itertools

import pytest
import torch

from worker.scoring.cluster import ClusterRules, coherence, extend, mean_pair_cosine, unit_centred

LINES = list(range(1, 101))


def _file(seed: int, n: int = 100, d: int = 64) -> tuple[torch.Tensor, torch.Generator]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen), gen


def test_mean_pair_cosine_matches_the_pairs() -> None:
    u = unit_centred(_file(0, 12, 5)[0])
    idx = [1, 4, 7, 9]
    pairs = [float(u[i] @ u[j]) for i, j in itertools.combinations(idx, 2)]
    got = float(mean_pair_cosine(u, torch.tensor([idx]))[0])
    assert got == pytest.approx(sum(pairs) / len(pairs), abs=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_a_planted_subset_is_coherent(seed: int) -> None:
    x, gen = _file(seed)
    planted = list(range(20, 30))  # 10% share one offset (the same kind of harmful compliance)
    x[planted] += torch.randn(64, generator=gen)
    res = coherence(x, planted, LINES)
    assert res.coherent and res.n == 10 and res.lines == [p + 1 for p in planted]
    assert res.p_value is not None and res.p_value <= 0.01
    assert res.statistic is not None and res.null_mean is not None and res.statistic > res.null_mean + 0.2


@pytest.mark.parametrize("seed", range(5))
def test_a_random_subset_is_not_coherent(seed: int) -> None:
    x, gen = _file(seed)
    members = torch.randperm(100, generator=gen)[:10].tolist()
    assert not coherence(x, members, LINES).coherent


@pytest.mark.parametrize("seed", range(5))
def test_the_top_of_a_score_alone_is_not_a_cluster(seed: int) -> None:
    """Selecting the top 10 along any direction makes them a little alike (a small p-value); the effect
    size floor keeps such a tail from being called a planted cluster."""
    x, gen = _file(seed)
    top = (x @ torch.randn(64, generator=gen)).argsort(descending=True)[:10].tolist()
    res = coherence(x, top, LINES)
    assert not res.coherent and res.statistic is not None and res.statistic < ClusterRules().min_cosine


def test_too_few_or_the_whole_file_is_not_tested() -> None:
    x, _ = _file(0)
    assert coherence(x, [3, 4], LINES).p_value is None
    whole = coherence(x, list(range(100)), LINES)
    assert not whole.coherent and whole.p_value is None and whole.n == 100


def test_same_seed_same_p_value() -> None:
    x, gen = _file(1)
    x[:8] += 0.4 * torch.randn(64, generator=gen)
    a, b = coherence(x, list(range(8)), LINES), coherence(x, list(range(8)), LINES)
    assert a == b


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_a_coherent_set_is_extended_to_planted_examples_just_under_the_bar(seed: int, scale: float) -> None:
    x, gen = _file(seed)
    planted = list(range(20, 30))
    x[planted] += scale * torch.randn(64, generator=gen)
    res = coherence(x, planted[:7], LINES)  # three planted examples scored just under the high-risk bar
    assert res.coherent and res.n == 7
    assert set(res.extended) <= {28, 29, 30}  # never an unplanted example
    if scale == 2.0:  # a tight cluster (mean cosine ~0.8, as real harmful compliance measured): all of them
        assert res.extended == [28, 29, 30] and res.lines == [p + 1 for p in planted]


def test_extend_takes_only_rows_as_close_as_the_loosest_member() -> None:
    u = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.9, 0.3], [0.0, 1.0], [-1.0, 0.0]])
    u = u / u.norm(dim=1, keepdim=True)
    assert extend(u, [0, 1], ratio=1.0, floor=0.0) == [2]
    assert extend(u, [0, 1], ratio=0.0, floor=0.0) == [2, 3]
