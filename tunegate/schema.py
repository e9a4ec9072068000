"""Typed JSON records read strictly and written back as read: the safety report's parts (``tunegate.report``).

``read(cls, data, what)`` builds the dataclass ``cls`` from a JSON object by its type hints: a key the class
does not have is refused by name, a missing key without a default is refused by name, a value of the wrong
type is refused naming its path (``RecordError``, as ``tunegate.records`` does). A nested class with its own
``from_dict`` reads itself. ``write(obj)`` is the inverse: every field, a nested record with its own
``to_dict`` through it, tuples as lists; ``omit_none`` leaves out the fields that are None (records whose
keys are written only when they hold something, like a gate check's).

Types understood: dataclasses, ``TypedDict`` s (JSON objects of another module's schema, such as a chat
message: their keys checked like a record's, their values by their types, kept as dicts in the order read),
``bool``, ``int``, ``float`` (an int stays an int, so a record is written back as it was read), ``str``,
``None``, unions, ``Literal``, ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]`` and ``Any`` (any JSON value,
kept as it is: parts whose schema belongs to another module).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar, cast

from tunegate.jsontypes import JsonObject, JsonValue
from tunegate.records import RecordError, known_keys

T = TypeVar("T")


def read(cls: type[T], data: object, what: str) -> T:
    """The record ``cls`` from the JSON object ``data`` (``what`` names it in errors)."""
    fields = [f for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    data = known_keys(data, [f.name for f in fields], what)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields:
        if f.name in data:
            kwargs[f.name] = _value(hints[f.name], data[f.name], f"{what} key {f.name!r}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecordError(f"{what} lacks the key {f.name!r}")
    return cls(**kwargs)


def _value(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _value(a, value, where)
            except RecordError as exc:  # try the union's next member; all failing is reported below
                errors.append(str(exc))
        raise RecordError(errors[0] if len(errors) == 1 else f"{where} must be {_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise RecordError(f"{where} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if typing.is_typeddict(tp):
        return _typed_dict(tp, value, where)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        reader = getattr(tp, "from_dict", None)
        return reader(value) if reader is not None else read(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise RecordError(f"{where} must be a list, got {value!r}")
        items = [_value(args[0], x, f"{where}[{i}]") for i, x in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise RecordError(f"{where} must be a JSON object, got {value!r}")
        return {k: _value(args[1], v, f"{where}[{k!r}]") for k, v in value.items()}
    if tp is type(None) or tp is None:
        if value is not None:
            raise RecordError(f"{where} must be null, got {value!r}")
        return None
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif tp is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"{where}: no JSON reading for {tp!r}")
    if not ok:
        raise RecordError(f"{where} must be {_name(tp)}, got {value!r}")
    return value


def _typed_dict(tp: Any, value: Any, where: str) -> dict[str, Any]:
    """A JSON object of the ``TypedDict`` ``tp``: no key it lacks, every key it requires, each value read by
    its type. (Required keys are read from the hints: with postponed annotations, Python 3.11's
    ``__required_keys__`` counts a ``NotRequired`` key as required.)"""
    if not isinstance(value, dict):
        raise RecordError(f"{where} must be a JSON object, got {value!r}")
    hints = typing.get_type_hints(tp, include_extras=True)
    unknown = [k for k in value if k not in hints]
    if unknown:
        raise RecordError(f"{where} has an unknown key {unknown[0]!r} (known: {', '.join(hints)})")
    types_of, required = {}, []
    for key, hint in hints.items():
        origin = typing.get_origin(hint)
        if origin is typing.NotRequired or origin is typing.Required:
            types_of[key] = typing.get_args(hint)[0]
        else:
            types_of[key] = hint
        if origin is typing.Required or (origin is not typing.NotRequired and tp.__total__):
            required.append(key)
    missing = [k for k in required if k not in value]
    if missing:
        raise RecordError(f"{where} lacks the key {missing[0]!r}")
    return {k: _value(types_of[k], v, f"{where}[{k!r}]") for k, v in value.items()}


def _name(tp: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def write(obj: Any, *, omit_none: bool = False) -> JsonObject:
    """The JSON object of the record ``obj`` (a dataclass instance): each field's value written by
    ``jsonable``; with ``omit_none``, the fields that are None are left out."""
    out: JsonObject = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None and omit_none:
            continue
        out[f.name] = jsonable(value)
    return out


_SCALARS = frozenset({str, int, float, bool, type(None)})


def jsonable(value: object) -> JsonValue:
    """A value as JSON: a record through its own ``to_dict`` (else ``write``), tuples and lists as lists,
    dicts key by key, JSON scalars as they are; anything else is refused (a record must not hold it)."""
    kind = type(value)  # the built-in types first, by exact type (none is a record): the common case, cheap
    if kind in _SCALARS:
        return cast(JsonValue, value)
    if kind is dict and isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if kind is list and isinstance(value, list):
        return [jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_dict = getattr(value, "to_dict", None)
        return to_dict() if to_dict is not None else write(value)
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"not a JSON value: {type(value).__name__}")
