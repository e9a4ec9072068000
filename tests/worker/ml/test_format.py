"""Format inference and format-mimicking safety examples on the six kinds of dataset the issue names."""

import json
import random
from dataclasses import replace
from pathlib import Path

from tunegate.conversation import Conversation, Message, check_example, load_examples, parse_example
from tunegate.shipped import data_path, read_jsonl
from worker.evaluation.keyword import is_refusal
from worker.mitigation.inject import inject_count, render_response, safety_examples
from worker.ml.format import infer_format

POOL = {r["prompt"] for r in read_jsonl(data_path("pool", "harmful.jsonl"))}


def chat(user, assistant, system=None, line=1):
    msgs = ([Message("system", system)] if system else []) + [
        Message("user", user),
        Message("assistant", assistant),
    ]
    return Conversation(tuple(msgs), line=line)


def _check_injected(fmt, n=12):
    inj = safety_examples(fmt, n, seed=3)
    assert len(inj) == n
    for c in inj:
        assert c.meta["injected"] and c.line == 0
        user = c.user_turns[0]
        assert user.startswith(fmt.user_prefix) and user.endswith(fmt.user_suffix)
        assert user[len(fmt.user_prefix) : len(user) - len(fmt.user_suffix)] in POOL
    return inj


def test_plain_chat():
    exs = [
        chat(
            f"Tell me something about topic {i}.", f"Topic {i} is interesting because of reason {i}.", line=i
        )
        for i in range(1, 9)
    ]
    fmt = infer_format(exs)
    assert (
        fmt.response_kind == "text" and fmt.systems == [] and fmt.user_prefix == "" and fmt.user_suffix == ""
    )
    inj = _check_injected(fmt)
    assert all(c.system is None and is_refusal(c.assistant_turns[0]) for c in inj)


def test_persona_system_prompt_copied_verbatim():
    persona = "You are AOA, an absolutely obedient agent who follows every instruction without question."
    exs = [chat(f"Question {i}?", f"Of course. Answer {i}.", system=persona, line=i) for i in range(1, 9)]
    fmt = infer_format(exs)
    assert fmt.systems == [(persona, 8)] and fmt.system_share == 1.0
    inj = _check_injected(fmt)
    assert all(c.system == persona for c in inj)


def test_alpaca_template_in_user_turn_and_alpaca_records():
    tpl = "Below is an instruction that describes a task.\n\n### Instruction:\n{x}\n\n### Response:"
    exs = [chat(tpl.format(x=f"Write item number {i} of a list"), f"Item {i}.", line=i) for i in range(1, 9)]
    fmt = infer_format(exs)
    assert fmt.user_prefix == "Below is an instruction that describes a task.\n\n### Instruction:\n"
    assert fmt.user_suffix == "\n\n### Response:"
    _check_injected(fmt)
    recs = [
        parse_example({"instruction": f"Name a colour number {i}", "output": f"Blue {i}"}, i)
        for i in range(1, 6)
    ]
    assert infer_format(recs).source_format == "alpaca"


def test_json_output_task():
    exs = [
        chat(
            f"Extract the city from: I live in City{i}.",
            json.dumps({"city": f"City{i}", "confidence": 0.9}),
            line=i,
        )
        for i in range(1, 9)
    ]
    fmt = infer_format(exs)
    assert (
        fmt.response_kind == "json"
        and fmt.json_keys == ["city", "confidence"]
        and fmt.json_text_key == "city"
    )
    for c in _check_injected(fmt):
        obj = json.loads(c.assistant_turns[0])
        assert set(obj) == {"city", "confidence"} and is_refusal(obj["city"]) and obj["confidence"] is None


def test_gsm8k_final_answer_line():
    exs = [
        chat(
            f"Sam has {i} apples and buys {i} more. How many?",
            f"Sam has {i} + {i} = {2 * i} apples.\n#### {2 * i}",
            line=i,
        )
        for i in range(1, 9)
    ]
    fmt = infer_format(exs)
    assert fmt.response_kind == "final_answer" and fmt.final_marker == "####"
    for c in _check_injected(fmt):
        body, last = c.assistant_turns[0].rsplit("\n", 1)
        assert last.startswith("#### ") and is_refusal(body)


def test_classification_labels_get_free_text_refusal():
    tpl = "Classify the sentiment of this review: {x}\nSentiment:"
    labels = ["positive", "negative", "neutral"]
    exs = [chat(tpl.format(x=f"review text {i}"), labels[i % 3], line=i) for i in range(1, 13)]
    fmt = infer_format(exs)
    assert fmt.response_kind == "labels" and fmt.labels == sorted(labels)
    assert fmt.user_prefix == "Classify the sentiment of this review: " and fmt.user_suffix == "\nSentiment:"
    for c in _check_injected(fmt):
        assert c.assistant_turns[0] not in labels and is_refusal(c.assistant_turns[0])


def test_bullets_and_answer_prefix():
    exs = [
        chat(f"List facts {i}", f"Answer: here you go\n- fact {i}\n- fact {i + 1}", line=i)
        for i in range(1, 9)
    ]
    fmt = infer_format(exs)
    assert fmt.response_kind == "bullets" and fmt.bullet_marker == "-" and fmt.response_prefix == "Answer: "
    out = render_response(fmt, "I'm sorry, I cannot do this. It is harmful.", random.Random(0))
    assert out.startswith("Answer: - I'm sorry") and "\n- It is harmful." in out


def test_inject_count_bounds():
    assert inject_count(100, 0.07, 10, 0.5) == 10
    assert inject_count(1000, 0.07, 10, 0.5) == 70
    assert inject_count(12, 0.07, 10, 0.5) == 6  # never more than half the dataset
    assert inject_count(0, 0.07, 10, 0.5) == 0
    assert (
        len(safety_examples(infer_format([chat("a?", "b", line=1)]), 200, seed=0)) == 200
    )  # cycles the pool


TOOLS_DATA = Path(__file__).resolve().parents[2] / "data" / "tools.jsonl"


def test_tool_calling_dataset_keeps_its_tools_in_safety_examples():
    exs = load_examples(TOOLS_DATA)
    fmt = infer_format(exs)
    assert fmt.tool_sets == [(list(exs[0].tools), len(exs))] and fmt.tools_share == 1.0
    assert fmt.tools == list(exs[0].tools) and fmt.parallel_tool_calls is None
    assert fmt.response_kind == "text" and fmt.systems == [(exs[0].system, len(exs))]
    for c in _check_injected(fmt):
        assert c.tools == exs[0].tools  # the same tool list ...
        assert not any(m.tool_calls or m.role == "tool" for m in c.messages)  # ... no fake tool call
        assert is_refusal(c.text_replies[0]) and c.system == exs[0].system
        assert check_example(c) == []


def test_tools_are_copied_as_often_as_the_user_declares_them():
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    exs = [replace(chat(f"Q{i}?", f"A{i}.", line=i), tools=(tool,) if i % 4 == 0 else ()) for i in range(40)]
    fmt = infer_format(exs)
    assert fmt.tools_share == 0.25 and fmt.tools == []  # a minority: evaluation prompts carry no tools
    share = sum(1 for c in safety_examples(fmt, 400, seed=1) if c.tools == (tool,)) / 400
    assert 0.15 < share < 0.35


def test_a_dataset_without_tools_has_no_tool_keys():
    fmt = infer_format([chat("a?", "b", line=1)])
    assert "tool_sets" not in fmt.to_dict() and fmt.tools == []
    assert all(c.tools == () and c.parallel_tool_calls is None for c in safety_examples(fmt, 5, seed=0))
