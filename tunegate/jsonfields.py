"""JSON as the type of a pydantic field (an HTTP body's free-form object, a setting given as JSON).

pydantic cannot build ``tunegate.jsontypes.JsonValue`` (a recursive alias of read-only containers), so a
field holds pydantic's own ``JsonValue`` at run time: any JSON, validated as such. The type checker sees
``tunegate.jsontypes``' types instead, which every value pydantic's lets through is an instance of (a list is
a ``Sequence``, a dict a ``Mapping``): a value read out of such a field must be narrowed before it is used,
and the field passes as a ``JsonObject`` wherever one is expected. (One gap: pydantic refuses a tuple where
the type checker sees a ``Sequence``; what is put in such a field holds lists.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from tunegate.jsontypes import JsonObject, JsonValue

    JsonField: TypeAlias = JsonValue
    JsonObjectField: TypeAlias = JsonObject
else:
    import pydantic

    JsonField = pydantic.JsonValue
    JsonObjectField = dict[str, pydantic.JsonValue]

__all__ = ["JsonField", "JsonObjectField"]
