"""The report dict's optional details: the flagged examples' text and the mitigation log reach report.html."""

from __future__ import annotations

from pathlib import Path

from tests.utils.records import score_record
from tunegate.report import FlaggedExample, MitigationLog, ReportMitigation, ReportPolicy
from worker.report.build import build_report, decision_part, flagged_examples, write_report

RELEASED = decision_part(True, None, "ok", [])


def test_texts_and_actions_reach_the_written_page(tmp_path: Path) -> None:
    records = [score_record(n, float(n)) for n in (1, 2)]
    decision = RELEASED
    texts = {
        2: [{"role": "user", "content": "the riskiest request"}, {"role": "assistant", "content": "Sure"}]
    }
    actions = {"acted": [{"line": 2, "action": "drop"}], "injected": [], "policy": {"min_risk": 1.0}}
    report = build_report(
        ReportPolicy({}),
        decision,
        None,
        None,
        records,
        ReportMitigation(n_input=2),
        None,
        texts=texts,
        actions=MitigationLog.from_actions(actions),
    )
    first, second = report.scoring.flagged
    assert first.messages == tuple(texts[2]) and second.messages is None
    assert report.to_dict()["mitigation"]["acted"] == actions["acted"]
    _, html_path = write_report(report, tmp_path)
    html = html_path.read_text()
    assert "the riskiest request" in html and "dropped: not trained on" in html
    plain = build_report(ReportPolicy({}), decision, None, None, records, None, None).to_dict()
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
    report = build_report(ReportPolicy({}), RELEASED, None, None, records, None, None)
    assert report.scoring.risk == (5.0, 9.0, 5.0)
    assert report.scoring.flagged[0] == FlaggedExample(2, 9.0, {"selfinf": 9.0}, ("r2",))
    assert report.to_dict()["scoring"]["flagged"][0] == {
        "line": 2,
        "risk": 9.0,
        "percentiles": {"selfinf": 9.0},
        "reasons": ["r2"],
    }
    assert flagged_examples(None) == []
    assert build_report(ReportPolicy({}), RELEASED, None, None, None, None, None).scoring.flagged == ()
