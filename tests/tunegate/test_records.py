"""Typed score and scan records: their JSON is the one written before they were typed, byte for byte; a key
of another version is refused by name; an older score record loads through the upgrade path."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.utils.records import score_record
from tunegate.records import RecordError, ScanRecord, ScoreRecord, upgrade

# scores.jsonl as the score stage wrote it before records were typed (commit aa527c3): the tiny test model on
# tests/worker/stages/test_score.py's five examples, batch size 2, reason_percentile 1 (so every record has
# reasons, the numbered list's and the math answer's with their format tags)
STORED = Path(__file__).resolve().parents[1] / "data" / "scores.jsonl"


def _stored_lines() -> list[str]:
    return STORED.read_text(encoding="utf-8").splitlines()


def _dump(record: ScoreRecord | ScanRecord) -> str:
    return json.dumps(record.to_dict(), ensure_ascii=False)  # as worker.stages.score.write_records does


@pytest.mark.parametrize("n", range(5))
def test_a_stored_line_round_trips_byte_for_byte(n: int) -> None:
    line = _stored_lines()[n]
    record = ScoreRecord.from_dict(json.loads(line))
    assert _dump(record) == line
    assert ScoreRecord.from_dict(record.to_dict()) == record
    assert record.line == n + 1 and record.reasons and isinstance(record.reasons, tuple)


def test_the_stored_records_are_read_as_typed_values() -> None:
    first, _, third, *_ = (ScoreRecord.from_dict(json.loads(x)) for x in _stored_lines())
    assert first.features.math and not first.features.numbered_list and third.features.numbered_list
    assert "format: numbered list" in third.reasons and first.reasons[-1] == "format: math"
    assert set(first.percentiles) == {"representation", "gradient", "selfinf"}
    assert first.beyond_reference is False and first.n_response_tokens == first.features.response_tokens
    assert first.scores() == {s: first.score(s) for s in ("representation", "gradient", "selfinf")}
    assert all(isinstance(v, float) for v in first.scores().values())


def test_a_built_record_round_trips() -> None:
    record = score_record(7, 99.5, beyond_reference=True, percentiles={"selfinf": 99.5}, reasons=("why",))
    assert ScoreRecord.from_dict(json.loads(_dump(record))) == record
    no_grad = replace(record, gradient=None, grad_sq_norm=None)
    assert ScoreRecord.from_dict(json.loads(_dump(no_grad))) == no_grad and no_grad.score("gradient") is None


def test_numbers_are_written_back_as_they_were_read() -> None:
    """An integer in a stored record stays one (an int risk is not rewritten as 5.0)."""
    data = json.loads(_stored_lines()[0]) | {"risk": 5, "percentiles": {"selfinf": 100}}
    assert _dump(ScoreRecord.from_dict(data)) == json.dumps(data, ensure_ascii=False)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda d: d | {"novelty": 0.3}, "unknown key 'novelty'"),
        (lambda d: d | {"features": d["features"] | {"emoji": True}}, "features has an unknown key 'emoji'"),
        (lambda d: {k: v for k, v in d.items() if k != "risk"}, "lacks the key 'risk'"),
        (lambda d: {k: v for k, v in d.items() if k != "features"}, "lacks the key 'features'"),
        (lambda d: d | {"line": "3"}, "key 'line' must be an integer"),
        (lambda d: d | {"line": True}, "key 'line' must be an integer"),
        (lambda d: d | {"risk": None}, "key 'risk' must be a number"),
        (lambda d: d | {"gradient": "high"}, "key 'gradient' must be a number"),
        (lambda d: d | {"beyond_reference": 1}, "key 'beyond_reference' must be true or false"),
        (lambda d: d | {"reasons": "one reason"}, "key 'reasons' must be a list of strings"),
        (lambda d: d | {"percentiles": {"selfinf": "99"}}, "key 'percentiles' must be an object of numbers"),
    ],
)
def test_a_record_of_another_shape_is_refused_naming_the_key(change: Any, named: str) -> None:
    data = change(json.loads(_stored_lines()[0]))
    with pytest.raises(RecordError, match=named):
        ScoreRecord.from_dict(data)


def test_a_record_that_is_no_object_is_refused() -> None:
    with pytest.raises(RecordError, match="must be a JSON object, got list"):
        ScoreRecord.from_dict([1, 2])


def test_a_record_from_before_beyond_reference_loads_as_not_beyond() -> None:
    """Records written before the cluster test (commit 029165f) have no ``beyond_reference``."""
    old = {k: v for k, v in json.loads(_stored_lines()[2]).items() if k != "beyond_reference"}
    record = ScoreRecord.from_dict(old)
    assert record.beyond_reference is False and record.line == 3
    assert record.to_dict() == upgrade(old) == old | {"beyond_reference": False}
    assert list(record.to_dict()) == list(json.loads(_stored_lines()[2]))  # the key back in its place
    assert upgrade(json.loads(_stored_lines()[2])) == json.loads(_stored_lines()[2])  # current: untouched


SCAN_LINE = {
    "line": 3,
    "rank": 1,
    "risk": 97.25,
    "percentiles": {"representation": 97.2},
    "reasons": [
        "representation above 97% ...",
        "it is among the riskiest 5% of the file, with a risk of at least 90",
    ],
    "why": ["top_fraction"],
    "action": "downweight",
    "text": "user: Name a colour.\n\nassistant: Blue \u00e9",
}


def test_a_scan_record_round_trips_and_refuses_what_it_does_not_know() -> None:
    line = json.dumps(SCAN_LINE, ensure_ascii=False)
    record = ScanRecord.from_dict(json.loads(line))
    assert _dump(record) == line and record.action == "downweight" and record.why == ("top_fraction",)
    with pytest.raises(RecordError, match="scan record has an unknown key 'id'"):
        ScanRecord.from_dict(SCAN_LINE | {"id": "line-3"})
    with pytest.raises(RecordError, match="scan record key 'action' must be one of keep, downweight"):
        ScanRecord.from_dict(SCAN_LINE | {"action": "delete"})
    with pytest.raises(RecordError, match="scan record lacks the key 'text'"):
        ScanRecord.from_dict({k: v for k, v in SCAN_LINE.items() if k != "text"})
