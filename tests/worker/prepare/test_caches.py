"""The per-base caches can be built ahead of the jobs; a job then finds them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.worker.jobfactory import use_tiny
from tunegate.settings import get_settings
from worker.ml.models import resolve_model
from worker.prepare import caches
from worker.prepare.shipped_caches import layers


def test_warm_scoring_cache_then_ready(
    tunegate_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_tiny(monkeypatch, model_cache_dir=str(tmp_path / "models"))
    settings = get_settings()
    assert not caches.scoring_cache_ready("tiny", settings)
    seen: list[float] = []
    caches.warm_scoring_cache("tiny", settings, lambda f, m: seen.append(f))
    assert caches.scoring_cache_ready("tiny", settings)
    assert seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)


def test_warm_base_eval_fills_the_evaluate_cache(
    tunegate_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    small = '{"evaluate": {"max_new_tokens": 4, "borderline_max_new_tokens": 2, "n_direction": 4}}'
    use_tiny(monkeypatch, eval_cache_dir=str(tmp_path / "eval-cache"), stage_overrides=small)
    settings = get_settings()
    assert not caches.base_eval_cached("tiny", settings)
    caches.warm_base_eval("tiny", settings)
    assert caches.base_eval_cached("tiny", settings)
    # the entries named ahead (what a shipped base ships, what warm_all skips) are the ones the run wrote
    resolved = resolve_model("tiny", settings)
    named = caches.base_eval_entries("tiny", settings, resolved.fingerprint, layers(resolved.path))
    written = {p.relative_to(tmp_path / "eval-cache") for p in (tmp_path / "eval-cache").rglob("*.json")}
    assert written == set(named) and len(named) == 2


def test_warm_contrast_answers_fills_the_cache_the_stage_reads(
    tunegate_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import json

    from worker.mitigation.contrast import base_cache_dir, cache_file, pool

    small = '{"mitigate": {"contrast_max_new_tokens": 3, "contrast_batch_size": 32}}'
    use_tiny(monkeypatch, model_cache_dir=str(tmp_path / "models"), stage_overrides=small)
    settings = get_settings()
    seen: list[float] = []
    assert not cache_file(base_cache_dir("tiny", settings), 3).is_file()
    path = caches.warm_contrast_answers("tiny", settings, lambda f, m: seen.append(f))
    assert path == cache_file(base_cache_dir("tiny", settings), 3)
    assert set(json.loads(path.read_text())) == {p["prompt"] for p in pool()}  # the whole pool
    assert seen[-1] == 1.0 and all(0.0 <= f <= 1.0 for f in seen)


def test_warm_all_in_two_processes_gives_what_one_process_computes(
    tunegate_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Anchors and the base evaluation side by side, then the reference corpus in two shares (spawned
    processes, one torch thread each): the same cached distributions as the in-process path."""
    import json

    from worker.prepare import parallel

    small = '{"evaluate": {"max_new_tokens": 4, "borderline_max_new_tokens": 2, "n_direction": 4}}'
    use_tiny(
        monkeypatch,
        model_cache_dir=str(tmp_path / "models"),
        eval_cache_dir=str(tmp_path / "eval-cache"),
        stage_overrides=small,
    )
    monkeypatch.setattr(parallel, "available_cpus", lambda: 2)
    settings = get_settings()
    seen: list[float] = []
    caches.warm_all("tiny", settings, lambda f, m: seen.append(f))
    assert caches.scoring_cache_ready("tiny", settings)
    assert list((tmp_path / "eval-cache").glob("*.json"))
    anchors_file, ref_file = caches._scoring_paths("tiny", settings)
    two = json.loads(ref_file.read_text())["scores"]
    assert len(two["selfinf"]) == 250
    # the anchors' passes and the request probe were two pieces, joined here
    two_anchors = torch.load(anchors_file, weights_only=True)
    ref_file.unlink()
    anchors_file.unlink()
    caches.warm_scoring_cache("tiny", settings)  # in this process, anchors and all
    one = json.loads(ref_file.read_text())["scores"]
    for scorer, values in one.items():
        assert two[scorer] == pytest.approx(values, rel=1e-4, abs=1e-6), scorer
    one_anchors = torch.load(anchors_file, weights_only=True)
    for k in ("harm_h", "safe_h"):
        assert torch.allclose(two_anchors[k], one_anchors[k], rtol=1e-4, atol=1e-5), k
    for name, d in one_anchors["direction"].items():
        assert torch.allclose(two_anchors["direction"][name], d, rtol=1e-3, atol=1e-6), name
    for k, v in one_anchors["request_probe"].items():
        assert torch.allclose(two_anchors["request_probe"][k], v, rtol=1e-3, atol=1e-5), k
    assert seen[-1] == 1.0 and seen == sorted(seen)


@pytest.mark.parametrize(
    ("n", "processes", "want"),
    [
        (120, 1, [(0, 120)]),  # one process: the passes whole, then the probe
        (120, 2, [(0, 97), (97, 120)]),  # 2.1 + 1.3 over 2 cores: 1.7 each; the probe's core takes 23 passes
        (120, 3, [(0, 60), (60, 120)]),  # the probe alone is above the mean: the passes share two cores
        (1, 2, [(0, 1)]),
    ],
)
def test_anchor_shares_balance_the_passes_and_the_probe(
    n: int, processes: int, want: list[tuple[int, int]]
) -> None:
    shares = caches.anchor_shares(n, processes, 2.1, 1.3)
    assert shares == want
    assert shares[0][0] == 0 and shares[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(shares, shares[1:], strict=False))
