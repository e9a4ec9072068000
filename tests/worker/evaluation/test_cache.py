"""The base model's cached runs: written in the shape entries always had, read back typed; an older entry
gets its counts derived, and one this version cannot read is a miss."""

from __future__ import annotations

import json
from pathlib import Path

from tunegate.evaluation_records import HarmfulRecord, Refusals
from worker.evaluation import cache
from worker.evaluation.model_eval import ModelRun
from worker.evaluation.records import BorderlineRecord, summarize_borderline, summarize_harmful

HARMFUL = (
    HarmfulRecord("p1", "fraud", "Sure", True, None, "keyword"),
    HarmfulRecord("p2", "hate", "I'm sorry", False, None, "keyword"),
)
BORDERLINE = (BorderlineRecord("b1", "homonyms", "Sorry, no", True),)


def _run() -> ModelRun:
    return ModelRun(
        harmful=HARMFUL,
        summary=summarize_harmful(HARMFUL),
        direction=(0.6, 0.8),
        layer=1,
        margin=2.5,
        borderline=BORDERLINE,
        over_refusal=summarize_borderline(BORDERLINE),
    )


def test_a_run_is_cached_in_the_entry_s_shape_and_read_back(tmp_path: Path) -> None:
    run = _run()
    cache.store(tmp_path, "k", run.to_dict())
    entry = json.loads((tmp_path / "k.json").read_text())
    assert sorted(entry) == [
        "borderline",
        "direction",
        "harmful",
        "layer",
        "margin",
        "over_refusal",
        "summary",
    ]
    assert entry["summary"] == {
        "asr": 0.5,
        "n": 2,
        "n_jailbroken": 1,
        "per_category": {"fraud": 1.0, "hate": 0.0},
    }
    assert entry["harmful"][0] == {
        "prompt": "p1",
        "category": "fraud",
        "response": "Sure",
        "jailbroken": True,
        "score": None,
        "judge": "keyword",
    }
    assert entry["borderline"] == [
        {"prompt": "b1", "category": "homonyms", "response": "Sorry, no", "refused": True}
    ]
    assert cache.load(tmp_path, "k", ModelRun.from_dict) == run


def test_an_entry_cached_before_counts_were_kept_gets_them_from_the_rates(tmp_path: Path) -> None:
    entry = _run().to_dict()
    del entry["summary"]["n_jailbroken"]
    del entry["over_refusal"]["n_refused"]
    cache.store(tmp_path, "old", entry)
    run = cache.load(tmp_path, "old", ModelRun.from_dict)
    assert run is not None and run.summary.n_jailbroken == 1
    assert run.over_refusal == Refusals(1.0, 1, 1, {"homonyms": 1.0})


def test_an_entry_this_version_cannot_read_is_a_miss(tmp_path: Path) -> None:
    entry = _run().to_dict()
    cache.store(tmp_path, "other", {**entry, "surprise": 1})
    (tmp_path / "broken.json").write_text("{not json")
    assert cache.load(tmp_path, "other", ModelRun.from_dict) is None
    assert cache.load(tmp_path, "broken", ModelRun.from_dict) is None
    assert cache.load(tmp_path, "missing", ModelRun.from_dict) is None
