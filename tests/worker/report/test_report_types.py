"""The report's typed parts (ground floor) keep in step with the stage results they copy (worker): the same
fields, in the same order, with the same defaults; a field added to a stage's result fails here before a
report with it is refused in production."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from tunegate import report, report_evaluation
from worker.evaluation import sequential
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
    *(
        (getattr(report_evaluation, name), getattr(evaluate, name))
        for name in (
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
    ),
    (report_evaluation.Evaluation, evaluate.EvalResult),
    (report_evaluation.Strata, sequential.Strata),
    (report.ScreenVerdict, score.Verdict),
    (report.AdapterCheck, repair.AdapterCheck),
    (report.ReportRepair, repair.RepairResult),
]


@pytest.mark.parametrize(("typed", "stage"), PAIRS, ids=[p[0].__name__ for p in PAIRS])
def test_the_report_s_part_has_the_stage_s_fields(typed: type, stage: type) -> None:
    assert _fields(typed) == _fields(stage)


def test_the_report_s_mitigation_holds_every_field_of_the_stage_s_result() -> None:
    names = [f.name for f in dataclasses.fields(report.ReportMitigation)]
    assert [f.name for f in dataclasses.fields(mitigate.MitigateResult)] == names[: len(names) - 5]
    assert names[-5:] == ["action", "note", "acted", "injected", "policy"]
