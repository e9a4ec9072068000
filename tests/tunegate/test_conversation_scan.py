"""The depth scan that runs before ``json.loads`` on every uploaded line: right, and linear in the line.

Issue 29.1: the scan stripped strings with a regex, which retried at each quote of an unterminated string;
a 1 MiB line of ``\\"`` ran for over 2 minutes holding the GIL, and the whole API waited.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunegate.conversation import MAX_JSON_DEPTH, decode_json_line, iter_lines, json_depth_exceeds
from tunegate.errors import InvalidFile

HEAD = '{"messages": [{"role": "user", "content": "'
MiB = 1 << 20
BOUND_S = 5.0  # generous (a loaded CI core): the scan takes tens of ms a MiB; the regex took minutes


def _fill(unit: str, size: int, head: str = "") -> str:
    return head + unit * ((size - len(head)) // len(unit))


# Lines shaped against a scan that backtracks or restarts: unterminated strings of escapes, runs of quotes,
# backslashes, brackets, and strings packed edge to edge.
HOSTILE = {
    "escaped_quotes_unterminated": lambda size: _fill('\\"', size, HEAD),
    "backslashes_unterminated": lambda size: _fill("\\", size, HEAD),
    "quotes": lambda size: _fill('"', size),
    "empty_strings": lambda size: "[" + _fill('"",', size) + '""]',
    "balanced_brackets": lambda size: _fill("[]", size),
    "brackets_in_a_string": lambda size: _fill("[{", size, '{"a": "') + '"}',
    "escaped_backslash_then_quote": lambda size: _fill('\\\\"', size, HEAD),
}


@pytest.mark.parametrize("size", [MiB, 4 * MiB], ids=["1MiB", "4MiB"])
@pytest.mark.parametrize("shape", sorted(HOSTILE))
def test_the_scan_is_linear_on_hostile_lines(shape: str, size: int) -> None:
    line = HOSTILE[shape](size)
    start = time.perf_counter()
    json_depth_exceeds(line)
    took = time.perf_counter() - start
    assert took < BOUND_S, f"the depth scan took {took:.2f} s on {len(line)} characters of {shape}"


@pytest.mark.parametrize("size", [MiB, 4 * MiB], ids=["1MiB", "4MiB"])
def test_the_hostile_line_is_refused_at_once_naming_the_line(size: int) -> None:
    """The issue's line through the whole decode: a 400-worthy ``InvalidFile`` naming line 2, in far under a
    second (before: over 2 minutes at 1 MiB)."""
    line = HOSTILE["escaped_quotes_unterminated"](size)
    start = time.perf_counter()
    with pytest.raises(
        InvalidFile, match=r"line 2: not valid JSON \(Unterminated string starting at column 43"
    ):
        decode_json_line(line, 2)
    took = time.perf_counter() - start
    assert took < BOUND_S, f"decoding the hostile line of {size} bytes took {took:.2f} s"


def test_reading_one_long_line_is_linear() -> None:
    """The line reader joins a line's chunks once (it re-split the whole line so far at every chunk)."""
    data = b'{"prompt": "' + b"x" * (16 * MiB) + b'", "completion": "y"}\n'
    start = time.perf_counter()
    ((line, text),) = list(iter_lines(io.BytesIO(data), chunk_size=4096))
    took = time.perf_counter() - start
    assert line == 1 and len(text) == len(data) - 1
    assert took < 2 * BOUND_S, f"reading a 16 MiB line in 4 KiB chunks took {took:.2f} s"


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


_TRICKY = st.text(st.sampled_from('[]{}"\\ax\n\u00e9'), max_size=12)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | _TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TRICKY, inner, max_size=3),
    max_leaves=60,
)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(_JSON, st.integers(min_value=0, max_value=8), st.booleans())
def test_the_scan_agrees_with_the_nesting_of_the_value(value: Any, limit: int, ascii_only: bool) -> None:
    """Brackets, quotes and backslashes inside strings never count; the depth of the value is what counts."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert json_depth_exceeds(text, limit) == (_depth(value) > limit)


def test_nesting_at_the_default_limit() -> None:
    assert not json_depth_exceeds("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH)
    assert json_depth_exceeds("[" * (MAX_JSON_DEPTH + 1))
    assert not json_depth_exceeds('"' + "[" * 100)  # an unterminated string: nothing in it counts
