"""Lone UTF-16 surrogates: text that JSON can carry but UTF-8 cannot.

JSON's ``\\ud800`` escapes decode to a Python ``str`` holding a surrogate code point (a valid pair such as
``\\ud83d\\ude00`` becomes one astral character, so any surrogate left in a decoded string is a lone one).
Such a string cannot be encoded as UTF-8: a tokenizer, a JSON response or a PostgreSQL text column fails
on it. Input is refused where it enters (the upload's line checks, the API's request edge) naming the field;
text already stored is made printable on its way out (``escaped``, ``replaced``).
"""

from __future__ import annotations

import re
from typing import Any

SURROGATE = re.compile("[\ud800-\udfff]")
# A JSON escape of a surrogate in the raw text of a line: the cheap test before walking the decoded value
# (an escaped backslash before "ud800" also matches, which only costs the walk).
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def has_surrogate(text: str) -> bool:
    return SURROGATE.search(text) is not None


def escaped(text: str) -> str:
    """``text`` with each lone surrogate written as its six-character escape ``\\udXXX`` (encodable)."""
    if SURROGATE.search(text) is None:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def replaced(value: Any) -> Any:
    """``value`` (a decoded JSON value) with every lone surrogate in its strings and keys replaced by U+FFFD;
    the same object when there is none (no copy on the common path)."""
    if not holds_surrogate(value):
        return value
    return _replace(value)


def holds_surrogate(value: Any) -> bool:
    """Whether any string (or key) of a decoded JSON value holds a lone surrogate (a fast walk, no paths)."""
    search = SURROGATE.search
    if isinstance(value, str):  # most fields: one string, no walk
        return search(value) is not None
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def _replace(value: Any) -> Any:
    if isinstance(value, str):
        return SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_replace(k): _replace(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_replace(v) for v in value)
    return value


def _child(path: str, key: object) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    name = escaped(str(key))
    return f"{path}.{name}" if path else name


def lone_surrogate_path(value: Any, path: str = "") -> str | None:
    """Where the first string (or object key) holding a lone surrogate is in a decoded JSON value, as a field
    path like ``messages[0].content`` or ``metadata.key`` (``path`` names ``value`` itself; "" for the root,
    which an empty path then names); None when there is none. Iterative: any depth, linear time."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            if SURROGATE.search(item):
                return where
        elif isinstance(item, dict):
            children = []
            for k, v in item.items():
                child = _child(where, k)
                if isinstance(k, str) and SURROGATE.search(k):
                    return child
                children.append((child, v))
            stack.extend(reversed(children))
        elif isinstance(item, list | tuple):
            stack.extend(reversed([(_child(where, i), v) for i, v in enumerate(item)]))
    return None
