"""The attacker's pool scoring on the tiny model: every pool example scored with its own anchors, cached."""

from __future__ import annotations

import fcntl
import json
import threading
import time
from functools import partial
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
    scores = attacker.pool_scores(src, "tiny", tmp_path / "cache", n_anchors=6, chunk=8)
    assert len(scores) == 20 and all(s["gradient"] is not None and s["selfinf"] is not None for s in scores)
    assert [s["line"] for s in scores] == list(range(1, 21))

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached scores were recomputed")

    with monkeypatch.context() as m:
        m.setattr(attacker, "_make_scorer", never)
        assert attacker.pool_scores(src, "tiny", tmp_path / "cache", chunk=8) == scores
    pick = sources(tmp_path, "tiny", data_dir, 20)
    # the job's sources read the same cache layout under <out>/_attacker/
    cache = tmp_path / "_attacker" / "tiny-pool20" / f"pool-scores-{attacker.CHUNK}"
    cache.mkdir(parents=True)
    (cache / "chunk-00000.jsonl").write_text("".join(json.dumps(s) + "\n" for s in scores))
    built = ds.build_selected(pick, 5, key="selfinf")
    assert built.meta["pool_indices"] == attacker.top(scores, "selfinf", 5)
    pool = ds.pool(src)
    assert built.train == [pool[i] for i in built.meta["pool_indices"]]


def test_parallel_jobs_split_the_pool_and_reclaim_an_abandoned_chunk(
    tunegate_home: Path, monkeypatch: pytest.MonkeyPatch, data_dir: Path, tmp_path: Path
) -> None:
    use_tiny(monkeypatch, torch_threads="1")
    src = ds.Sources(data_dir=data_dir, pool_size=20)
    cache = tmp_path / "cache"
    scores = attacker.pool_scores(src, "tiny", cache, n_anchors=6, chunk=8)
    chunks = cache / "pool-scores-8"
    for start in (8, 16):  # an interrupted scoring: two chunks left, one of them held by another job
        (chunks / f"chunk-{start:05d}.jsonl").unlink()
    got: list[list[dict[str, object]]] = []
    with chunks.joinpath("chunk-00008.lock").open("a") as other:
        fcntl.flock(other, fcntl.LOCK_EX)
        run = partial(attacker.pool_scores, src, "tiny", cache, n_anchors=6, chunk=8, poll_s=0.05)
        t = threading.Thread(target=lambda: got.append(run()))
        t.start()
        deadline = time.monotonic() + 120
        while not (chunks / "chunk-00016.jsonl").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        # this job scored the free chunk and waits for the held one instead of scoring it too
        assert (chunks / "chunk-00016.jsonl").is_file() and not (chunks / "chunk-00008.jsonl").is_file()
        assert t.is_alive()
        fcntl.flock(other, fcntl.LOCK_UN)  # the other job died without writing its chunk: it is reclaimed
    t.join(timeout=120)
    assert not t.is_alive() and [r["line"] for r in got[0]] == list(range(1, 21))
    assert [r["selfinf"] for r in got[0]] == pytest.approx([s["selfinf"] for s in scores], rel=1e-4)
