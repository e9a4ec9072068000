"""Property tests of the JSONL decoder (Hypothesis, bounded so they stay in the default suite).

Arbitrary bytes never make the reader raise anything but ``InvalidFile``; valid conversations round-trip.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunegate.conversation import (
    MAX_JSON_DEPTH,
    MAX_NUMBER_CHARS,
    ROLES,
    Conversation,
    Message,
    ToolCall,
    check_example,
    decode_json_line,
    dump_examples,
    iter_lines,
    load_examples,
    parse_example,
)
from tunegate.errors import InvalidFile

BOUNDED = settings(
    max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def _read_all(data: bytes) -> int:
    """Everything the upload and processing paths do with a file's bytes; returns the examples parsed."""
    n = 0
    for line, text in iter_lines(io.BytesIO(data), chunk_size=7):
        conv = parse_example(decode_json_line(text, line), line)
        check_example(conv)
        n += 1
    return n


def _only_invalid_file(data: bytes) -> None:
    try:
        _read_all(data)
    except InvalidFile as exc:
        assert exc.line is None or exc.line >= 1
        assert exc.message


# JSON-ish fragments so that generated lines get past the first character often enough to be interesting.
_FRAGMENTS = st.sampled_from(
    [
        "{",
        "}",
        "[",
        "]",
        '"',
        ":",
        ",",
        "\\",
        '"messages"',
        '"role"',
        '"content"',
        '"assistant"',
        '"user"',
        '"prompt"',
        '"completion"',
        '"weight"',
        '"tools"',
        '"tool_calls"',
        '"tool_call_id"',
        '"function"',
        '"arguments"',
        "0",
        "1",
        "-",
        "1e999",
        "9" * 40,
        "true",
        "null",
        "NaN",
        " ",
        "\n",
        "\r\n",
        "\ufeff",
        "\x00",
        "é",
        "\ud800",
    ]
)
_JSONISH = st.lists(_FRAGMENTS, max_size=60).map("".join)


@BOUNDED
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_invalid_file(data: bytes) -> None:
    _only_invalid_file(data)


@BOUNDED
@given(st.lists(_JSONISH, max_size=6))
def test_jsonish_lines_raise_only_invalid_file(lines: list[str]) -> None:
    _only_invalid_file("\n".join(lines).encode("utf-8", errors="surrogatepass"))


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@BOUNDED
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "messages",
                "prompt",
                "completion",
                "instruction",
                "input",
                "output",
                "tools",
                "parallel_tool_calls",
            ]
        ),
        _JSON_VALUES,
        max_size=4,
    )
)
def test_any_json_object_parses_or_raises_invalid_file(obj: dict[str, object]) -> None:
    _only_invalid_file(json.dumps(obj).encode())


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5_000, 200_000])
def test_nesting_over_the_limit_is_invalid_file(depth: int) -> None:
    for text in ("[" * depth, '{"a":' * depth + "1" + "}" * depth, "[" * depth + "]" * depth):
        with pytest.raises(InvalidFile, match="nested deeper than"):
            decode_json_line(text, 3)


def test_nesting_at_the_limit_and_brackets_in_strings_are_fine() -> None:
    inner = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)
    assert decode_json_line('{"a": ' + inner + "}", 1) == {"a": json.loads(inner)}
    text = json.dumps({"prompt": "[" * 10_000 + '\\"{' * 100, "completion": "}" * 10_000})
    assert decode_json_line(text, 1)["completion"] == "}" * 10_000


def test_long_numbers_are_invalid_file() -> None:
    with pytest.raises(InvalidFile, match="number"):
        decode_json_line('{"n": ' + "7" * 5_000 + "}", 2)
    with pytest.raises(InvalidFile, match="number"):
        decode_json_line('{"n": 0.' + "7" * (MAX_NUMBER_CHARS + 1) + "}", 2)
    assert decode_json_line('{"n": ' + "7" * MAX_NUMBER_CHARS + "}", 2) == {"n": int("7" * MAX_NUMBER_CHARS)}


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40).filter(str.strip)
_MESSAGE = st.builds(
    lambda role, content, w: Message(role, content, float(w) if role == "assistant" else 1.0),
    st.sampled_from([r for r in ROLES if r != "tool"]),  # tool turns come with the calls they answer
    _TEXT,
    st.sampled_from([0, 1]),
)
_NAME = st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
_ARGS = st.dictionaries(st.text(max_size=6), st.integers(-(10**6), 10**6) | st.text(max_size=6), max_size=3)


def _tool(name: str) -> dict[str, object]:
    return {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}


@st.composite
def _conversation(draw: st.DrawFn) -> Conversation:
    """Turns, some of them an assistant's tool calls followed by one tool output per call."""
    msgs: list[Message] = []
    names: list[str] = []
    for g in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            msgs.append(draw(_MESSAGE))
            continue
        called = draw(st.lists(_NAME, min_size=1, max_size=3))
        calls = tuple(ToolCall(f"call_{g}_{j}", n, json.dumps(draw(_ARGS))) for j, n in enumerate(called))
        content = draw(st.sampled_from(["", "Let me look."]))
        msgs.append(Message("assistant", content, float(draw(st.sampled_from([0, 1]))), tool_calls=calls))
        msgs += [Message("tool", draw(_TEXT), tool_call_id=c.id) for c in calls]
        names += [n for n in dict.fromkeys(called) if n not in names]
    declared = draw(st.booleans())
    single = all(len(m.tool_calls) <= 1 for m in msgs)
    return Conversation(
        messages=(*msgs, Message("assistant", "ok")),
        tools=tuple(_tool(n) for n in names) if declared else (),
        parallel_tool_calls=draw(st.sampled_from([None, True, False] if single else [None, True])),
    )


_CONVERSATION = _conversation()


def _same(a: list[Conversation], b: list[Conversation]) -> bool:
    return [(c.messages, c.tools, c.parallel_tool_calls) for c in a] == [
        (c.messages, c.tools, c.parallel_tool_calls) for c in b
    ]


@BOUNDED
@given(st.lists(_CONVERSATION, min_size=1, max_size=5))
def test_valid_conversations_round_trip(convs: list[Conversation]) -> None:
    data = "".join(json.dumps(c.to_chat_dict(), ensure_ascii=False) + "\n" for c in convs).encode()
    back = [parse_example(decode_json_line(text, line), line) for line, text in iter_lines(io.BytesIO(data))]
    assert _same(back, convs)
    assert all(check_example(c) == [] for c in back)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.lists(_CONVERSATION, min_size=1, max_size=3))
def test_dump_then_load_round_trips(convs: list[Conversation]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.jsonl"
        dump_examples(convs, path)
        assert _same(load_examples(path), convs)
