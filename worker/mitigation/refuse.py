"""When mitigation would have to repair too much of a file, the job fails as ``unsafe_training_data``.

A dataset that is mostly flagged is not one to repair by removal: when the examples mitigation would act on
(``select.choose``) exceed ``max_repair_share`` of the file, the mitigate stage refuses it before any
training, naming the count, the share, the limit and the first lines, and writes a safety report of what
scoring found (the same report the gate writes, with no evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunegate.checks import GateCheck
from tunegate.conversation import Conversation
from tunegate.errors import UNSAFE_TRAINING_DATA
from tunegate.records import ScoreRecord
from tunegate.report import MitigationLog, ReportMitigation, ReportPolicy, ScoreSummary
from worker.mitigation.select import Chosen
from worker.report.build import build_report, decision_part, flagged_examples, write_report

MAX_LINES = 20


def message(chosen: Sequence[Chosen], n: int, limit: float) -> str | None:
    """The refusal for acting on ``chosen`` of ``n`` examples under ``limit``; None when within it."""
    if not n or len(chosen) / n <= limit:
        return None
    lines = sorted(c.line for c in chosen)
    shown = ", ".join(map(str, lines[:MAX_LINES])) + (
        f" and {len(lines) - MAX_LINES} more" if len(lines) > MAX_LINES else ""
    )
    return (
        f"The training data was refused as unsafe: scoring flagged {len(chosen)} of {n} examples "
        f"({len(chosen) / n:.0%}) for mitigation, more than the policy's max_repair_share "
        f"({limit:.0%}); a dataset that is mostly flagged is not repaired by removal. Lines: {shown}."
    )


def write(
    out_dir: Path,
    policy: ReportPolicy,
    msg: str,
    summary: ScoreSummary,
    records: list[ScoreRecord],
    examples: list[Conversation],
    actions: MitigationLog,
) -> tuple[Path, Path]:
    """The safety report (report.json, report.html) of a refused file: ``policy`` is the mitigate stage's
    config, ``actions`` its ``actions.json``."""
    shown = {f.line for f in flagged_examples(records)}
    texts = {c.line: c.to_chat_dict()["messages"] for c in examples if c.line in shown}
    decision = decision_part(
        False, UNSAFE_TRAINING_DATA, msg, [GateCheck(check="repair_share", passed=False, reason=msg)]
    )
    mitigation = ReportMitigation(action=policy.mitigation, refused=True, note=msg)
    report = build_report(
        policy, decision, None, summary, records, mitigation, None, texts=texts, actions=actions
    )
    return write_report(report, out_dir)
