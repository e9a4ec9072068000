"""Policy actions on tool-calling examples: down-weighting keeps the calls, the tools and the outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.utils.records import score_record
from tunegate.conversation import check_example, load_examples
from tunegate.records import ScoreRecord
from worker.mitigation.select import Acted, Chosen, apply, choose, downweight

DATA = Path(__file__).resolve().parents[2] / "data" / "tools.jsonl"


def test_downweight_keeps_tool_calls_and_tools() -> None:
    for conv in load_examples(DATA):
        new = downweight(conv)
        assert [(m.role, m.content, m.tool_calls, m.tool_call_id) for m in new.messages] == [
            (m.role, m.content, m.tool_calls, m.tool_call_id) for m in conv.messages
        ]
        assert new.tools == conv.tools and new.parallel_tool_calls == conv.parallel_tool_calls
        last = max(i for i, m in enumerate(conv.messages) if m.role == "assistant")
        assert new.messages[last].weight == 0.0


def test_a_call_only_example_down_weighted_is_excluded() -> None:
    convs = load_examples(DATA)
    call_only = next(c for c in convs if c.messages[-1].tool_calls)  # its one assistant turn calls a tool
    multi = next(c for c in convs if len(c.text_replies) > 1 or len(c.user_turns) > 1)
    chosen = [
        Chosen(score_record(call_only.line), ("cluster",)),
        Chosen(score_record(multi.line), ("cluster",)),
    ]
    kept, log = apply(convs, chosen, "downweight")
    by_line = {e.line: e for e in log}
    assert by_line[call_only.line].excluded is True and by_line[multi.line].excluded is False
    assert (
        by_line[call_only.line].to_dict()["excluded"] is True
        and "excluded" not in by_line[multi.line].to_dict()
    )
    assert call_only.line not in {c.line for c in kept} and multi.line in {c.line for c in kept}
    assert all(check_example(c) == [] for c in kept)


def _recs(n: int, beyond: set[int], risk: dict[int, float] | None = None) -> list[ScoreRecord]:
    risk = risk or {}
    return [
        score_record(i, risk.get(i, 10.0 + i * 0.1), beyond_reference=i in beyond) for i in range(1, n + 1)
    ]


@pytest.mark.parametrize(
    ("beyond", "cluster", "risk", "expected"),
    [
        # benign-like: nothing beyond the reference, no cluster, nothing risky enough: nothing
        (set(), [], {}, {}),
        # only the top fraction at or above min_risk (top 5% of 40 = 2 lines; line 7 is below 90)
        (set(), [], {3: 99.0, 7: 80.0}, {3: ["top_fraction"]}),
        # beyond the reference: every one, whatever their share (10 of 40, far over the top 5%)
        (set(range(11, 21)), [], {}, {i: ["beyond_reference"] for i in range(11, 21)}),
        # the flagged cluster, with one line also beyond the reference and ranked in the top fraction
        (
            {5},
            [5, 6, 8],
            {5: 100.0},
            {5: ["beyond_reference", "cluster", "top_fraction"], 6: ["cluster"], 8: ["cluster"]},
        ),
    ],
)
def test_choose_acts_on_what_scoring_found(
    beyond: set[int], cluster: list[int], risk: dict[int, float], expected: dict[int, list[str]]
) -> None:
    chosen = choose(_recs(40, beyond, risk), cluster, top_fraction=0.05, min_risk=90.0)
    assert {c.line: list(c.why) for c in chosen} == expected
    risks = [c.risk for c in chosen]
    assert risks == sorted(risks, reverse=True)  # riskiest first


def test_the_log_says_why() -> None:
    convs = load_examples(DATA)[:2]
    chosen = [Chosen(score_record(convs[0].line, 99.0, reasons=("long",)), ("cluster",))]
    _, log = apply(convs, chosen, "drop")
    assert log == [Acted(convs[0].line, "drop", 99.0, ("long",), ("cluster",))]
    entry = {"line": convs[0].line, "action": "drop", "risk": 99.0, "reasons": ["long"], "why": ["cluster"]}
    assert [e.to_dict() for e in log] == [entry]  # the actions.json entry as it always was
    assert chosen[0].to_dict() == {
        "line": convs[0].line,
        "risk": 99.0,
        "reasons": ["long"],
        "why": ["cluster"],
    }
