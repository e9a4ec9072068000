"""The report dict's optional details: the flagged examples' text and the mitigation log reach report.html."""

from __future__ import annotations

from pathlib import Path

from worker.report.build import build_report, write_report


def test_texts_and_actions_reach_the_written_page(tmp_path: Path) -> None:
    records = [{"line": n, "risk": float(n), "percentiles": {}, "reasons": []} for n in (1, 2)]
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
