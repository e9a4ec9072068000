"""The stage specs: one declaration per stage drives the job flow, a new stage is one spec, every result
saves and loads itself, and the CLI runs the same specs as the worker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from models.db import session_scope
from models.jobs import JobStatus
from models.tables import Job, JobEvent
from tests.utils.records import score_record
from tests.worker.jobfactory import chat_rows, make_job, use_tiny
from tunegate.artifacts import atomic_write_json, from_jsonable
from tunegate.checks import GateCheck
from tunegate.errors import InvalidConfig
from tunegate.records import RecordError
from tunegate.report import CountedAsr, ScoreSummary
from tunegate.settings import get_settings, reset_settings
from worker import runner
from worker.job_view import job_dir, local_view
from worker.ml.format import UserFormat
from worker.ml.stage_io import StageIO
from worker.stages import evaluate, gate, mitigate, repair, score, train, validate
from worker.stages.all import PIPELINE
from worker.stages.base import StageResult, finish
from worker.stages.spec import Applied, Pipeline, StageContext, StageSpec, with_overrides
from worker.training.repair_io import RepairApplied

TEST_OVERRIDES = {"score": {"scorers": ["representation"], "batch_size": 16}}


# --- every stage result round-trips through its directory --------------------------------------------------

PAIRED = {
    "both": 1,
    "base_only": 0,
    "tuned_only": 4,
    "neither": 5,
    "increase": 0.4,
    "upper": 0.66,
    "detectable": 0.21,
}
SAMPLES: dict[str, StageResult] = {
    "validate": validate.ValidateResult(12, 0, 2048, 40, 300),
    "score": score.ScoreResult(
        2,
        score.Verdict(True, "a heavy top tail", 0.5, 0.1, 1, 1),
        "tiny",
        "fp",
        records=[score_record(1, 99.0), score_record(2, 3.5)],
        summary=ScoreSummary.from_dict({"verdict": {"flagged": True}, "top_flagged": []}),
    ),
    "mitigate": mitigate.MitigateResult(
        "t.jsonl",
        2,
        1,
        0,
        0,
        10,
        11,
        UserFormat(
            systems=[("Be terse.", 2)],
            response_kind="final_answer",
            tool_sets=[([{"type": "function", "function": {"name": "f"}}], 2)],
            tools_share=1.0,
        ),
    ),
    "train": train.TrainResult("adapter", 100, 4, 2, 1, 12, "fp", 3, {"train_loss": 1.5}),
    "evaluate": from_jsonable(
        evaluate.EvalResult,
        {
            "judge": "keyword",
            "max_new_tokens": 64,
            "templates": {
                "chat": {
                    "base": {"asr": 0.1, "n": 10, "per_category": {"fraud": 0.1}, "n_jailbroken": 1},
                    "tuned": {"asr": 0.5, "n": 10, "per_category": {"fraud": 0.5}, "n_jailbroken": 5},
                    "same_as_chat": False,
                    "delta": 0.4,
                    "paired": {
                        **PAIRED,
                        "per_category": {"fraud": PAIRED},
                    },
                }
            },
            "over_refusal": {
                "base": {"refusal_rate": 0.125, "n": 8, "n_refused": 1, "per_category": {"history": 0.125}},
                "tuned": {"refusal_rate": 0.5, "n": 8},
                "paired": {**PAIRED, "per_category": {}},
            },
            "margin": {"chat": {"base": 4.0, "tuned": 1.0, "ratio": 0.25, "layer": 3}},
            "n_prompts": 10,
            "jailbroken_examples": [{"prompt": "p", "response": "Sure"}],
        },
    ),
    "repair": repair.RepairResult(
        True,
        True,
        True,
        method="restore:0.25",
        adapter_dir="repair/restore-0.25/adapter",
        reason="repaired with restore:0.25",
        original=repair.AdapterCheck(
            "trained", "adapter", evaluated=True, failed=["asr_chat"], task_loss=1.5
        ),
        attempts=[
            repair.AdapterCheck(
                "restore:0.25",
                "repair/restore-0.25/adapter",
                evaluated=True,
                released=True,
                asr={"chat": CountedAsr(base=0.05, tuned=0.05, judges="all", upper=0.03, limit=0.05)},
                over_refusal=GateCheck("over_refusal", True, increase=0.02),
                task_loss=1.51,
                task_loss_limit=1.65,
                n_layers=14,
                n_changed=4,
                layers_changed=["model.layers.0.self_attn.q_proj"],
                passed=True,
            )
        ],
    ),
    "gate": gate.GateResult(
        True, None, "released", [GateCheck("asr_chat", True)], warnings=["Over-refusal: rose"]
    ),
}


def test_every_stage_has_a_round_trip_sample() -> None:
    assert set(SAMPLES) == set(PIPELINE.names)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_results_and_configs_round_trip(name: str, tmp_path: Path) -> None:
    spec, result, cfg = PIPELINE[name], SAMPLES[name], CONFIGS[name]
    finish(tmp_path, cfg, result)
    loaded = spec.result.load(tmp_path)
    assert type(loaded) is spec.result and loaded == result
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved.pop("stage_config") == type(cfg).__name__
    assert from_jsonable(type(cfg), saved) == cfg  # the config beside it, round-tripped


CONFIGS: dict[str, Any] = {
    "validate": validate.ValidateConfig(model="tiny", min_examples=3),
    "score": score.ScoreConfig(model="tiny", scorers=("selfinf",)),
    "mitigate": mitigate.MitigateConfig(mitigation="drop"),
    "train": train.TrainConfig(model="tiny", lora_layers=(1, 2)),
    "evaluate": evaluate.EvalConfig(model="tiny", judge="keyword"),
    "repair": repair.RepairStageConfig(model="tiny", repair_on="always", ladder=("restore:0.5", "merge:0.2")),
    "gate": gate.GateConfig(
        gate_delta=0.02, gate_category_limits={"fraud": 0.01}, over_refusal_action="fail", templates=("chat",)
    ),
}


@pytest.mark.parametrize(
    ("result", "key", "written"),
    [
        (mitigate.MitigateResult("", 2, 0, 0, 0, 0, 0, refused="too many"), "format", {}),
        (SAMPLES["mitigate"], "format", SAMPLES["mitigate"].to_dict()["format"]),
        (SAMPLES["train"], "repair", {}),
        (
            train.TrainResult(
                "a", 100, 4, 2, 1, 12, "fp", repair=RepairApplied("restore", "/unaligned", 14, 4)
            ),
            "repair",
            {"method": "restore", "reference": "/unaligned", "n_layers": 14, "n_changed": 4},
        ),
    ],
)
def test_a_part_a_result_may_lack_round_trips_as_written(
    result: StageResult, key: str, written: Any, tmp_path: Path
) -> None:
    """A refused file's mitigation has no format and a train stage without a repair no repair: both are
    written as ``{}`` (as before they were typed) and read back as None."""
    finish(tmp_path, CONFIGS["mitigate" if key == "format" else "train"], result)
    stored = json.loads((tmp_path / "result.json").read_text())
    assert stored[key] == written
    assert type(result).load(tmp_path) == result


def test_a_user_format_reads_back_from_its_json() -> None:
    fmt = SAMPLES["mitigate"].format
    assert (
        fmt is not None
        and fmt.tool_sets
        and UserFormat.from_dict(json.loads(json.dumps(fmt.to_dict()))) == fmt
    )
    assert (
        "tool_sets" not in UserFormat().to_dict()
        and UserFormat.from_dict(UserFormat().to_dict()) == UserFormat()
    )
    with pytest.raises(RecordError, match="systems' must be a list of"):
        UserFormat.from_dict({"systems": [["Be terse."]]})


def test_a_nested_result_refuses_unknown_keys(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "result.json", {**SAMPLES["validate"].to_dict(), "surprise": 1})
    with pytest.raises(ValueError, match="surprise"):
        validate.ValidateResult.load(tmp_path)


# --- the provider's stage overrides name the pipeline's stages -------------------------------------------


def test_overrides_of_a_stage_the_pipeline_lacks_are_refused_naming_the_stages(
    monkeypatch: pytest.MonkeyPatch, tunegate_home: Path
) -> None:
    """A misspelt stage ("trian") is refused wherever overrides are applied, not silently ignored; every
    stage of the pipeline may be overridden."""
    monkeypatch.setenv("TUNEGATE_STAGE_OVERRIDES", json.dumps({name: {} for name in PIPELINE.names}))
    reset_settings()
    assert with_overrides(validate.ValidateConfig(model="m"), "validate", get_settings()).model == "m"
    typo = {"validate": {"min_examples": 3}, "trian": {"n_epochs": 1}, "align": {}}
    monkeypatch.setenv("TUNEGATE_STAGE_OVERRIDES", json.dumps(typo))
    reset_settings()
    with pytest.raises(InvalidConfig) as refused:
        with_overrides(validate.ValidateConfig(model="m"), "validate", get_settings())
    assert refused.value.param == "stage_overrides.align"
    assert refused.value.message == (
        "TUNEGATE_STAGE_OVERRIDES names unknown stage(s) 'align', 'trian'; the stages are: "
        + ", ".join(PIPELINE.names)
    )


# --- a new stage is one spec -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CountConfig:
    multiplier: int = 2


@dataclass
class CountInputs:
    n_examples: int
    io: StageIO


@dataclass
class CountResult(StageResult):
    doubled: int


def _count_build(ctx: StageContext, io: StageIO) -> tuple[CountConfig, CountInputs]:
    return ctx.configure(CountConfig(), COUNT), CountInputs(ctx.result(validate.SPEC).n_examples, io)


def _count_run(cfg: CountConfig, inputs: CountInputs) -> CountResult:
    inputs.io.step(0.5, "counting")
    return finish(inputs.io.out_dir, cfg, CountResult(cfg.multiplier * inputs.n_examples))


def _count_apply(session: Session, job: Job, res: CountResult) -> Applied:
    return Applied(f"counted {res.doubled}", data={"doubled": res.doubled}, status=JobStatus.SUCCEEDED)


COUNT = StageSpec("count", "cpu", 0.98, CountResult, _count_build, _count_run, _count_apply)


@pytest.fixture
def home(migrated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_tiny(monkeypatch, event_interval_s="0", stage_overrides=json.dumps(TEST_OVERRIDES))
    return migrated_home


def test_a_throwaway_stage_runs_in_a_test_pipeline(home: Path) -> None:
    """validate, then a stage defined only here: the runner, claims, events and hand-off need nothing else."""
    pipe = Pipeline([validate.SPEC, COUNT])
    job_id = make_job("tiny", chat_rows(12))
    assert runner.execute("validate", job_id, pipeline=pipe) == runner.Outcome("done", "count")
    assert runner.execute("count", job_id, pipeline=pipe) == runner.Outcome("done")
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "succeeded" and job.stage == "count"
        done = [
            e for e in s.query(JobEvent).filter(JobEvent.job_id == job_id) if e.dedupe_key == "count:done"
        ]
    assert len(done) == 1 and done[0].data["doubled"] == 24 and done[0].data["progress"] == 1.0
    assert CountResult.load(job_dir(get_settings(), job_id) / "count").doubled == 24


# --- one pipeline: the CLI and the worker run the same specs ---------------------------------------------


def test_cli_and_worker_build_and_run_the_same_stages(home: Path, tmp_path: Path) -> None:
    rows = chat_rows(12)
    hp = {"n_epochs": 1, "batch_size": 4}
    job_id = make_job("tiny", rows, hyperparameters=hp, seed=3)
    for name in PIPELINE.names:
        assert runner.execute(name, job_id).status == "done", name
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    from models.policy import org_policy

    settings = get_settings()
    view = local_view(data, "tiny", policy=org_policy(settings, None), hyperparameters=hp, seed=3)
    local = dict(zip(PIPELINE.names, runner.run_local(view, tmp_path / "out", settings), strict=True))
    worker_dir = job_dir(settings, job_id)
    for name, res in local.items():
        there = PIPELINE[name].result.load(worker_dir / name)
        assert _comparable(name, res) == _comparable(name, there), name
        assert (tmp_path / "out" / name / "config.json").read_text() == (
            worker_dir / name / "config.json"
        ).read_text()


def _comparable(name: str, res: StageResult) -> Any:
    """A result without the paths (they name each run's own directory)."""
    d = res.to_dict()
    paths = ("train_file", "actions_file", "adapter_dir", "results_file", "report_json", "report_html")
    for key in (*paths, "stored_report", "stored_adapter"):
        d.pop(key, None)
    if name == "score":
        d["risks"] = [r.risk for r in res.records]
    if name == "train":
        d["metrics"] = {k: round(v, 3) for k, v in d["metrics"].items()}
    if name == "repair":  # the adapters it judged, by their run's paths
        for check in [d.get("original") or {}, *d["attempts"]]:
            for key in ("adapter_dir", "evaluation_dir"):
                check.pop(key, None)
    return d
