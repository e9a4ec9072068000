"""The report dict's optional details: the flagged examples' text and the mitigation log reach report.html."""

from __future__ import annotations

from pathlib import Path

from tests.utils.records import score_record
from worker.report.build import build_report, flagged_examples, write_report


def test_texts_and_actions_reach_the_written_page(tmp_path: Path) -> None:
    records = [score_record(n, float(n)) for n in (1, 2)]
    decision = {"released": True, "code": None, "message": "ok", "checks": []}
    texts = {
        2: [{"role": "user", "content": "the riskiest request"}, {"role": "assistant", "content": "Sure"}]
    }
    actions = {"acted": [{"line": 2, "action": "drop"}], "injected": [], "policy": {"min_risk": 1.0}}
    report = build_report({}, decision, {}, None, records, {"n_input": 2}, None, texts=texts, actions=actions)
    assert (
        report["scoring"]["flagged"][0]["messages"] == texts[2]
        and "messages" not in report["scoring"]["flagged"][1]
    )
    assert report["mitigation"]["acted"] == actions["acted"]
    _, html_path = write_report(report, tmp_path)
    html = html_path.read_text()
    assert "the riskiest request" in html and "dropped: not trained on" in html
    plain = build_report({}, decision, {}, None, records, None, None)
    assert "messages" not in plain["scoring"]["flagged"][0] and "acted" not in plain["mitigation"]


def test_the_flagged_examples_are_the_riskiest_as_report_json_always_held_them() -> None:
    records = [
        score_record(n, r, percentiles={"selfinf": r}, reasons=(f"r{n}",))
        for n, r in ((1, 5.0), (2, 9.0), (3, 5.0))
    ]
    assert [r.line for r in flagged_examples(records, n=2)] == [
        2,
        1,
    ]  # riskiest first; a tie keeps file order
    report = build_report({}, {"released": True}, {}, None, records, None, None)
    assert report["scoring"]["risk"] == [5.0, 9.0, 5.0]
    assert report["scoring"]["flagged"][0] == {
        "line": 2,
        "risk": 9.0,
        "percentiles": {"selfinf": 9.0},
        "reasons": ["r2"],
    }
    assert (
        flagged_examples(None) == []
        and build_report({}, {}, {}, None, None, None, None)["scoring"]["flagged"] == []
    )
