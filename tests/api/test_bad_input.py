"""The bad-input table: every rejection names the line or field and stores nothing half-written."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from tests.api.conftest import chat, good_file, jsonl
from tests.api.server import Server


def _stored_blobs(server: Server, content: bytes) -> list[str]:
    root = server.home / "files"
    return [str(p) for p in root.rglob("*") if p.is_file() and p.read_bytes() == content]


def _tmp_leftovers(server: Server) -> list[str]:
    return [str(p) for p in (server.home / "files" / "tmp").glob("*")]


GOOD = [json.dumps(chat(i)) for i in range(11)]


def _tool_row(arguments: str, answers: str) -> dict[str, Any]:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    return {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": answers, "content": "18 C"},
            {"role": "assistant", "content": "18 C."},
        ]
    }


UPLOAD_400 = {
    "non_json_line": ("\n".join([*GOOD[:2], "{not json", *GOOD[2:]]).encode(), "line 3", "not valid JSON"),
    "non_object_line": (
        "\n".join([*GOOD[:4], "[1, 2]", *GOOD[4:]]).encode(),
        "line 5",
        "expected a JSON object",
    ),
    "invalid_utf8": (
        ("\n".join(GOOD[:1]) + "\n").encode() + b'{"prompt": "\xff\xfe", "completion": "x"}\n',
        "line 2",
        "invalid UTF-8",
    ),
    "empty_file": (b"", "empty", "empty"),
    "blank_lines_only": (b"\n\r\n  \n", "empty", "empty"),
    "unknown_shape": ("\n".join([*GOOD[:1], json.dumps({"text": "hi"})]).encode(), "line 2", "unrecognised"),
    # issue 11 item 5: crafted lines that made the decoder raise RecursionError / ValueError (500)
    "deep_brackets": ("\n".join([*GOOD[:2], "[" * 150_000]).encode(), "line 3", "nested deeper than"),
    "deep_objects": (
        "\n".join([*GOOD[:1], '{"a":' * 30_000 + "1" + "}" * 30_000]).encode(),
        "line 2",
        "nested deeper than",
    ),
    "tool_arguments_not_json": (
        "\n".join([*GOOD[:1], json.dumps(_tool_row("{city: Paris}", "call_1"))]).encode(),
        "line 2, field 'messages[1].tool_calls[0].function.arguments'",
        "not valid JSON",
    ),
    "huge_integer": (
        "\n".join([*GOOD[:3], '{"prompt": "q", "completion": "a", "n": ' + "7" * 5000 + "}"]).encode(),
        "line 4",
        "number",
    ),
}


@pytest.mark.parametrize("case", sorted(UPLOAD_400))
def test_upload_rejected_with_line(case: str, client: openai.OpenAI, server: Server) -> None:
    content, where, what = UPLOAD_400[case]
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("bad.jsonl", content), purpose="fine-tune")
    err = info.value
    assert where in err.message and what in err.message and "bad.jsonl" in err.message
    assert err.body["param"] == "file" and err.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert client.files.list().data == []
    if content:
        assert _stored_blobs(server, content) == []
    assert _tmp_leftovers(server) == []


def test_file_over_size_limit_is_413(client: openai.OpenAI, server: Server) -> None:
    big = jsonl([chat(i, note="x" * 1000) for i in range(250)])  # > TUNEGATE_MAX_UPLOAD_BYTES (200 kB)
    with pytest.raises(openai.APIStatusError) as info:
        client.files.create(file=("big.jsonl", big), purpose="fine-tune")
    assert info.value.status_code == 413 and "limit" in info.value.message
    assert client.files.list().data == [] and _tmp_leftovers(server) == []


def test_unknown_purpose_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("a.jsonl", good_file()), purpose="bogus")  # type: ignore[arg-type]
    assert info.value.body["param"] == "purpose"  # type: ignore[index]


def _no_assistant(i: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"q{i}"}]}


def _rows_with(bad_at: int, bad: dict[str, Any], n: int = 12) -> bytes:
    rows = [chat(i) for i in range(n)]
    rows[bad_at - 1] = bad
    return jsonl(rows)


PROCESSING_ERRORS = {
    "nine_examples": (good_file(9), "9 examples; at least 10"),
    "no_assistant_turn": (_rows_with(4, _no_assistant(4)), "line 4"),
    "unknown_role": (
        _rows_with(
            6, {"messages": [{"role": "wizard", "content": "hi"}, {"role": "assistant", "content": "ok"}]}
        ),
        "unknown role 'wizard'",
    ),
    "empty_content": (
        _rows_with(
            2, {"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "ok"}]}
        ),
        "line 2",
    ),
    "tool_output_answers_no_call": (
        _rows_with(5, _tool_row('{"city": "Paris"}', "call_9")),
        "line 5, field 'messages[2].tool_call_id': tool_call_id 'call_9' answers no earlier tool call",
    ),
    "over_long_example": (_rows_with(7, {"prompt": "hello " * 600, "completion": "ok"}), "line 7"),
    "all_weight_zero": (
        _rows_with(
            3,
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "weight": 0},
                ]
            },
        ),
        "line 3",
    ),
}


@pytest.mark.parametrize("case", sorted(PROCESSING_ERRORS))
def test_processing_error_status_names_the_line(case: str, client: openai.OpenAI) -> None:
    content, where = PROCESSING_ERRORS[case]
    f = client.files.create(file=("t.jsonl", content), purpose="fine-tune")
    f = client.files.wait_for_processing(f.id, poll_interval=0.05, max_wait_seconds=30)
    assert f.status == "error"
    assert f.status_details is not None and where in f.status_details
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.fine_tuning.jobs.create(model="smollm2-135m", training_file=f.id)
    assert info.value.body["param"] == "training_file" and where in info.value.message  # type: ignore[index]


def test_status_details_capped_with_count(client: openai.OpenAI) -> None:
    rows = [_no_assistant(i) for i in range(150)]
    f = client.files.create(file=("many.jsonl", jsonl(rows)), purpose="fine-tune")
    f = client.files.wait_for_processing(f.id, poll_interval=0.05, max_wait_seconds=30)
    assert f.status == "error" and f.status_details is not None
    lines = f.status_details.splitlines()
    assert lines[0] == "150 problems found" and lines[-1] == "... and 50 more"
    assert len(lines) == 102 and lines[1].startswith("line 1,")


@pytest.mark.parametrize("n", [1, 9])
def test_upload_under_minimum_says_processing_will_fail(n: int, client: openai.OpenAI) -> None:
    """Issue 11 item 7: a 1-line or 9-example file was accepted without a word; the answer now says why it
    will fail (the SDK's strict response validation accepts the file object)."""
    f = client.files.create(file=("few.jsonl", good_file(n)), purpose="fine-tune")
    assert f.status in ("uploaded", "error")
    assert f.status_details is not None
    assert f"{n} example" in f.status_details and "at least 10" in f.status_details
    f = client.files.wait_for_processing(f.id, poll_interval=0.05, max_wait_seconds=30)
    assert f.status == "error" and f.status_details is not None and "at least 10" in f.status_details


def test_upload_at_minimum_has_no_status_details(client: openai.OpenAI) -> None:
    f = client.files.create(file=("ok.jsonl", good_file(10)), purpose="fine-tune")
    assert f.status_details is None
