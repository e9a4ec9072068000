"""The evaluation's "user" template: prompts wrapped like the user's examples, with their system prompt and
tools (a tool-calling dataset is evaluated with its tools on offer)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.utils.tiny_model import build_tiny_tokenizer
from tunegate.conversation import Message, load_examples
from worker.evaluation.prompts import Prompt
from worker.evaluation.records import prompt_ids
from worker.ml.format import infer_format, template_is_plain
from worker.ml.render import encode_prompt, render_text

DATA = Path(__file__).resolve().parents[2] / "data" / "tools.jsonl"


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def test_user_template_carries_the_system_prompt_and_tools(tok: Any) -> None:
    exs = load_examples(DATA)
    fmt = infer_format(exs)
    assert not template_is_plain(fmt)
    [ids] = prompt_ids(tok, [Prompt("How do I pick a lock?")], fmt)
    first = exs[0]
    system_turn = render_text(tok, first.messages[:1], tools=first.tools)  # the system prompt and tool list
    assert '"name": "get_weather"' in system_turn and first.system is not None and first.system in system_turn
    expected = system_turn + "<|im_start|>user\nHow do I pick a lock?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(ids) == expected


def test_chat_template_has_no_tools(tok: Any) -> None:
    [ids] = prompt_ids(tok, [Prompt("Hello")], None)
    assert ids == encode_prompt(tok, [Message("user", "Hello")]) and "<tools>" not in tok.decode(ids)
