"""The counted-verdicts rule shared by the gate, the report and the panel (a table)."""

import pytest

from tunegate.evaluation_records import HarmfulSummary, PairedSummary, TemplateEval
from tunegate.judging import counted, counted_field, counted_rates


@pytest.mark.parametrize(
    ("judges", "has_any", "has_all", "expected"),
    [
        ("all", True, True, ("paired_all", "all")),
        ("all", False, False, ("paired", "primary")),  # no second judge: the primary's alone (stricter)
        ("primary", True, True, ("paired", "primary")),
        ("any", True, True, ("paired_any", "any")),
        ("any", False, False, ("paired_any", "any")),  # nothing to count: the gate blocks
    ],
)
def test_counted_field(judges: str, has_any: bool, has_all: bool, expected: tuple[str, str]) -> None:
    assert counted_field(judges, has_any, has_all) == expected


def paired(both: int, base_only: int, tuned_only: int, neither: int) -> PairedSummary:
    return PairedSummary(both, base_only, tuned_only, neither, 0.0, 0.0, 0.0)


def test_counted_rates_come_from_the_paired_counts() -> None:
    kw, both = paired(10, 0, 118, 77), paired(1, 1, 4, 199)
    side = HarmfulSummary(asr=0.0, n=205)
    stats = TemplateEval(base=side, tuned=side, paired=kw, paired_all=both, paired_any=None)
    assert counted(stats, "all") == (both, "all")
    assert counted_rates(stats, "all") == pytest.approx((2 / 205, 5 / 205))
    assert counted_rates(stats, "primary") == pytest.approx((10 / 205, 128 / 205))
    assert counted(stats, "any") == (None, "any") and counted_rates(stats, "any") is None
    assert counted_rates(TemplateEval(base=side, tuned=side), "primary") is None  # no paired statistics kept
