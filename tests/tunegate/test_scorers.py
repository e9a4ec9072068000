"""The scorer table: a spec declared wrong is refused, the derived helpers read the table when called, and a
registered scorer without a typed field of the score record is carried in its ``extra`` (written beside the
other raw values, read back, refused once the scorer is gone)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from tests.utils.records import score_record
from tests.worker.scoring.scorers import throwaway_scorer
from tunegate.records import RAW_FIELDS, RecordError, ScoreRecord, extra_names
from tunegate.scorers import (
    SCORERS,
    ScorerSpec,
    label,
    needs_direction,
    needs_gradient,
    parse_reason,
    raw_names,
)


def test_the_shipped_table() -> None:
    assert list(SCORERS) == ["representation", "gradient", "selfinf"]
    assert raw_names(SCORERS) == RAW_FIELDS[:-1] and RAW_FIELDS[-1] == "grad_sq_norm"  # every one typed
    assert extra_names() == ()
    assert not needs_gradient(["representation"]) and needs_gradient(["selfinf"])
    assert needs_direction(["gradient"]) and not needs_direction(["representation", "selfinf"])


def test_a_reason_reads_back_and_is_labelled() -> None:
    spec = SCORERS["selfinf"]
    reason = spec.reason(97.4)
    assert reason == f"selfinf above 97% of the reference benign corpus: {spec.why}"
    assert parse_reason(reason) == ("selfinf", "97", spec.why) and parse_reason("format: math") is None
    assert label("selfinf") == "training influence (Self-Inf-N)" and label("novelty") == "novelty"


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"name": "self inf"}, "letters, digits and '_' only"),
        ({"companions": ("a,b",)}, "letters, digits and '_' only"),
        ({"label": ""}, "its label is one non-empty line"),
        ({"why": "two\nlines"}, "its why is one non-empty line"),
        ({"needs_direction": True}, "the gradient direction is read with the gradient"),
    ],
)
def test_a_scorer_declared_wrong_is_refused(fields: dict[str, object], why: str) -> None:
    kw: dict[str, object] = {"name": "s", "label": "s", "why": "s", **fields}
    with pytest.raises(ValueError, match=why):
        ScorerSpec(**kw)  # type: ignore[arg-type]


def test_a_registered_scorer_without_a_field_is_carried_in_extra() -> None:
    with throwaway_scorer() as spec:
        assert needs_gradient([spec.name]) is False and extra_names() == (spec.name,)
        record = replace(score_record(3), extra={spec.name: 12.0})
        data = record.to_dict()
        assert list(data)[list(data).index("grad_sq_norm") + 1] == spec.name and data[spec.name] == 12.0
        assert ScoreRecord.from_dict(json.loads(json.dumps(data))) == record
        assert record.score(spec.name) == 12.0 and record.scores()[spec.name] == 12.0
        assert score_record(4).score(spec.name) is None  # registered, not run on that record
        with pytest.raises(RecordError, match=f"key '{spec.name}' must be a number"):
            ScoreRecord.from_dict(data | {spec.name: "long"})
    with pytest.raises(RecordError, match=f"unknown key '{spec.name}'"):
        ScoreRecord.from_dict(data)
    with pytest.raises(KeyError, match=f"no raw score '{spec.name}'"):
        record.score(spec.name)
    with pytest.raises(ValueError, match="extra values have typed fields: gradient"):
        replace(record, extra={"gradient": 0.1})
