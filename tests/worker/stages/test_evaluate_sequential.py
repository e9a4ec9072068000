"""The evaluate stage's sequential test on a tiny model: a blatant case stops at the first look and the gate
decides as it does on the whole set; a clean one stops early with a release; results and configs written
before the sequential fields existed still load."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from tunegate.artifacts import atomic_write_json, from_jsonable, read_json
from tunegate.settings import get_settings
from tunegate.shipped import data_path
from worker.evaluation.model_eval import ModelRun
from worker.evaluation.records import summarize_harmful
from worker.ml.stage_io import StageIO
from worker.stages.evaluate import EvalConfig, EvalInputs, EvalResult, run
from worker.stages.gate import GateConfig, decide
from worker.stages.train import TrainConfig, TrainInputs
from worker.stages.train import run as train

from .test_evaluate import _cfg, _examples

pytestmark = pytest.mark.usefixtures("tunegate_home")

REFUSAL = "I'm sorry, but I cannot help with that."
N = 96  # the project's first 96 harmful prompts: three looks of 32


@pytest.fixture
def cfg(tiny_model_dir: Path, tmp_path: Path) -> EvalConfig:
    prompts = tmp_path / "harmful.jsonl"
    lines = data_path("eval", "harmful.jsonl").read_text(encoding="utf-8").splitlines()[:N]
    prompts.write_text("\n".join(lines) + "\n")
    return _cfg(
        tiny_model_dir,
        project_set=False,
        prompts_file=str(prompts),
        borderline=False,
        second_judge="none",
        trigger_probes=False,
        sequential=True,
    )


@pytest.fixture
def adapter(tiny_model_dir: Path, tmp_path: Path) -> Path:
    tr = train(
        TrainConfig(
            model=str(tiny_model_dir), n_epochs=1, batch_size=3, lora_r=2, lora_alpha=4, device="cpu"
        ),
        TrainInputs(_examples(), StageIO(tmp_path / "train"), get_settings()),
    )
    return Path(tr.adapter_dir)


def _evaluate(cfg: EvalConfig, adapter: Path | None, out: Path) -> EvalResult:
    s = get_settings()
    return run(cfg, EvalInputs(adapter, _examples(), StageIO(out), s, s.eval_cache_path, seed="job-1"))


def _refusing_base() -> int:
    """Rewrite the cached base results as an aligned base's: it refuses every harmful prompt (the random tiny
    model never writes a refusal string, so its fine-tuned replies are all jailbroken: a blatant attack)."""
    files = list(get_settings().eval_cache_path.glob("*.json"))
    for f in files:
        run = ModelRun.from_dict(read_json(f))
        harmful = tuple(replace(r, response=REFUSAL, jailbroken=False) for r in run.harmful)
        atomic_write_json(f, replace(run, harmful=harmful, summary=summarize_harmful(harmful)).to_dict())
    return len(files)


def _decision(res: EvalResult) -> tuple[bool, str | None]:
    d = decide(GateConfig(gate_judges="primary"), res, None, True)
    return d.released, d.code


def test_a_blatant_attack_stops_at_the_first_look_and_the_gate_decides_as_on_the_whole_set(
    cfg, adapter, tmp_path
):
    _evaluate(cfg, None, tmp_path / "base")  # fills the base's cache, then made an aligned base's
    assert _refusing_base() == 2
    seq = _evaluate(cfg, adapter, tmp_path / "seq")
    fixed = _evaluate(EvalConfig(**{**cfg.__dict__, "sequential": False}), adapter, tmp_path / "fixed")
    n = N
    for tpl in ("chat", "user"):
        whole, t = fixed.templates[tpl], seq.templates[tpl]
        assert whole.sequential is None and whole.tuned.n == n and whole.tuned.asr > 0.5
        stop = t.sequential
        assert stop is not None and (stop.decision, stop.n_used, stop.n_total) == ("block", 32, n)
        assert stop.judges == "primary" and stop.limit == cfg.gate_delta and stop.lower > cfg.gate_delta
        assert t.tuned.n == t.base.n == t.paired.n == 32 and t.base.asr == 0  # the prompts used, both sides
        assert stop.strata["primary"].counts().tuned_only == t.paired.tuned_only
    assert _decision(seq) == _decision(fixed) == (False, "safety_eval_failed")
    d = decide(GateConfig(gate_judges="primary"), seq, None, True)
    chat = next(c for c in d.checks if c.check == "asr_chat")
    assert chat.sequential.decided and chat.sequential.n_used == 32 and not chat.passed
    assert "chat template: stopped after 32 of 96 prompts" in d.message
    gens = [json.loads(x) for x in (tmp_path / "seq" / "generations.jsonl").read_text().splitlines()]
    assert sum(g["model"] == "tuned" and g["template"] == "chat" for g in gens) == 32
    assert EvalResult.load(tmp_path / "seq").to_dict() == json.loads(json.dumps(seq.to_dict()))


def test_a_clean_job_stops_early_with_a_release_and_the_same_decision(cfg, adapter, tmp_path):
    """The random base and its fine-tune both write no refusal: nothing changed, released early. The result
    without its sequential fields (as written before they existed) still loads and the gate then takes the
    fixed-sample rule; so does a config without the new knobs."""
    seq = _evaluate(cfg, adapter, tmp_path / "seq")
    fixed = _evaluate(EvalConfig(**{**cfg.__dict__, "sequential": False}), adapter, tmp_path / "fixed")
    stop = seq.templates["chat"].sequential
    assert stop is not None and stop.decision == "release" and stop.n_used < stop.n_total
    assert stop.upper <= cfg.gate_delta
    assert _decision(seq) == _decision(fixed)
    assert decide(GateConfig(gate_judges="primary"), seq, None, True).checks[0].sequential.decided

    old = seq.to_dict()
    for t in old["templates"].values():
        t.pop("sequential")
    loaded = from_jsonable(EvalResult, old)
    assert loaded.templates["chat"].sequential is None
    check = next(c for c in decide(GateConfig(), loaded, None, True).checks if c.check == "asr_chat")
    assert check.sequential is None and check.n == stop.n_used  # the fixed rule, on the prompts used
    saved = read_json(tmp_path / "seq" / "config.json")
    for k in ("sequential", "sequential_look", "sequential_alpha", "gate_delta", "gate_judges"):
        saved.pop(k)
    saved.pop("gate_category_limits")
    saved.pop("stage_config")
    cfg = from_jsonable(EvalConfig, saved)
    assert not cfg.sequential and cfg.gate_delta == GateConfig().gate_delta  # the defaults
