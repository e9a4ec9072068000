"""Mitigate stage: policy on the riskiest lines, the action log, and format-mimicking injection."""

import json

import pytest

from tunegate.conversation import Conversation, Message, load_examples
from tunegate.errors import InvalidConfig
from worker.mitigation import select
from worker.ml.stage_io import StageIO
from worker.stages.mitigate import MitigateConfig, MitigateInputs, MitigateResult, run


def _data(n=40):
    exs, recs = [], []
    for i in range(1, n + 1):
        exs.append(
            Conversation(
                (
                    Message("user", f"What is {i} + {i}?"),
                    Message("assistant", f"{i} + {i} = {2 * i}\n#### {2 * i}"),
                ),
                line=i,
            )
        )
        recs.append(
            {"line": i, "risk": float(i * 100 / n), "percentiles": {"selfinf": i}, "reasons": [f"r{i}"]}
        )
    return exs, recs


def test_drop_riskiest_and_inject(tmp_path):
    exs, recs = _data()
    cfg = MitigateConfig(
        mitigation="drop", mitigate_top_fraction=0.1, min_risk=50, inject_ratio=0.07, inject_min=10
    )
    res = run(cfg, MitigateInputs(exs, recs, StageIO(tmp_path)))
    assert res.n_dropped == 4 and res.n_injected == 10 and res.n_output == 40 - 4 + 10
    actions = json.loads((tmp_path / "actions.json").read_text())
    assert sorted(a["line"] for a in actions["acted"]) == [37, 38, 39, 40]
    assert actions["acted"][-1]["reasons"] == ["r40"] and len(actions["injected"]) == 10
    train = load_examples(tmp_path / "train.jsonl")
    users = {c.user_turns[0] for c in train}
    assert not users & {f"What is {i} + {i}?" for i in (37, 38, 39, 40)} and "What is 36 + 36?" in users
    injected = [
        c
        for c in train
        if c.assistant_turns[0].rsplit("\n", 1)[-1].startswith("#### ") and "=" not in c.assistant_turns[0]
    ]
    assert len(injected) == 10
    assert MitigateResult.load(tmp_path).format["response_kind"] == "final_answer"


def test_min_risk_limits_action_and_downweight_multiturn(tmp_path):
    exs, recs = _data(10)
    multi = Conversation(
        (
            Message("user", "hi"),
            Message("assistant", "hello"),
            Message("user", "and?"),
            Message("assistant", "risky part"),
        ),
        line=10,
    )
    exs[-1] = multi
    cfg = MitigateConfig(
        mitigation="downweight", mitigate_top_fraction=0.3, min_risk=85, inject_safety_examples=False
    )
    res = run(cfg, MitigateInputs(exs, recs, StageIO(tmp_path)))
    # top 30% = lines 10, 9, 8 but only risk >= 85 (lines 10 and 9) are acted on
    assert res.n_downweighted == 2 and res.n_excluded == 1 and res.n_injected == 0
    train = {c.user_turns[0]: c for c in load_examples(tmp_path / "train.jsonl")}
    assert "What is 9 + 9?" not in train and "What is 8 + 8?" in train
    assert [m.weight for m in train["hi"].messages if m.role == "assistant"] == [1.0, 0.0]


def test_none_action_keeps_everything(tmp_path):
    exs, recs = _data(12)
    res = run(
        MitigateConfig(mitigation="none", inject_safety_examples=False),
        MitigateInputs(exs, recs, StageIO(tmp_path)),
    )
    assert res.n_output == 12 and res.n_dropped == res.n_downweighted == 0


def test_select_is_deterministic_on_ties():
    recs = [{"line": i, "risk": 50.0} for i in (3, 1, 2)]
    assert [r["line"] for r in select.risky(recs, 0.6, 0)] == [1, 2]


def test_validation(tmp_path):
    with pytest.raises(InvalidConfig, match="mitigation"):
        MitigateConfig(mitigation="delete")  # type: ignore[arg-type]
    with pytest.raises(InvalidConfig, match="inject_ratio"):
        MitigateConfig(inject_ratio=2)
    exs, recs = _data(3)
    with pytest.raises(InvalidConfig, match="lines not in the dataset"):
        run(MitigateConfig(), MitigateInputs(exs, recs + [{"line": 99, "risk": 1}], StageIO(tmp_path)))
