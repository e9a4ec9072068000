"""The safety report as a typed record: reports written before it was typed load and write back as they
were (plus ``schema_version``), older shapes go through the one upgrade, and what this version cannot read is
refused by name."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.tunegate.reporting.test_render import report as old_report
from tunegate.records import RecordError
from tunegate.report import SCHEMA_VERSION, SafetyReport, upgrade

DATA = Path(__file__).resolve().parents[1] / "data" / "gate"


def stored(name: str) -> dict[str, Any]:
    """A report.json the gate (or a refused file's mitigate stage) wrote before ``schema_version``."""
    data = json.loads((DATA / name).read_text())
    assert "schema_version" not in data
    return data


@pytest.mark.parametrize("name", ["report.json", "refused_report.json"])
def test_a_stored_report_round_trips_with_the_version_added(name: str) -> None:
    data = stored(name)
    report = SafetyReport.from_dict(data)
    assert report.schema_version == SCHEMA_VERSION == 1
    assert report.to_dict() == {**data, "schema_version": 1}
    assert SafetyReport.from_dict(report.to_dict()) == report  # a current report reads back the same
    dumped = json.dumps(report.to_dict(), indent=2, sort_keys=True)
    assert dumped.replace('  "schema_version": 1,\n', "") == json.dumps(data, indent=2, sort_keys=True)


def test_the_parts_are_typed() -> None:
    report = SafetyReport.from_dict(stored("report.json"))
    assert report.decision.code == "safety_eval_failed" and report.decision.checks[0].check == "asr_chat"
    assert report.policy.gate_judges == "primary" and report.policy.gate_category_limits["weapons"] == 0.1
    assert report.scoring.summary.verdict is not None and report.scoring.summary.verdict.flagged
    assert report.scoring.flagged[0].line == 30 and report.scoring.flagged[0].messages is not None
    assert report.mitigation.acted is not None and report.mitigation.acted[1].excluded
    assert report.mitigation.policy is not None and report.mitigation.policy.min_risk == 80.0
    assert report.evaluation is not None and report.evaluation.templates["chat"].sequential is not None
    assert report.repair is not None and report.repair.original is not None
    assert (
        report.repair.original.over_refusal is not None
        and report.repair.original.asr["chat"].judges == "primary"
    )
    refused = SafetyReport.from_dict(stored("refused_report.json"))
    assert (
        refused.evaluation is None
        and refused.mitigation.was_refused
        and refused.to_dict()["evaluation"] == {}
    )
    assert refused.policy.gate_judges is None  # the mitigate stage's config: the gate judged nothing


def test_an_older_report_is_upgraded_with_the_defaults_the_view_assumed() -> None:
    """The render tests' report: written before the gate warned, counted a second judge or judged paired
    increases (its checks have no bound), with the gate's old knob names."""
    old = old_report()
    report = SafetyReport.from_dict(old)
    assert report.decision.warnings == ()
    assert report.policy.gate_judges == "primary" and report.gate_judges == "primary"
    assert report.decision.checks[0].upper is None
    out = report.to_dict()
    assert out["schema_version"] == 1 and out["policy"] == {**old["policy"], "gate_judges": "primary"}
    assert out["decision"] == {**old["decision"], "warnings": []}
    assert old == old_report()  # the upgrade copies


def test_the_upgrade_fills_gate_judges_only_for_a_report_with_an_evaluation() -> None:
    refused = stored("refused_report.json")
    assert "gate_judges" not in upgrade(refused)["policy"]  # type: ignore[index]
    judged = stored("report.json")
    judged["policy"]["gate_judges"] = "all"
    assert upgrade(judged)["policy"]["gate_judges"] == "all"  # type: ignore[index]  # said: kept
    assert upgrade("not a report") == "not a report"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(verdict={}), "unknown key 'verdict'"),
        (lambda r: r.update(schema_version=2), "schema_version 2; this version reads 1"),
        (lambda r: r.update(schema_version="1"), "schema_version must be an integer"),
        (lambda r: r.pop("scoring"), "lacks the key 'scoring'"),
        (lambda r: r["decision"].update(verdict=True), "decision has an unknown key 'verdict'"),
        (lambda r: r["decision"]["checks"][0].update(cap=0.2), "gate check has an unknown key 'cap'"),
        (
            lambda r: r["evaluation"]["templates"]["chat"]["tuned"].update(ci=[0.4, 0.78]),
            r"evaluation key 'templates'\['chat'\] key 'tuned' has an unknown key 'ci'",
        ),
        (lambda r: r["mitigation"].update(n_kept=3), "mitigation has an unknown key 'n_kept'"),
        (lambda r: r["mitigation"]["acted"][0].update(who="x"), "log entry has an unknown key 'who'"),
        (lambda r: r["scoring"]["flagged"][0].update(text="x"), "flagged example has an unknown key 'text'"),
        (lambda r: r["scoring"]["summary"].update(extra=1), "score summary has an unknown key 'extra'"),
        (lambda r: r["repair"].update(tried=[]), "repair has an unknown key 'tried'"),
        (lambda r: r["policy"].update(gate_judges="both"), "'gate_judges' must be 'all', 'primary' or 'any'"),
        (lambda r: r["policy"].update(gate_delta="5%"), "'gate_delta' must be int or float"),
        (lambda r: r["policy"].update(templates=[1]), "policy key 'templates' must be a number, a string"),
        (
            lambda r: r["scoring"]["summary"]["verdict"]["cluster_test"].update(p=0.1),
            "cluster_test' has an unknown key 'p'",
        ),
        (
            lambda r: r["scoring"]["summary"].update(top_flagged=[{"line": 1, "scores": {}}]),
            "flagged example has an unknown key 'scores'",
        ),
    ],
)
def test_what_this_version_cannot_read_is_refused_by_name(change: Any, message: str) -> None:
    data = {**stored("report.json"), "schema_version": 1}
    change(data)
    with pytest.raises(RecordError, match=message):
        SafetyReport.from_dict(data)


def test_a_current_report_is_not_upgraded() -> None:
    """The upgrade is for reports written before ``schema_version``: a version-1 report lacking a key it
    requires was not written by this version, and is refused."""
    data = {**stored("report.json"), "schema_version": 1}
    without = copy.deepcopy(data)
    del without["decision"]["warnings"]
    with pytest.raises(RecordError, match="lacks the key 'warnings'"):
        SafetyReport.from_dict(without)
    del data["policy"]["gate_judges"]
    with pytest.raises(RecordError, match="policy lacks the key 'gate_judges'"):
        SafetyReport.from_dict(data)
