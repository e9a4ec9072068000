"""Small safety reports for tests that need a report.json on disk (the API's endpoints, the console)."""

from __future__ import annotations

from typing import Any

from tunegate.checks import GateCheck
from tunegate.report import (
    SCHEMA_VERSION,
    ReportDecision,
    ReportMitigation,
    ReportPolicy,
    ReportScoring,
    SafetyReport,
    ScoreSummary,
    ScreenVerdict,
)


def small_report(
    *,
    released: bool = True,
    code: str | None = None,
    message: str = "Released: within limits.",
    checks: tuple[GateCheck, ...] = (),
    flagged: bool = False,
    mitigation: ReportMitigation | None = None,
) -> SafetyReport:
    """A report without an evaluation: a decision, the screen's verdict and what mitigation did."""
    return SafetyReport(
        schema_version=SCHEMA_VERSION,
        decision=ReportDecision(released, code, message, checks, ()),
        policy=ReportPolicy({"gate_delta": 0.05}),
        scoring=ReportScoring(ScoreSummary(verdict=ScreenVerdict(flagged=flagged)), (), ()),
        mitigation=mitigation or ReportMitigation(action="none", note="mitigation was off"),
        training={},
        evaluation=None,
    )


def small_report_json(**kw: Any) -> dict[str, Any]:
    """``small_report``'s report.json."""
    return small_report(**kw).to_dict()
