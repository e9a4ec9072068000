"""The attacker's pool scoring on the tiny model: every pool example scored with its own anchors, cached."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.panel import attacker
from benchmarks.panel import datasets as ds
from benchmarks.panel.job import sources
from tests.worker.jobfactory import use_tiny


def test_pool_scores_are_cached_and_drive_the_selection(
    tunegate_home: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path, tmp_path: Path
) -> None:
    use_tiny(monkeypatch, torch_threads="1")
    src = ds.Sources(data_dir=data_dir, pool_size=20)
    scores = attacker.pool_scores(src, "tiny", tmp_path / "cache", n_anchors=6)
    assert len(scores) == 20 and all(s["gradient"] is not None and s["selfinf"] is not None for s in scores)

    cached = tmp_path / "cache" / "pool-scores.jsonl"  # an interrupted scoring resumes after its last chunk
    cached.write_text("".join(cached.read_text().splitlines(keepends=True)[:8]) + '{"line": 9, "rep')
    resumed = attacker.pool_scores(src, "tiny", tmp_path / "cache", n_anchors=6)
    assert [r["line"] for r in resumed] == [s["line"] for s in scores]
    assert [r["selfinf"] for r in resumed] == pytest.approx([s["selfinf"] for s in scores], rel=1e-4)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached scores were recomputed")

    monkeypatch.setattr(attacker, "_score_rest", never)
    assert attacker.pool_scores(src, "tiny", tmp_path / "cache") == scores
    pick = sources(tmp_path, "tiny", data_dir, 20)
    # the job's sources read the same cache layout under <out>/_attacker/
    cache = tmp_path / "_attacker" / "tiny-pool20"
    cache.mkdir(parents=True)
    (cache / "pool-scores.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scores))
    built = ds.build_selected(pick, 5, key="selfinf")
    assert built.meta["pool_indices"] == attacker.top(scores, "selfinf", 5)
    pool = ds.pool(src)
    assert built.train == [pool[i] for i in built.meta["pool_indices"]]
