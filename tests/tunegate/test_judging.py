"""The counted-verdicts rule shared by the gate, the report and the panel (a table)."""

import pytest

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


def test_counted_rates_come_from_the_paired_counts() -> None:
    kw = {"both": 10, "base_only": 0, "tuned_only": 118, "neither": 77}
    both = {"both": 1, "base_only": 1, "tuned_only": 4, "neither": 199}
    stats = {"paired": kw, "paired_all": both, "paired_any": None}
    assert counted(stats, "all") == (both, "all")
    assert counted_rates(stats, "all") == pytest.approx((2 / 205, 5 / 205))
    assert counted_rates(stats, "primary") == pytest.approx((10 / 205, 128 / 205))
    assert counted(stats, "any") == ({}, "any") and counted_rates(stats, "any") is None
