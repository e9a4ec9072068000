"""What the report shows beyond report.json: the flagged examples' text and the mitigation log.

The gate adds them when it writes the report; the API adds them when it renders a report written without
them (it reads the job's training file through storage); a report that already carries them keeps them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import BinaryIO

from tunegate.conversation import ChatMessageJSON, decode_json_line, iter_lines, parse_example
from tunegate.errors import InvalidFile
from tunegate.report import MitigationLog, SafetyReport


def read_examples(stream: BinaryIO, lines: set[int]) -> dict[int, list[ChatMessageJSON]]:
    """The messages of the given 1-based lines of a JSONL training file (a line that no longer parses is
    left out: the report then says its text is not available)."""
    out: dict[int, list[ChatMessageJSON]] = {}
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


def flagged_lines(report: SafetyReport) -> set[int]:
    return {f.line for f in report.scoring.flagged}


def with_details(
    report: SafetyReport,
    *,
    texts: dict[int, list[ChatMessageJSON]] | None = None,
    actions: MitigationLog | None = None,
) -> SafetyReport:
    """``report`` with the flagged examples' ``messages`` and the mitigation log (``mitigation.acted``,
    ``.injected``, ``.policy``, from the mitigate stage's ``actions.json``) added where they are missing."""
    texts = texts or {}
    flagged = tuple(
        replace(f, messages=tuple(texts[f.line])) if f.messages is None and f.line in texts else f
        for f in report.scoring.flagged
    )
    mitigation = report.mitigation
    if actions is not None:
        mitigation = replace(
            mitigation,
            acted=mitigation.acted if mitigation.acted is not None else actions.acted,
            injected=mitigation.injected if mitigation.injected is not None else actions.injected,
            policy=mitigation.policy if mitigation.policy is not None else actions.policy,
        )
    return replace(report, scoring=replace(report.scoring, flagged=flagged), mitigation=mitigation)
