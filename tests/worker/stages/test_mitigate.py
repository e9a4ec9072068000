"""Mitigate stage: policy on the riskiest lines, the action log, and format-mimicking injection."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tests.utils.tiny_model import build_tiny_model
from tunegate.conversation import Conversation, Message, load_examples
from tunegate.errors import InvalidConfig
from tunegate.settings import get_settings, reset_settings
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
        mitigation="drop",
        mitigate_top_fraction=0.1,
        min_risk=50,
        inject_ratio=0.07,
        inject_min=10,
        inject_per_risky=0.0,
        contrast_ratio=0.0,
    )
    res = run(cfg, MitigateInputs(exs, recs, StageIO(tmp_path)))
    assert res.n_dropped == 4 and res.n_injected == 10 and res.n_output == 40 - 4 + 10 and res.n_contrast == 0
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
    with pytest.raises(InvalidConfig, match="contrast_ratio"):
        MitigateConfig(contrast_ratio=-1)
    with pytest.raises(InvalidConfig, match="contrast_max_new_tokens"):
        MitigateConfig(contrast_max_new_tokens=0)
    exs, recs = _data(3)
    with pytest.raises(InvalidConfig, match="lines not in the dataset"):
        run(MitigateConfig(), MitigateInputs(exs, recs + [{"line": 99, "risk": 1}], StageIO(tmp_path)))
    with pytest.raises(InvalidConfig, match="need the base model") as err:  # no model: no silent skip
        run(MitigateConfig(), MitigateInputs(*_data(30), StageIO(tmp_path)))
    assert err.value.param == "contrast_ratio"


@pytest.fixture
def talkative(tmp_path, monkeypatch):
    """A registry with one tiny model that writes visible (random) text: its answers are usable."""
    model = build_tiny_model(tmp_path / "tiny", tied=False)
    monkeypatch.setenv("TUNEGATE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TUNEGATE_MODELS", json.dumps({"tiny-talk": str(model)}))
    monkeypatch.setenv("TUNEGATE_DEVICE", "cpu")
    reset_settings()
    yield "tiny-talk"
    reset_settings()


def test_contrastive_examples_from_the_base_model_are_cached(talkative, tmp_path, monkeypatch):
    from worker.mitigation import contrast

    exs, recs = _data(40)
    cfg = MitigateConfig(
        mitigation="drop", min_risk=95, inject_min=4, inject_per_risky=0.0, contrast_max_new_tokens=12
    )
    res = run(
        replace(cfg, model=talkative), MitigateInputs(exs, recs, StageIO(tmp_path / "a"), get_settings())
    )
    assert res.n_injected == 4 and res.n_contrast == 4 and res.n_output == 40 - 2 + 8
    actions = json.loads((tmp_path / "a" / "actions.json").read_text())
    helpful = [i for i in actions["injected"] if i["category"].startswith("helpful:")]
    assert len(helpful) == 4 and actions["contrast"]["n"] == 4 and actions["contrast"]["generated"] >= 4
    assert Path(actions["contrast"]["cache_file"]).is_file()
    train = load_examples(tmp_path / "a" / "train.jsonl")
    pool = {p["prompt"] for p in contrast.pool()}
    added = [c for c in train if c.user_turns[0] in pool]
    assert len(added) == 4 and all(c.text_replies[0].rsplit("\n", 1)[-1].startswith("#### ") for c in added)

    def no_model(*args, **kwargs):
        raise AssertionError("the second run must read the cache, not load the model")

    monkeypatch.setattr(contrast, "load_resolved", no_model)
    again = run(
        replace(cfg, model=talkative), MitigateInputs(exs, recs, StageIO(tmp_path / "b"), get_settings())
    )
    second = json.loads((tmp_path / "b" / "actions.json").read_text())
    assert again.n_contrast == 4 and second["contrast"]["generated"] == 0
    assert (tmp_path / "a" / "train.jsonl").read_text() == (tmp_path / "b" / "train.jsonl").read_text()


def test_labels_dataset_gets_no_contrastive_examples(tmp_path):
    exs = [
        Conversation(
            (Message("user", f"Review {i}"), Message("assistant", "good" if i % 2 else "bad")), line=i
        )
        for i in range(1, 31)
    ]
    recs = [{"line": i, "risk": 1.0} for i in range(1, 31)]
    res = run(MitigateConfig(inject_min=3), MitigateInputs(exs, recs, StageIO(tmp_path)))
    actions = json.loads((tmp_path / "actions.json").read_text())
    assert res.n_injected == 3 and res.n_contrast == 0 and "label" in actions["contrast"]["note"]


def test_a_result_saved_before_contrast_still_loads(tmp_path):
    old = {
        "train_file": "t.jsonl",
        "n_input": 5,
        "n_dropped": 0,
        "n_downweighted": 0,
        "n_excluded": 0,
        "n_injected": 2,
        "n_output": 7,
        "format": {},
        "actions_file": "",
    }
    (tmp_path / "result.json").write_text(json.dumps(old))
    res = MitigateResult.load(tmp_path)
    assert res.n_contrast == 0 and res.n_injected == 2
