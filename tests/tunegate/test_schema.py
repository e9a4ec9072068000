"""Strict typed reading of JSON records (``tunegate.schema``): values are checked against the type hints and
written back as they were read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from tunegate import schema
from tunegate.conversation import ChatMessageJSON
from tunegate.records import RecordError


@dataclass(frozen=True)
class Inner:
    k: int


@dataclass(frozen=True)
class Record:
    name: str
    value: float
    kind: Literal["a", "b"] = "a"
    items: tuple[Inner, ...] = ()
    by_name: dict[str, Inner] = field(default_factory=dict)
    either: str | bool | None = None
    blob: Any = None


def test_read_and_write_back() -> None:
    data = {
        "name": "x",
        "value": 3,
        "kind": "b",
        "items": [{"k": 1}],
        "by_name": {"a": {"k": 2}},
        "either": True,
        "blob": {"anything": [1, None]},
    }
    r = schema.read(Record, data, "record")
    assert r.value == 3 and isinstance(r.value, int)  # an int stays an int
    assert r.items == (Inner(1),) and r.by_name == {"a": Inner(2)} and r.either is True
    assert schema.write(r) == data
    assert schema.write(schema.read(Record, {"name": "y", "value": 1.5}, "record"), omit_none=True) == {
        "name": "y",
        "value": 1.5,
        "kind": "a",
        "items": [],
        "by_name": {},
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "value": True}, "key 'value' must be a number"),
        ({"name": "x", "value": 1, "kind": "c"}, "key 'kind' must be one of 'a', 'b'"),
        ({"name": "x", "value": 1, "items": [{"k": "1"}]}, r"key 'items'\[0\] key 'k' must be an integer"),
        (
            {"name": "x", "value": 1, "by_name": {"a": {"j": 1}}},
            r"key 'by_name'\['a'\] has an unknown key 'j'",
        ),
        ({"name": "x", "value": 1, "either": 3}, "key 'either' must be"),
        ({"value": 1}, "record lacks the key 'name'"),
    ],
)
def test_refusals_name_the_path(data: dict[str, Any], message: str) -> None:
    with pytest.raises(RecordError, match=message):
        schema.read(Record, data, "record")


@dataclass(frozen=True)
class WithMessages:
    messages: tuple[ChatMessageJSON, ...]


def test_a_typed_dict_is_read_by_its_keys_and_kept_as_a_dict() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    data = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [call]}]}
    rec = schema.read(WithMessages, data, "record")
    assert rec.messages[1] == {"role": "assistant", "tool_calls": [call]}
    assert schema.write(rec) == data
    for bad, error in (
        ({"content": "hi"}, "lacks the key 'role'"),  # NotRequired keys are optional, the others are not
        ({"role": "user", "name": "x"}, "unknown key 'name'"),
        ({"role": "user", "weight": 0.5}, r"\['weight'\] must be an integer"),
    ):
        with pytest.raises(RecordError, match=error):
            schema.read(WithMessages, {"messages": [bad]}, "record")
