"""Assemble the safety report (``tunegate.report.SafetyReport``), write it as report.json and render it as a
self-contained HTML page (tunegate.reporting)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from tunegate.artifacts import atomic_write_json, atomic_write_text
from tunegate.checks import GateCheck
from tunegate.conversation import ChatMessageJSON
from tunegate.evaluation_records import Evaluation
from tunegate.jsontypes import JsonObject
from tunegate.records import ScoreRecord
from tunegate.report import (
    NO_MITIGATION,
    SCHEMA_VERSION,
    FlaggedExample,
    MitigationLog,
    ReportDecision,
    ReportMitigation,
    ReportPolicy,
    ReportRepair,
    ReportScoring,
    SafetyReport,
    ScoreSummary,
)
from tunegate.reporting import render_report
from tunegate.reporting.details import with_details

MAX_FLAGGED = 20


def flagged_examples(records: Sequence[ScoreRecord] | None, n: int = MAX_FLAGGED) -> list[ScoreRecord]:
    """The ``n`` riskiest records (the report shows them), riskiest first; ties keep file order."""
    return sorted(records or [], key=lambda r: -r.risk)[:n]


def flagged_entry(r: ScoreRecord) -> FlaggedExample:
    """A flagged example as the report holds it (``scoring.flagged``)."""
    return FlaggedExample(r.line, r.risk, dict(r.percentiles), tuple(r.reasons))


def decision_part(
    released: bool, code: str | None, message: str, checks: Sequence[GateCheck], warnings: Sequence[str] = ()
) -> ReportDecision:
    """The report's decision (the gate's result, a refused file's refusal)."""
    return ReportDecision(released, code, message, tuple(checks), tuple(warnings))


def build_report(
    policy: ReportPolicy,
    decision: ReportDecision,
    evaluation: Evaluation | None,
    score_summary: ScoreSummary | None,
    score_records: Sequence[ScoreRecord] | None,
    mitigation: ReportMitigation | None,
    training: JsonObject | None,
    *,
    texts: dict[int, list[ChatMessageJSON]] | None = None,
    actions: MitigationLog | None = None,
    repair: ReportRepair | None = None,
) -> SafetyReport:
    """The report (the input of ``tunegate.reporting``) from the stages' results, read as the report's parts
    (``ReportPolicy.from_dict(asdict(config))`` ...): the gate's config (``policy``), ``evaluation`` (None for
    none), the score stage's summary and records, the mitigate stage's result (None: mitigation was off), the
    train stage's as it saves it. ``texts`` (line -> the example's chat messages) adds the flagged examples'
    text; ``actions`` (the mitigate stage's ``actions.json``) adds what mitigation did to each line and the
    injected safety examples; ``repair`` (the repair stage's result, when the gate would have blocked the
    adapter for erosion) adds the adapter before and after each repair, and ``evaluation`` is then the
    evaluation the gate decided on (the repaired adapter's when one passed)."""
    report = SafetyReport(
        schema_version=SCHEMA_VERSION,
        decision=decision,
        policy=policy,
        scoring=ReportScoring(
            summary=score_summary or ScoreSummary(),
            risk=tuple(float(r.risk) for r in score_records or []),
            flagged=tuple(flagged_entry(r) for r in flagged_examples(score_records)),
        ),
        mitigation=mitigation or ReportMitigation.from_dict(NO_MITIGATION),
        training=training or {},
        evaluation=_evaluation(evaluation),
        repair=repair,
    )
    return with_details(report, texts=texts, actions=actions)


def _evaluation(evaluation: Evaluation | None) -> Evaluation | None:
    """The report's evaluation: the record (a stage's ``EvalResult``, field for field, as the report reads it
    back)."""
    if evaluation is None:
        return None
    return Evaluation(**{f.name: getattr(evaluation, f.name) for f in fields(Evaluation)})


def write_report(report: SafetyReport, out_dir: Path) -> tuple[Path, Path]:
    js = atomic_write_json(out_dir / "report.json", report.to_dict())
    html = atomic_write_text(out_dir / "report.html", render_report(report))
    return js, html
