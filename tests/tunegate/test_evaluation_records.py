"""The evaluation's records, declared once on the ground floor: they write the JSON the evaluation always
wrote, read it back strictly, and an evaluation keeps what was written (a count not recorded stays -1)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tunegate.evaluation_records import BareExample, Evaluation, HarmfulRecord, Strata
from tunegate.records import RecordError

DATA = Path(__file__).resolve().parents[1] / "data" / "gate"

KEYWORD = {
    "prompt": "p",
    "category": "fraud",
    "response": "Sure",
    "jailbroken": True,
    "score": None,
    "judge": "keyword",
}


def test_a_harmful_record_writes_its_keys_in_order_and_the_probe_s_only_when_it_ran() -> None:
    r = HarmfulRecord.from_dict(KEYWORD)
    assert r.score is None and not r.has_probe
    assert list(r.to_dict()) == list(KEYWORD) and r.to_dict() == KEYWORD  # score: null is kept
    probed = HarmfulRecord.from_dict({**KEYWORD, "probe_p": 0.25, "probe_jailbroken": False})
    assert list(probed.to_dict()) == [*KEYWORD, "probe_p", "probe_jailbroken"]
    assert (probed.counted("primary"), probed.counted("all"), probed.counted("any")) == (True, False, True)
    with pytest.raises(ValueError, match="probe's verdict"):
        r.counted("all")
    with pytest.raises(RecordError, match="surprise"):
        HarmfulRecord.from_dict({**KEYWORD, "surprise": 1})
    with pytest.raises(RecordError, match="jailbroken"):
        HarmfulRecord.from_dict({**KEYWORD, "jailbroken": "yes"})


def _evaluation(examples: list[dict[str, Any]]) -> dict[str, Any]:
    side = {"asr": 0.5, "n": 10, "per_category": {"fraud": 0.5}}  # no n_jailbroken: written before counts
    return {
        "judge": "keyword",
        "max_new_tokens": 8,
        "templates": {"chat": {"base": side, "tuned": side}},
        "over_refusal": {"base": {"refusal_rate": 0.1, "n": 10}, "tuned": {"refusal_rate": 0.3, "n": 10}},
        "jailbroken_examples": examples,
    }


def test_jailbroken_examples_are_records_or_bare_examples_written_back_as_read() -> None:
    bare = [{"category": "fraud", "prompt": "p", "response": "Sure"}, {"prompt": "q", "response": "Sure"}]
    ev = Evaluation.from_dict(_evaluation([KEYWORD, *bare]))
    assert isinstance(ev.jailbroken_examples[0], HarmfulRecord)
    assert ev.jailbroken_examples[1:] == (BareExample("p", "Sure", "fraud"), BareExample("q", "Sure"))
    assert ev.to_dict()["jailbroken_examples"] == [KEYWORD, *bare]
    with pytest.raises(RecordError, match="jailbroken_examples"):
        Evaluation.from_dict(_evaluation([{"prompt": "p"}]))


def test_a_count_not_recorded_stays_so_until_the_evaluate_stage_derives_it() -> None:
    ev = Evaluation.from_dict(_evaluation([]))
    chat = ev.templates["chat"]
    assert ev.over_refusal is not None
    assert chat.tuned.n_jailbroken == -1 and ev.over_refusal.tuned.n_refused == -1  # the report shows that
    assert ev.to_dict() == Evaluation.from_dict(ev.to_dict()).to_dict()
    counted = ev.with_counts()
    assert counted.over_refusal is not None
    assert counted.templates["chat"].tuned.n_jailbroken == 5 and counted.over_refusal.tuned.n_refused == 3


def test_the_stored_report_s_evaluation_round_trips() -> None:
    data = json.loads((DATA / "report.json").read_text())["evaluation"]
    ev = Evaluation.from_dict(data)
    assert ev.to_dict() == data
    stop = ev.templates["chat"].sequential
    assert stop is not None and stop.early and isinstance(stop.strata["primary"], Strata)
    assert stop.strata["primary"].counts().n == stop.n_used
