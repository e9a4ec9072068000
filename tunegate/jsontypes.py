"""The static type of a JSON value, for the places where JSON really is the boundary (a user's file, an
HTTP body, a database JSON column, a record written out). Inside the code, data travels as typed records
(``tunegate.report``, ``tunegate.evaluation_records``); ``JsonObject`` is what they are written as and read
from. Unlike ``dict[str, Any]``, a ``JsonValue`` read out of it must be narrowed before it is used.

At run time (where ``typing.get_type_hints`` resolves a record's fields for ``tunegate.schema``) the two are
plain "any JSON value" types, so a record may hold a ``JsonObject`` field: the type checker sees the
recursive type, the strict reader keeps the value as read (another module's schema checks it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

JsonScalar: TypeAlias = str | int | float | bool | None
if TYPE_CHECKING:
    # the containers are read-only (covariant), so a ``list[str]`` or a ``dict[str, float]`` is one too
    JsonValue: TypeAlias = "JsonScalar | Sequence[JsonValue] | Mapping[str, JsonValue]"
    JsonObject: TypeAlias = "dict[str, JsonValue]"
else:
    JsonValue = Any
    JsonObject = dict[str, JsonValue]
