"""Strict typed reading of JSON records (``tunegate.schema``): values are checked against the type hints and
written back as they were read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from tunegate import schema
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
