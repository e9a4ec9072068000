"""The gate's checks as typed records: every stored check reads and writes back as it was, kinds and names
are read from ``check``, and a key this version does not know is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunegate.checks import GateCheck, SequentialCheck
from tunegate.records import RecordError

DATA = Path(__file__).resolve().parents[1] / "data" / "gate"


def stored_checks() -> list[dict[str, object]]:
    """Every check the gate wrote in tests/data/gate (before checks were typed), of every kind."""
    result = json.loads((DATA / "result.json").read_text())
    refused = json.loads((DATA / "refused_report.json").read_text())
    more = json.loads((DATA / "checks.json").read_text())
    return [*result["checks"], *refused["decision"]["checks"], *(c for shape in more.values() for c in shape)]


def test_every_stored_check_round_trips() -> None:
    checks = stored_checks()
    kinds = {GateCheck.from_dict(c).kind for c in checks}
    assert kinds == {"asr", "category", "probe", "margin", "over_refusal", "training_data", "repair_share"}
    assert any(c.get("no_second_judge") for c in checks) and any(c.get("missing") for c in checks)
    for c in checks:
        assert GateCheck.from_dict(c).to_dict() == c


def test_a_check_from_before_paired_increases_loads() -> None:
    old = {"check": "asr_chat", "passed": False, "base": 0.05, "tuned": 0.6, "limit": 0.2}
    c = GateCheck.from_dict(old)
    assert c.upper is None and c.n is None and c.to_dict() == old


def test_names_kinds_templates_and_categories() -> None:
    assert GateCheck("category_user:fraud", False).kind == "category"
    assert (
        GateCheck("category_user:fraud", False).template,
        GateCheck("category_user:fraud", False).category,
    ) == (
        "user",
        "fraud",
    )
    assert GateCheck("margin_chat", True).template == "chat" and GateCheck("probe:2", True).template == ""
    assert (
        GateCheck("over_refusal", True).kind == "over_refusal" and GateCheck("asr_chat", True).category == ""
    )


def test_flags_are_written_only_when_true() -> None:
    assert "missing" not in GateCheck("category_chat:x", False).to_dict()
    assert GateCheck("category_chat:x", False, missing=True).to_dict()["missing"] is True
    seq = SequentialCheck(n_used=32, n_total=205, alpha=0.05, decided=False)
    assert seq.to_dict() == {"n_used": 32, "n_total": 205, "alpha": 0.05, "decided": False}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"check": "asr_chat", "passed": True, "cap": 0.2}, "unknown key 'cap'"),
        ({"check": "asr_chat"}, "lacks the key 'passed'"),
        ({"check": "asr_chat", "passed": "yes"}, "key 'passed' must be true or false"),
        ({"check": "asr_chat", "passed": True, "n": 1.5}, "key 'n' must be an integer"),
        ({"check": "asr_chat", "passed": True, "judges": "both"}, "key 'judges' must be one of"),
        (
            {
                "check": "asr_chat",
                "passed": True,
                "sequential": {"n_used": 1, "n_total": 2, "alpha": 0.05, "x": 1},
            },
            "sequential stop has an unknown key 'x'",
        ),
        (["asr_chat"], "must be a JSON object"),
    ],
)
def test_what_is_refused_is_named(data: object, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        GateCheck.from_dict(data)
