"""What the report shows beyond report.json: the flagged examples' text and the mitigation log.

The API adds these when it renders (it reads the job's training file through storage and the mitigate
stage's ``actions.json``); a report dict that already carries them is left as it is.
"""

from __future__ import annotations

import copy
from typing import Any, BinaryIO

from tunegate.conversation import decode_json_line, iter_lines, parse_example
from tunegate.errors import InvalidFile


def read_examples(stream: BinaryIO, lines: set[int]) -> dict[int, list[dict[str, Any]]]:
    """The messages of the given 1-based lines of a JSONL training file (a line that no longer parses is
    left out: the report then says its text is not available)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for number, text in iter_lines(stream):
        if number in lines:
            try:
                conv = parse_example(decode_json_line(text, number), number)
            except InvalidFile:
                continue
            out[number] = list(conv.to_chat_dict()["messages"])
            if len(out) == len(lines):
                break
    return out


def flagged_lines(report: dict[str, Any]) -> set[int]:
    flagged = (report.get("scoring") or {}).get("flagged") or []
    return {f["line"] for f in flagged if isinstance(f.get("line"), int)}


def with_details(
    report: dict[str, Any],
    *,
    texts: dict[int, list[dict[str, Any]]] | None = None,
    actions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A copy of ``report`` with the flagged examples' ``messages`` and the mitigation log
    (``mitigation.acted``, ``.injected``, ``.policy``) added where they are missing."""
    out = copy.deepcopy(report)
    for f in (out.get("scoring") or {}).get("flagged") or []:
        if "messages" not in f and texts and f.get("line") in texts:
            f["messages"] = texts[f["line"]]
    if actions:
        mitigation = out.setdefault("mitigation", {})
        for key, source in (("acted", "acted"), ("injected", "injected"), ("policy", "policy")):
            if key not in mitigation and source in actions:
                mitigation[key] = actions[source]
    return out
