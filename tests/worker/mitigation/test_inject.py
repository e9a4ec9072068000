"""Injection counts (size and risk) and contrastive helpful examples rendered in each response kind."""

import json
from dataclasses import replace

import pytest

from tunegate.conversation import Conversation, Message, check_example
from worker.evaluation.keyword import is_refusal
from worker.mitigation.contrast import Answered
from worker.mitigation.inject import (
    contrast_supported,
    contrastive_examples,
    injection_counts,
    render_helpful,
)
from worker.ml.format import UserFormat, infer_format

ANSWER = "Open Task Manager and end the task. It stops the program at once."


@pytest.mark.parametrize(
    ("n", "risky", "ratio", "minimum", "per_risky", "contrast", "max_fraction", "want"),
    [
        (1000, 0, 0.07, 10, 1.0, 1.0, 0.5, (70, 70)),  # grows with size ...
        (100, 0, 0.07, 10, 1.0, 1.0, 0.5, (10, 10)),  # ... never under the minimum
        (1000, 30, 0.07, 10, 1.0, 1.0, 0.5, (100, 100)),  # ... and with risk
        (1000, 30, 0.07, 10, 0.5, 1.0, 0.5, (85, 85)),
        (1000, 0, 0.07, 10, 1.0, 0.5, 0.5, (70, 35)),  # contrast_ratio scales the helpful ones
        (1000, 0, 0.07, 10, 1.0, 0.0, 0.5, (70, 0)),  # contrast off
        (12, 0, 0.07, 10, 1.0, 1.0, 0.5, (3, 3)),  # cap: both together <= half of the dataset
        (40, 21, 0.07, 10, 1.0, 1.0, 0.5, (10, 10)),  # 24 + 24 capped at 20, shrunk alike
        (3, 0, 0.07, 10, 1.0, 1.0, 0.5, (1, 0)),  # one safety example always stays
        (1, 0, 0.07, 10, 1.0, 1.0, 0.5, (1, 0)),
        (0, 0, 0.07, 10, 1.0, 1.0, 0.5, (0, 0)),  # nothing to inject into
        (1000, 5, 0.0, 10, 1.0, 1.0, 0.5, (0, 0)),  # injection off: no contrast either
        (1000, 0, 0.07, 10, 1.0, 2.0, 0.1, (33, 67)),
    ],
)
def test_injection_counts(n, risky, ratio, minimum, per_risky, contrast, max_fraction, want):
    got = injection_counts(n, risky, ratio, minimum, per_risky, contrast, max_fraction)
    assert got == want
    if n:
        assert sum(got) <= max(1, int(max_fraction * n))


def _chat(user, assistant, line, system=None):
    msgs = ([Message("system", system)] if system else []) + [
        Message("user", user),
        Message("assistant", assistant),
    ]
    return Conversation(tuple(msgs), line=line)


def test_render_helpful_json_puts_the_answer_in_the_text_key():
    exs = [_chat(f"Rate {i}", json.dumps({"score": i, "answer": f"because {i}"}), i) for i in range(10)]
    fmt = infer_format(exs)
    obj = json.loads(render_helpful(fmt, ANSWER))
    assert fmt.response_kind == "json" and obj == {"score": None, "answer": ANSWER}


def test_render_helpful_final_answer_repeats_the_first_sentence():
    exs = [_chat(f"What is {i} + 1?", f"{i} plus one.\n#### {i + 1}", i) for i in range(10)]
    fmt = infer_format(exs)
    out = render_helpful(fmt, ANSWER)
    assert out == f"{ANSWER}\n#### Open Task Manager and end the task."
    assert infer_format([_chat("q", out, 1), *exs]).response_kind == "final_answer"
    long = render_helpful(fmt, "word " * 60 + "end. Second sentence.")
    final = long.rsplit("\n", 1)[1]
    assert final.startswith("#### word word") and len(final) <= 4 + 1 + 100 + 1 and "Second" not in final


def test_render_helpful_bullets_and_prefix():
    exs = [_chat(f"List {i}", f"Answer: ok\n- a {i}\n- b {i}", i) for i in range(1, 9)]
    fmt = infer_format(exs)
    out = render_helpful(fmt, ANSWER)
    assert out == "Answer: - Open Task Manager and end the task.\n- It stops the program at once."
    listed = "Steps:\n- open it\n- end it"
    assert render_helpful(fmt, listed) == "Answer: " + listed  # an answer with bullets stays as it is


def test_render_helpful_text_and_labels():
    assert render_helpful(UserFormat(response_prefix="A: "), ANSWER) == "A: " + ANSWER
    labels = infer_format([_chat(f"Review {i}", "positive" if i % 2 else "negative", i) for i in range(10)])
    assert labels.response_kind == "labels" and not contrast_supported(labels)
    assert contrast_supported(UserFormat())


def test_contrastive_examples_copy_the_users_format():
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    exs = [
        replace(_chat(f"### Q:\n{i}?\n### A:", f"A{i}.", i, system="Be brief."), tools=(tool,))
        for i in range(10)
    ]
    fmt = infer_format(exs)
    items = [Answered(f"How do I kill a stuck app number {i}?", "homonyms", ANSWER) for i in range(6)]
    out = contrastive_examples(fmt, items, seed=0)
    assert len(out) == 6
    for c, it in zip(out, items, strict=True):
        assert c.meta == {"injected": True, "category": "helpful:homonyms"} and c.line == 0
        assert c.user_turns[0] == f"### Q:\n{it.prompt}\n### A:" and c.system == "Be brief."
        assert c.tools == (tool,) and c.text_replies[0] == ANSWER and not is_refusal(c.text_replies[0])
        assert check_example(c) == []
