"""Assemble the safety report (JSON) and render it as a self-contained HTML page (tunegate.reporting)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunegate.artifacts import atomic_write_json, atomic_write_text
from tunegate.records import ScoreRecord
from tunegate.reporting import render_report
from tunegate.reporting.details import with_details

MAX_FLAGGED = 20


def flagged_examples(records: Sequence[ScoreRecord] | None, n: int = MAX_FLAGGED) -> list[ScoreRecord]:
    """The ``n`` riskiest records (the report shows them), riskiest first; ties keep file order."""
    return sorted(records or [], key=lambda r: -r.risk)[:n]


def flagged_entry(r: ScoreRecord) -> dict[str, Any]:
    """A flagged example as ``report.json`` holds it (``scoring.flagged``, read by ``tunegate.reporting``)."""
    return {"line": r.line, "risk": r.risk, "percentiles": dict(r.percentiles), "reasons": list(r.reasons)}


def build_report(
    policy: dict[str, Any],
    decision: dict[str, Any],
    evaluation: dict[str, Any],
    score_summary: dict[str, Any] | None,
    score_records: Sequence[ScoreRecord] | None,
    mitigation: dict[str, Any] | None,
    training: dict[str, Any] | None,
    *,
    texts: dict[int, list[dict[str, Any]]] | None = None,
    actions: dict[str, Any] | None = None,
    repair: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report dict (the input contract of ``tunegate.reporting``). ``texts`` (line -> the example's chat
    messages) adds the flagged examples' text; ``actions`` (the mitigate stage's ``actions.json``) adds what
    mitigation did to each line and the injected safety examples; ``repair`` (the repair stage's result, when
    the gate would have blocked the adapter for erosion) adds the adapter before and after each repair, and
    ``evaluation`` is then the evaluation the gate decided on (the repaired adapter's when one passed)."""
    report = {
        "decision": {k: decision.get(k, []) for k in ("released", "code", "message", "checks", "warnings")},
        "policy": policy,
        "scoring": {
            "summary": score_summary or {},
            "risk": [float(r.risk) for r in score_records or []],
            "flagged": [flagged_entry(r) for r in flagged_examples(score_records)],
        },
        "mitigation": mitigation or {"action": "none", "note": "mitigation was off"},
        "training": training or {},
        "evaluation": evaluation,
    }
    if repair is not None:
        report["repair"] = repair
    return with_details(report, texts=texts, actions=actions)


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    js = atomic_write_json(out_dir / "report.json", report)
    html = atomic_write_text(out_dir / "report.html", render_report(report))
    return js, html
