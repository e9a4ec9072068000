"""OpenAI's function-calling format in training lines: parsed, checked with errors naming line and field,
and written back unchanged."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tunegate.conversation import check_example, dump_examples, load_examples, parse_example
from tunegate.errors import InvalidFile

DATA = Path(__file__).resolve().parents[1] / "data" / "tools.jsonl"
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {}}}},
}


def _row() -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
            {"role": "assistant", "content": "18 C in Paris."},
        ],
        "tools": [WEATHER],
        "parallel_tool_calls": False,
    }


def _call(r: dict[str, Any]) -> dict[str, Any]:
    call: dict[str, Any] = r["messages"][1]["tool_calls"][0]
    return call


def test_a_tool_calling_example_parses_and_round_trips(tmp_path: Path) -> None:
    conv = parse_example(_row(), 3)
    assert check_example(conv) == []
    assert conv.tools == (WEATHER,) and conv.parallel_tool_calls is False
    call = conv.messages[1].tool_calls[0]
    assert (call.id, call.name, call.parsed_arguments) == ("call_1", "get_weather", {"city": "Paris"})
    assert conv.messages[2].tool_call_id == "call_1"
    expected = _row()
    del expected["messages"][1]["content"]  # a turn that only calls tools is written without content
    assert conv.to_chat_dict() == expected
    assert conv.trained_responses == [
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        "18 C in Paris.",
    ]
    convs = load_examples(DATA)
    dump_examples(convs, tmp_path / "out.jsonl")
    assert [c.to_chat_dict() for c in load_examples(tmp_path / "out.jsonl")] == [
        c.to_chat_dict() for c in convs
    ]


def test_arguments_given_as_an_object_are_kept_as_json_text() -> None:
    r = _row()
    _call(r)["function"]["arguments"] = {"city": "Paris"}
    assert parse_example(r, 1).messages[1].tool_calls[0].arguments == '{"city": "Paris"}'


Mutation = Callable[[dict[str, Any]], object]
STRUCTURE: dict[str, tuple[Mutation, str, str]] = {
    "arguments_not_json": (
        lambda r: _call(r)["function"].update(arguments="{city: Paris}"),
        "messages[1].tool_calls[0].function.arguments",
        "not valid JSON",
    ),
    "arguments_not_an_object": (
        lambda r: _call(r)["function"].update(arguments="[1]"),
        "messages[1].tool_calls[0].function.arguments",
        "must hold a JSON object",
    ),
    "arguments_missing": (
        lambda r: _call(r)["function"].pop("arguments"),
        "messages[1].tool_calls[0].function.arguments",
        "missing required key 'arguments'",
    ),
    "arguments_too_deep": (
        lambda r: _call(r)["function"].update(arguments='{"a": ' + "[" * 40 + "]" * 40 + "}"),
        "messages[1].tool_calls[0].function.arguments",
        "nested deeper than",
    ),
    "arguments_huge_number": (
        lambda r: _call(r)["function"].update(arguments='{"a": ' + "9" * 5000 + "}"),
        "messages[1].tool_calls[0].function.arguments",
        "number",
    ),
    "call_without_id": (lambda r: _call(r).pop("id"), "messages[1].tool_calls[0].id", "'id'"),
    "call_of_another_type": (
        lambda r: _call(r).update(type="code_interpreter"),
        "messages[1].tool_calls[0].type",
        "type 'function'",
    ),
    "call_without_name": (
        lambda r: _call(r)["function"].pop("name"),
        "messages[1].tool_calls[0].function.name",
        "missing required key 'name'",
    ),
    "tool_calls_not_a_list": (
        lambda r: r["messages"][1].update(tool_calls={}),
        "messages[1].tool_calls",
        "must be a list",
    ),
    "tool_calls_on_a_user_turn": (
        lambda r: r["messages"][0].update(tool_calls=[]),
        "messages[0].tool_calls",
        "only assistant messages",
    ),
    "tool_call_id_on_a_user_turn": (
        lambda r: r["messages"][0].update(tool_call_id="call_1"),
        "messages[0].tool_call_id",
        "only tool messages",
    ),
    "tool_without_name": (
        lambda r: r["tools"][0]["function"].pop("name"),
        "tools[0].function.name",
        "missing required key 'name'",
    ),
    "tool_with_a_bad_name": (
        lambda r: r["tools"][0]["function"].update(name="get weather"),
        "tools[0].function.name",
        "1 to 64 letters",
    ),
    "tool_without_type": (lambda r: r["tools"][0].pop("type"), "tools[0].type", "'function'"),
    "tool_parameters_not_an_object": (
        lambda r: r["tools"][0]["function"].update(parameters="city"),
        "tools[0].function.parameters",
        "JSON schema object",
    ),
    "tools_not_a_list": (lambda r: r.update(tools={}), "tools", "must be a list"),
    "parallel_not_a_bool": (
        lambda r: r.update(parallel_tool_calls="yes"),
        "parallel_tool_calls",
        "true or false",
    ),
    "legacy_functions": (lambda r: r.update(functions=[]), "functions", "legacy"),
    "legacy_function_call": (
        lambda r: r["messages"][1].update(function_call={"name": "get_weather"}),
        "messages[1]",
        "legacy",
    ),
}


@pytest.mark.parametrize("case", sorted(STRUCTURE))
def test_structural_problems_name_line_and_field(case: str) -> None:
    mutate, field, what = STRUCTURE[case]
    r = copy.deepcopy(_row())
    mutate(r)
    with pytest.raises(InvalidFile) as err:
        parse_example(json.loads(json.dumps(r)), 7)
    assert (err.value.line, err.value.field) == (7, field) and what in err.value.reason


def _second_call(r: dict[str, Any]) -> None:
    r["messages"][1]["tool_calls"].append({**_call(r), "id": "call_2"})


SEMANTIC: dict[str, tuple[Mutation, str, str]] = {
    "assistant_with_neither": (
        lambda r: r["messages"][3].update(content=None),
        "messages[3].content",
        "neither content nor tool_calls",
    ),
    "tool_without_call_id": (
        lambda r: r["messages"][2].pop("tool_call_id"),
        "messages[2].tool_call_id",
        "needs a 'tool_call_id'",
    ),
    "tool_answering_an_unknown_call": (
        lambda r: r["messages"][2].update(tool_call_id="call_9"),
        "messages[2].tool_call_id",
        "answers no earlier tool call",
    ),
    "call_of_an_undeclared_tool": (
        lambda r: _call(r)["function"].update(name="book_hotel"),
        "messages[1].tool_calls[0].function.name",
        "not one of the example's 'tools'",
    ),
    "call_id_used_twice": (
        lambda r: r["messages"][1]["tool_calls"].append(_call(r)) or r.update(parallel_tool_calls=True),
        "messages[1].tool_calls[1].id",
        "used twice",
    ),
    "parallel_calls_when_not_allowed": (
        _second_call,
        "messages[1].tool_calls",
        "parallel_tool_calls is false",
    ),
    "tool_declared_twice": (lambda r: r["tools"].append(WEATHER), "tools[1].function.name", "declared twice"),
}


@pytest.mark.parametrize("case", sorted(SEMANTIC))
def test_semantic_problems_name_line_and_field(case: str) -> None:
    mutate, field, what = SEMANTIC[case]
    r = copy.deepcopy(_row())
    mutate(r)
    problems = check_example(parse_example(json.loads(json.dumps(r)), 7))
    assert [(p.line, p.field) for p in problems] == [(7, field)] and what in problems[0].reason


def test_calls_without_declared_tools_and_empty_tool_output_are_fine() -> None:
    r = _row()
    del r["tools"]
    r["messages"][2]["content"] = ""
    assert check_example(parse_example(r, 1)) == []
