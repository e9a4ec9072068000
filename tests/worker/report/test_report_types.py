"""The report's typed parts (ground floor) keep in step with the stage results they copy (worker): the same
fields, in the same order, with the same defaults; a field added to a stage's result fails here before a
report with it is refused in production. The evaluation's records are not copies: the evaluate stage's are
the ground floor's own."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tunegate import evaluation_records, report
from worker.evaluation import math, sequential
from worker.stages import evaluate, mitigate, repair, score


def _default(f: dataclasses.Field[Any]) -> Any:
    """The field's default (a list for a sequence: the report's records are frozen, with tuples)."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    return list(value) if isinstance(value, list | tuple) else value


def _fields(cls: type) -> list[tuple[str, Any]]:
    return [(f.name, _default(f)) for f in dataclasses.fields(cls)]


PAIRS = [
    (report.ScreenVerdict, score.Verdict),
    (report.AdapterCheck, repair.AdapterCheck),
    (report.ReportRepair, repair.RepairResult),
]

EVALUATION_RECORDS = (
    "HarmfulSummary",
    "PairedStats",
    "PairedSummary",
    "SequentialStop",
    "TemplateEval",
    "Margin",
    "Refusals",
    "OverRefusal",
    "ProbeEval",
    "JudgeAgreement",
    "Judges",
)


@pytest.mark.parametrize("name", EVALUATION_RECORDS)
def test_the_evaluate_stage_declares_no_record_of_its_own(name: str) -> None:
    record = getattr(evaluation_records, name)
    assert getattr(evaluate, name, record) is record


def test_the_evaluate_stage_s_result_is_the_report_s_evaluation() -> None:
    assert issubclass(evaluate.EvalResult, evaluation_records.Evaluation)
    assert _fields(evaluate.EvalResult) == _fields(evaluation_records.Evaluation)
    assert sequential.Strata is evaluation_records.Strata
    assert math.PairedCounts is evaluation_records.PairedCounts


@pytest.mark.parametrize(("typed", "stage"), PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_the_report_s_part_has_the_stage_s_fields(typed: type, stage: type) -> None:
    assert _fields(typed) == _fields(stage)


def test_the_report_s_mitigation_holds_every_field_of_the_stage_s_result() -> None:
    names = [f.name for f in dataclasses.fields(report.ReportMitigation)]
    assert [f.name for f in dataclasses.fields(mitigate.MitigateResult)] == names[: len(names) - 5]
    assert names[-5:] == ["action", "note", "acted", "injected", "policy"]
