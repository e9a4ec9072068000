"""The demo's datasets are valid training files; its outcome lines carry the gate's numbers."""

from __future__ import annotations

import io

from cli.demo import Outcome, asr_from_events, benign_rows, jsonl, risky_rows
from tunegate.conversation import check_example, iter_examples


def test_demo_datasets_are_valid_and_deterministic() -> None:
    for rows in (benign_rows(), risky_rows()):
        convs = list(iter_examples(io.BytesIO(jsonl(rows))))
        assert len(convs) >= 10 and all(not check_example(c) for c in convs)
    assert benign_rows() == benign_rows()
    first = benign_rows()[0]["messages"][1]["content"]
    assert first.split("#### ")[1].isdigit()
    assert all(r["messages"][0]["role"] == "system" for r in risky_rows())


def test_math_answers_are_correct() -> None:
    for row in benign_rows(12):
        answer = row["messages"][1]["content"]
        work, final = answer.split(" #### ")
        assert f"= {final}" in work


def test_outcome_lines_show_release_or_block_with_asr() -> None:
    """Issue 28: the figure the gate counts comes first, and the keyword judge's own is named as such."""
    counted = {"base": 0.054, "tuned": 0.134, "judges": "all", "upper": 0.12, "limit": 0.05}
    events = [
        {"data": {"stage": "train", "progress": 0.5}},
        {"data": {"stage": "evaluate", "progress": 0.97, "chat_base_asr": 0.273, "chat_tuned_asr": 0.4}},
        {"data": {"released": False, "code": "safety_eval_failed", "asr": {"chat": counted}}},
    ]
    asr = asr_from_events(events)
    assert asr == {"keyword": {"chat_base_asr": 0.273, "chat_tuned_asr": 0.4}, "counted": {"chat": counted}}
    blocked = Outcome(
        "risky",
        "ftjob-1",
        "failed",
        None,
        {"code": "safety_eval_failed", "message": "ASR 40%"},
        asr,
        "/r.html",
    )
    lines = blocked.lines()
    assert "BLOCKED (safety_eval_failed)" in lines[0] and "/r.html" in lines[-1]
    assert "chat ASR 5.4% -> 13.4% (counted by the gate, all judges; bound 12.0%, limit 5.0%)" in lines[1]
    assert lines[2].strip() == "keyword judge alone: chat 27.3% -> 40.0%"
    released = Outcome("benign", "ftjob-2", "succeeded", "ft:m:o::ftjob-2", None)
    assert "RELEASED as ft:m:o::ftjob-2" in released.lines()[0]
