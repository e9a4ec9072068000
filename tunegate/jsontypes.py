"""The static type of a JSON value, for the places where JSON really is the boundary (a user's file, an
HTTP body, a database JSON column, a record written out). Inside the code, data travels as typed records
(``tunegate.report``, ``tunegate.evaluation_records``); ``JsonObject`` is what they are written as and read
from. Unlike ``dict[str, Any]``, a ``JsonValue`` read out of it must be narrowed before it is used."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

JsonScalar: TypeAlias = str | int | float | bool | None
# the containers are read-only (covariant), so a ``list[str]`` or a ``dict[str, float]`` is a JsonValue too
JsonValue: TypeAlias = "JsonScalar | Sequence[JsonValue] | Mapping[str, JsonValue]"
JsonObject: TypeAlias = "dict[str, JsonValue]"
