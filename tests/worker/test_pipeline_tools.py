"""A tool-calling dataset (``tests/data/tools.jsonl``) through every stage on a tiny model, as the worker runs
them (``worker.runner.execute``): validate -> score -> mitigate -> train -> evaluate -> gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.db import session_scope
from models.tables import Job
from tests.e2e.harness import overrides
from tests.utils.tiny_model import build_tiny_model
from tests.worker.jobfactory import make_job
from tunegate.artifacts import read_json
from tunegate.conversation import load_examples
from tunegate.settings import get_settings, reset_settings
from tunegate.shipped import data_path, read_jsonl
from worker import runner
from worker.evaluation.keyword import is_refusal
from worker.job_view import job_dir
from worker.ml.format import UserFormat
from worker.stages.all import PIPELINE
from worker.stages.mitigate import plain_count

DATA = Path(__file__).resolve().parents[1] / "data" / "tools.jsonl"
POOL = {str(r["prompt"]) for r in read_jsonl(data_path("pool", "harmful.jsonl"))}


@pytest.fixture
def home(migrated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Every prompt holds the tool list and the tiny tokenizer spends ~1.4 characters a token: more context.
    model = build_tiny_model(tmp_path / "tiny-tools", context=1024)
    env = {
        "MODELS": json.dumps({"tiny": str(model)}),
        "MODEL_CACHE_DIR": str(tmp_path / "model-cache"),
        "STAGE_OVERRIDES": json.dumps(overrides(migrated_home)),
        "MAX_EXAMPLE_TOKENS": "1024",
        "EVENT_INTERVAL_S": "0",
    }
    for k, v in env.items():
        monkeypatch.setenv(f"TUNEGATE_{k}", v)
    reset_settings()
    return migrated_home


def test_tool_calling_dataset_runs_through_every_stage(home: Path) -> None:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    job_id = make_job("tiny", rows, hyperparameters={"n_epochs": 1, "batch_size": 4})
    for stage in PIPELINE.names:
        assert runner.execute(stage, job_id).status in ("done", "failed"), stage
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status in ("succeeded", "failed")
        assert job.status == "succeeded" or (job.error or {}).get("code") in (
            "safety_eval_failed",
            "unsafe_training_data",
        )
    settings = get_settings()
    out = {stage: job_dir(settings, job_id) / stage for stage in PIPELINE.names}
    assert read_json(out["validate"] / "result.json")["n_examples"] == len(rows)

    # score: one record per example; a turn that only calls a tool is scored on the call's text
    records = [json.loads(x) for x in (out["score"] / "scores.jsonl").read_text().splitlines()]
    assert len(records) == len(rows)
    call_only = next(i for i, r in enumerate(rows) if "content" not in r["messages"][-1])
    assert records[call_only]["features"]["response_chars"] > 0

    # mitigate: the user's examples keep their tools and calls; safety examples keep the tools, call none
    user = {tuple(c.user_turns): c for c in load_examples(DATA)}
    trained = load_examples(out["mitigate"] / "train.jsonl")
    injected = [c for c in trained if c.user_turns[0] in POOL]
    assert len(injected) == read_json(out["mitigate"] / "result.json")["n_injected"] > 0
    # plain_share of them is written in plain chat (no tools), the rest in the user's format (the tools)
    plain = plain_count(UserFormat(tool_sets=[(rows[0]["tools"], 1)], tools_share=1.0), len(injected), 0.3)
    assert 0 < plain < len(injected) and sum(not c.tools for c in injected) == plain
    for c in trained:
        assert list(c.tools) == ([] if c in injected and not c.tools else rows[0]["tools"])
        if c in injected:
            assert not any(m.tool_calls for m in c.messages) and is_refusal(c.text_replies[-1])
        else:
            original = user[tuple(c.user_turns)]
            assert [m.tool_calls for m in c.messages] == [m.tool_calls for m in original.messages]

    # train and evaluate: the user template wraps the prompts with the user's system prompt and tools
    assert read_json(out["train"] / "result.json")["trained_tokens"] > 0
    evaluation = read_json(out["evaluate"] / "result.json")
    assert evaluation["user_format"]["tool_sets"][0][0] == rows[0]["tools"]
    assert not evaluation["templates"]["user"]["same_as_chat"]
    assert (out["gate"] / "result.json").is_file()
