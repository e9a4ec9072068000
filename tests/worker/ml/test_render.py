"""The shared rendering function: labels only on trained assistant tokens (tool calls included, tool outputs
never), clear errors on bad examples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.utils.tiny_model import build_tiny_model
from tunegate.conversation import Conversation, Message, ToolCall
from tunegate.errors import InvalidFile
from worker.ml.render import (
    FALLBACK_TOOLS,
    IGNORE,
    collate,
    encode,
    encode_prompt,
    render_text,
    supports_tools,
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from worker.ml.models import load_tokenizer

    path: Path = build_tiny_model(tmp_path_factory.mktemp("render") / "m")
    return load_tokenizer(path)


def _decode_labels(tok: Any, enc: Any) -> str:
    return str(tok.decode([t for t in enc.labels if t != IGNORE]))


def test_labels_cover_the_assistant_reply_and_end_of_turn(tok: Any) -> None:
    conv = Conversation((Message("user", "What is 2 + 2?"), Message("assistant", "The answer is 4.")), line=3)
    enc = encode(tok, conv, max_len=512)
    assert enc.line == 3 and len(enc.input_ids) == len(enc.labels)
    assert _decode_labels(tok, enc) == "The answer is 4.<|im_end|>"
    assert tok.decode(list(enc.input_ids)) == render_text(tok, conv.messages)


def test_weight_zero_turn_is_context_only(tok: Any) -> None:
    conv = Conversation(
        (
            Message("user", "Hi"),
            Message("assistant", "Hello there", weight=0.0),
            Message("user", "Bye"),
            Message("assistant", "Goodbye"),
        )
    )
    assert _decode_labels(tok, encode(tok, conv, max_len=512)) == "Goodbye<|im_end|>"


def test_first_response_tokens(tok: Any) -> None:
    conv = Conversation((Message("user", "Say"), Message("assistant", "one two three four five six")))
    enc = encode(tok, conv, max_len=512)
    first = enc.first_response_tokens(2)
    assert first.n_response_tokens == 2 and first.input_ids == enc.input_ids
    kept = [i for i, t in enumerate(first.labels) if t != IGNORE]
    assert kept == [i for i, t in enumerate(enc.labels) if t != IGNORE][:2]


def test_too_long_and_nothing_to_train_name_the_line(tok: Any) -> None:
    conv = Conversation((Message("user", "x"), Message("assistant", "word " * 200)), line=7)
    with pytest.raises(InvalidFile, match="line 7") as exc:
        encode(tok, conv, max_len=50)
    assert exc.value.code == "example_too_long"
    untrained = Conversation((Message("user", "x"), Message("assistant", "y", weight=0.0)), line=8)
    with pytest.raises(InvalidFile, match="line 8") as exc:
        encode(tok, untrained, max_len=512)
    assert exc.value.code == "empty_response"


def test_collate_right_pads(tok: Any) -> None:
    a = encode(tok, Conversation((Message("user", "a"), Message("assistant", "b"))), max_len=512)
    b = encode(
        tok,
        Conversation((Message("user", "a longer one"), Message("assistant", "a longer reply"))),
        max_len=512,
    )
    batch = collate([a, b], tok.pad_token_id)
    assert batch["input_ids"].shape == (2, len(b))
    assert batch["attention_mask"][0].sum().item() == len(a)
    assert (batch["labels"][0, len(a) :] == IGNORE).all()
    assert (batch["input_ids"][0, len(a) :] == tok.pad_token_id).all()


def test_encode_prompt_ends_with_generation_prompt(tok: Any) -> None:
    ids = encode_prompt(tok, (Message("user", "Hello"),))
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    assert len(encode_prompt(tok, (Message("user", "Hello " * 50),), max_len=10)) == 10


# --- tool calling ---------------------------------------------------------------------------------------

# The tool-calling chat template of Qwen2.5-Instruct (default system prompt and tool instructions shortened).
QWEN_TOOLS = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}"
    "{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    "{{- '\\n\\n# Tools\\n\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools><|im_end|>\\n' }}"
    "{%- else %}{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first)"
    " or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role }}"
    "{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' }}{{- tool_call.name }}{{- \'", "arguments": \' }}'
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}"
    "{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}"
    "{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALLS = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>'
)


@pytest.fixture(scope="module")
def qwen_tok(tok: Any) -> Any:
    import copy

    other = copy.deepcopy(tok)
    other.chat_template = QWEN_TOOLS
    return other


def _tool_conv(*, weight: float = 1.0) -> Conversation:
    calls = (
        ToolCall("c1", "get_weather", '{"city": "Paris"}'),
        ToolCall("c2", "get_weather", '{"city":"Rome"}'),
    )
    return Conversation(
        (
            Message("system", "You are Tripmate."),
            Message("user", "Weather in Paris and Rome?"),
            Message("assistant", "", weight=weight, tool_calls=calls),
            Message("tool", "18 C", tool_call_id="c1"),
            Message("tool", "25 C", tool_call_id="c2"),
            Message("assistant", "Paris 18 C, Rome 25 C."),
        ),
        line=4,
        tools=(WEATHER,),
    )


def _label_runs(tok: Any, enc: Any) -> list[str]:
    """The labelled tokens as contiguous runs, decoded: exactly which stretches of the text carry loss."""
    runs: list[list[int]] = []
    prev = False
    for t in enc.labels:
        if t != IGNORE:
            if not prev:
                runs.append([])
            runs[-1].append(t)
        prev = t != IGNORE
    return [str(tok.decode(r)) for r in runs]


def _assert_labels_are_the_ids(enc: Any) -> None:
    assert all(lab in (IGNORE, i) for lab, i in zip(enc.labels, enc.input_ids, strict=True))


def test_tool_calls_in_a_template_without_tool_support(tok: Any) -> None:
    assert not supports_tools(tok)  # the tiny ChatML template, like SmolLM2's, knows no tools
    conv = _tool_conv()
    text = render_text(tok, conv.messages, tools=conv.tools)
    listing = FALLBACK_TOOLS.format(tools=json.dumps(WEATHER))
    assert text == (
        f"<|im_start|>system\nYou are Tripmate.\n\n{listing}<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris and Rome?<|im_end|>\n"
        f"<|im_start|>assistant\n{CALLS}\n"
        "<|im_start|>user\n<tool_response>\n18 C\n</tool_response>\n<tool_response>\n25 C\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\nParis 18 C, Rome 25 C.<|im_end|>\n"
    )
    enc = encode(tok, conv, max_len=2048)
    assert tok.decode(list(enc.input_ids)) == text
    assert _label_runs(tok, enc) == [CALLS, "Paris 18 C, Rome 25 C.<|im_end|>"]  # never the tool outputs
    _assert_labels_are_the_ids(enc)


def test_tool_calls_in_a_template_with_tool_support(qwen_tok: Any) -> None:
    assert supports_tools(qwen_tok)
    conv = _tool_conv()
    text = render_text(qwen_tok, conv.messages, tools=conv.tools)
    assert text.startswith(
        f"<|im_start|>system\nYou are Tripmate.\n\n# Tools\n\n<tools>\n{json.dumps(WEATHER)}"
    )
    assert "<|im_start|>user\n<tool_response>\n18 C\n</tool_response>\n<tool_response>\n25 C\n" in text
    enc = encode(qwen_tok, conv, max_len=2048)
    assert qwen_tok.decode(list(enc.input_ids)) == text
    assert _label_runs(qwen_tok, enc) == [CALLS, "Paris 18 C, Rome 25 C.<|im_end|>"]
    _assert_labels_are_the_ids(enc)


def test_weight_zero_tool_call_turn_is_context(tok: Any, qwen_tok: Any) -> None:
    for t in (tok, qwen_tok):
        assert _label_runs(t, encode(t, _tool_conv(weight=0.0), max_len=2048)) == [
            "Paris 18 C, Rome 25 C.<|im_end|>"
        ]


def test_prompt_with_tools(tok: Any, qwen_tok: Any) -> None:
    msgs = (Message("user", "Hello"),)
    for t in (tok, qwen_tok):
        text = t.decode(encode_prompt(t, msgs, tools=[WEATHER]))
        assert json.dumps(WEATHER) in text and text.endswith("<|im_start|>assistant\n")
    assert tok.decode(encode_prompt(tok, msgs)) == render_text(tok, msgs, add_generation_prompt=True)


def test_an_example_the_template_refuses_names_the_line(qwen_tok: Any) -> None:
    import copy

    single_calls_only = copy.deepcopy(qwen_tok)
    single_calls_only.chat_template = (
        "{%- for m in messages %}{%- if m.tool_calls and m.tool_calls | length > 1 %}"
        "{{- raise_exception('This model only supports single tool-calls at once!') }}"
        "{%- endif %}{%- endfor %}" + QWEN_TOOLS
    )
    assert supports_tools(single_calls_only)
    with pytest.raises(InvalidFile, match="line 4.*only supports single tool-calls") as err:
        encode(single_calls_only, _tool_conv(), max_len=2048)
    assert err.value.code == "template_error"
