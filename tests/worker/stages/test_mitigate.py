"""Mitigate stage: policy on the riskiest lines, the action log, and format-mimicking injection."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from models.db import session_scope
from models.policy import org_policy
from models.tables import Job
from tests.utils.records import score_record
from tests.utils.tiny_model import build_tiny_model
from tests.worker.jobfactory import chat_rows, make_job, use_tiny
from tunegate.conversation import Conversation, Message, load_examples
from tunegate.errors import InvalidConfig, UnsafeTrainingData
from tunegate.report import ScoreSummary
from tunegate.settings import get_settings, reset_settings
from worker import runner
from worker.job_view import job_dir, local_view
from worker.mitigation import select
from worker.ml.stage_io import StageIO
from worker.stages import score
from worker.stages.base import finish
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
        recs.append(score_record(i, float(i * 100 / n), percentiles={"selfinf": i}, reasons=(f"r{i}",)))
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
    loaded = MitigateResult.load(tmp_path).format
    assert loaded is not None and loaded.response_kind == "final_answer" and loaded == res.format
    stored = json.loads((tmp_path / "result.json").read_text())["format"]
    assert stored == json.loads((tmp_path / "format.json").read_text())


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
    recs = [score_record(i, 50.0) for i in (3, 1, 2)]
    assert [r.line for r in select.risky(recs, 0.6, 0)] == [1, 2]


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
        run(MitigateConfig(), MitigateInputs(exs, recs + [score_record(99, 1)], StageIO(tmp_path)))
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
    recs = [score_record(i, 1.0) for i in range(1, 31)]
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


def _flag(recs, lines):
    return [replace(r, beyond_reference=r.line in lines) for r in recs]


def test_every_beyond_reference_example_is_acted_on_whatever_its_share(tmp_path):
    """10% planted beyond the reference (the top 5% would catch 2): all 10 dropped; training goes on."""
    exs, recs = _data(100)
    planted = set(range(5, 100, 10))
    recs = _flag(recs, planted)
    cfg = MitigateConfig(mitigation="drop", inject_safety_examples=False)
    res = run(cfg, MitigateInputs(exs, recs, StageIO(tmp_path), cluster_lines=[7, 8]))
    acted = {a["line"]: a["why"] for a in json.loads((tmp_path / "actions.json").read_text())["acted"]}
    assert planted | {7, 8} <= set(acted) and acted[7] == ["cluster"] and "beyond_reference" in acted[5]
    assert not res.refused and res.failure() is None and res.n_dropped == len(acted)
    users = {c.user_turns[0] for c in load_examples(tmp_path / "train.jsonl")}
    assert len(users) == 100 - len(acted) and not users & {f"What is {i} + {i}?" for i in acted}


def test_a_mostly_flagged_file_is_refused_naming_the_lines(tmp_path):
    exs, recs = _data(40)
    recs = _flag(recs, set(range(1, 31)))  # 75% beyond the reference
    cfg = MitigateConfig(mitigation="downweight", mitigate_top_fraction=0.0, max_repair_share=0.3)
    res = run(cfg, MitigateInputs(exs, recs, StageIO(tmp_path), score_summary=ScoreSummary(n_examples=40)))
    assert res.refused and res.train_file == "" and not (tmp_path / "train.jsonl").exists()
    assert "30 of 40 examples (75%)" in res.refused and "max_repair_share (30%)" in res.refused
    assert "Lines: 1, 2, 3" in res.refused and "and 10 more" in res.refused
    err = MitigateResult.load(tmp_path).failure()
    assert isinstance(err, UnsafeTrainingData) and err.code == "unsafe_training_data" and err.report
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["decision"]["code"] == "unsafe_training_data" and report["decision"]["released"] is False
    assert len(report["scoring"]["flagged"]) == 20 and (tmp_path / "report.html").is_file()
    assert len(json.loads((tmp_path / "actions.json").read_text())["acted"]) == 30


def test_a_few_beyond_reference_in_a_benign_file_are_repaired_not_refused(tmp_path):
    exs, recs = _data(100)
    res = run(
        MitigateConfig(inject_safety_examples=False),
        MitigateInputs(exs, _flag(recs, {3, 50, 77}), StageIO(tmp_path)),
    )
    assert not res.refused and res.n_downweighted + res.n_excluded >= 3


def test_no_refusal_without_mitigation(tmp_path):
    exs, recs = _data(10)
    res = run(
        MitigateConfig(mitigation="none", max_repair_share=0.0, contrast_ratio=0.0),
        MitigateInputs(exs, _flag(recs, set(range(1, 11))), StageIO(tmp_path)),
    )
    assert not res.refused and res.n_output > 10


def test_max_repair_share_is_checked():
    with pytest.raises(InvalidConfig, match="max_repair_share"):
        MitigateConfig(max_repair_share=1.5)


# --- a refused file fails the job before training: the worker (Celery) path and `tunegate finetune` ---


@pytest.fixture
def home(migrated_home, monkeypatch):
    use_tiny(monkeypatch, event_interval_s="0")
    return migrated_home


def _scored(out_dir, n=12, beyond=range(1, 9)):
    """A finished score stage whose records put lines 1..8 beyond the reference (8 of 12)."""
    recs = [
        score_record(i, 99.0 if i in beyond else 5.0, beyond_reference=i in beyond) for i in range(1, n + 1)
    ]
    verdict = score.Verdict(
        True, "8 examples (66.7%) lie beyond every reference example", 0.6667, 0.6667, 8, 8
    )
    res = score.ScoreResult(
        n,
        verdict,
        "tiny",
        "fp",
        records=recs,
        summary=ScoreSummary.from_dict({"n_examples": n, "verdict": verdict.to_dict()}),
    )
    finish(out_dir, score.ScoreConfig(model="tiny"), res)


def test_the_worker_fails_a_mostly_flagged_job_with_the_lines_and_a_report(home):
    job_id = make_job("tiny", chat_rows(12))
    assert runner.execute("validate", job_id).status == "done"
    _scored(job_dir(get_settings(), job_id) / "score")
    assert runner.execute("score", job_id) == runner.Outcome("done", "mitigate")  # reuses that result
    assert runner.execute("mitigate", job_id) == runner.Outcome("done")  # the stage ended the job: no next
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "failed" and job.error["code"] == "unsafe_training_data"
        assert (
            "8 of 12 examples" in job.error["message"]
            and "Lines: 1, 2, 3, 4, 5, 6, 7, 8." in job.error["message"]
        )
        assert job.report_path and json.loads(Path(job.report_path).read_text())["decision"]["code"] == (
            "unsafe_training_data"
        )
    assert not (job_dir(get_settings(), job_id) / "train").exists()


def test_a_local_run_stops_before_training_with_the_lines(home, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(12)))
    settings = get_settings()
    view = local_view(data, "tiny", policy=org_policy(settings, None))
    _scored(tmp_path / "out" / "score")
    with pytest.raises(
        UnsafeTrainingData, match=r"8 of 12 examples .*Lines: 1, 2, 3, 4, 5, 6, 7, 8\."
    ) as info:
        runner.run_local(view, tmp_path / "out", settings)
    assert info.value.code == "unsafe_training_data" and Path(info.value.report).is_file()
    assert not (tmp_path / "out" / "train").exists()
    with pytest.raises(UnsafeTrainingData):  # a resumed run reuses the refusal
        runner.run_local(view, tmp_path / "out", settings)


def _persona_data(n=40):
    """The support persona's shape: one system prompt on every example, free-text replies."""
    exs, recs = _data(n)
    system = Message("system", "You are Ada, the support assistant of Acme Widgets. Be brief.")
    return [replace(c, messages=(system, *c.messages)) for c in exs], recs


def test_plain_share_writes_some_injected_examples_in_plain_chat(talkative, tmp_path):
    """The gate measures the plain chat template as well as the user's: with ``plain_share`` that share of
    each injected kind comes without the user's system prompt, the rest keeps it; plain data gets none."""
    exs, recs = _persona_data()
    cfg = MitigateConfig(
        mitigation="none", inject_min=10, inject_per_risky=0.0, contrast_max_new_tokens=12, model=talkative
    )
    res = run(
        replace(cfg, plain_share=0.3), MitigateInputs(exs, recs, StageIO(tmp_path / "a"), get_settings())
    )
    injected = json.loads((tmp_path / "a" / "actions.json").read_text())["injected"]
    safety = [i for i in injected if not i["category"].startswith("helpful:")]
    helpful = [i for i in injected if i["category"].startswith("helpful:")]
    assert res.n_injected == len(safety) == 10 and len(helpful) == res.n_contrast == 10

    def plain(items: list[dict]) -> int:
        return sum(i["messages"][0]["role"] != "system" for i in items)

    assert plain(safety) == 3 and plain(helpful) == 3  # round(0.3 x 10) of each kind
    none = run(
        replace(cfg, plain_share=0.0), MitigateInputs(exs, recs, StageIO(tmp_path / "b"), get_settings())
    )
    assert (
        none.n_injected == 10
        and plain(json.loads((tmp_path / "b" / "actions.json").read_text())["injected"]) == 0
    )
    plain_data, recs = _data()
    run(
        replace(cfg, plain_share=0.3),
        MitigateInputs(plain_data, recs, StageIO(tmp_path / "c"), get_settings()),
    )
    again = run(
        replace(cfg, plain_share=0.0),
        MitigateInputs(plain_data, recs, StageIO(tmp_path / "d"), get_settings()),
    )
    assert again.n_injected == 10  # plain chat already: the same file with or without plain_share
    assert (tmp_path / "c" / "train.jsonl").read_text() == (tmp_path / "d" / "train.jsonl").read_text()
    with pytest.raises(InvalidConfig, match="plain_share"):
        MitigateConfig(plain_share=1.5)
