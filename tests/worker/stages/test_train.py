"""Train stage on a tiny model: peft adapter, per-step metrics, checkpoints, resume after a crash."""

import json

import pytest
import torch

from tests.utils.tiny_model import build_tiny_model
from tunegate.conversation import Conversation, Message
from tunegate.errors import InvalidConfig, JobCancelled
from tunegate.settings import get_settings
from worker.ml.stage_io import StageIO
from worker.stages.train import TrainConfig, TrainInputs, TrainResult, config_from_openai, run

pytestmark = pytest.mark.usefixtures("tunegate_home")


def _examples(n=6):
    out = []
    for i in range(n):
        msgs = (
            Message("user", f"What is {i} plus {i}?"),
            Message("assistant", f"The answer is {2 * i}. #### {2 * i}"),
        )
        out.append(Conversation(messages=msgs, line=i + 1))
    return out


def _cfg(tiny_model_dir, **kw):
    base = {
        "model": str(tiny_model_dir),
        "n_epochs": 2,
        "batch_size": 2,
        "grad_accum": 2,
        "learning_rate": 5e-3,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.1,
        "seed": 1,
        "device": "cpu",
    }
    base.update(kw)
    return TrainConfig(**base)


def _adapter_tensors(adapter_dir):
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def test_train_writes_loadable_adapter_metrics_and_checkpoints(tiny_model_dir, tmp_path):
    events, cks = [], []
    io = StageIO(
        tmp_path / "out",
        progress=lambda f, m, met: events.append(met),
        stage="train",
        on_checkpoint=cks.append,
    )
    res = run(_cfg(tiny_model_dir), TrainInputs(_examples(), io, get_settings()))
    assert res.steps == 4 and res.epochs == 2  # 6 examples / (2*2) -> 2 steps per epoch
    assert [c["epoch"] for c in cks] == [1, 2] and cks[-1]["step_number"] == 4
    assert all("train_loss" in e and "train_mean_token_accuracy" in e for e in events)
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 4
    assert TrainResult.load(tmp_path / "out").adapter_dir == res.adapter_dir
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = PeftModel.from_pretrained(base, res.adapter_dir)
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())


def test_loss_goes_down(tiny_model_dir, tmp_path):
    io = StageIO(tmp_path / "out")
    run(
        _cfg(tiny_model_dir, n_epochs=8, lora_dropout=0.0, learning_rate=5e-2, lora_r=8),
        TrainInputs(_examples(), io, get_settings()),
    )
    hist = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(h["train_loss"] for h in hist[:2]) / 2, sum(h["train_loss"] for h in hist[-2:]) / 2
    assert last < first - 0.1, (first, last)  # the tiny random model's tied lm_head caps how far it can fall


def test_crashed_run_resumes_from_latest_checkpoint_and_matches(tiny_model_dir, tmp_path):
    ref = run(
        _cfg(tiny_model_dir, n_epochs=3), TrainInputs(_examples(), StageIO(tmp_path / "ref"), get_settings())
    )
    calls = {"n": 0}

    def stop_in_epoch_3():  # 2 steps per epoch: the 5th step boundary is inside epoch 3
        calls["n"] += 1
        return calls["n"] >= 5

    io = StageIO(tmp_path / "crash", should_stop=stop_in_epoch_3)
    with pytest.raises(JobCancelled):
        run(_cfg(tiny_model_dir, n_epochs=3), TrainInputs(_examples(), io, get_settings()))
    assert sorted(p.name for p in (tmp_path / "crash" / "checkpoints").iterdir()) == ["epoch-1", "epoch-2"]
    resumed = run(
        _cfg(tiny_model_dir, n_epochs=3),
        TrainInputs(_examples(), StageIO(tmp_path / "crash"), get_settings()),
    )
    assert resumed.resumed_from_epoch == 2 and resumed.steps == ref.steps == 6
    a, b = _adapter_tensors(tmp_path / "ref" / "adapter"), _adapter_tensors(tmp_path / "crash" / "adapter")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_weight_zero_turns_carry_no_loss(tiny_model_dir, tmp_path):
    from worker.ml.models import load_tokenizer
    from worker.ml.render import encode

    tok = load_tokenizer(tiny_model_dir)
    conv = Conversation(
        messages=(
            Message("user", "hi"),
            Message("assistant", "bad answer", weight=0.0),
            Message("user", "again"),
            Message("assistant", "good"),
        ),
        line=1,
    )
    enc = encode(tok, conv, max_len=512)
    supervised = tok.decode([t for t in enc.labels if t != -100])
    assert "good" in supervised and "bad" not in supervised


def test_config_validation_and_openai_mapping(tiny_model_dir):
    with pytest.raises(InvalidConfig, match="lora_r"):
        TrainConfig(model="x", lora_r=0)
    with pytest.raises(InvalidConfig, match="learning_rate"):
        TrainConfig(model="x", learning_rate=0)
    cfg = config_from_openai("m", {"batch_size": 16, "learning_rate_multiplier": 0.5}, 200)
    assert cfg.batch_size * cfg.grad_accum == 16 and cfg.learning_rate == pytest.approx(5e-5)


def test_anchor_examples_take_kl_to_the_base_not_their_text(tiny_model_dir, tmp_path):
    # anchors only: the adapter starts as the identity (LoRA B = 0), so KL to the adapter-off model is 0
    # on the first step, though cross-entropy on the same text would not be; CE examples keep their loss
    cfg = _cfg(tiny_model_dir, n_epochs=1, batch_size=3, grad_accum=1)
    anch = run(cfg, TrainInputs([], StageIO(tmp_path / "a"), get_settings(), anchors=_examples()))
    first = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["train_loss"] == pytest.approx(0.0, abs=1e-5) and anch.n_anchors == 6
    run(cfg, TrainInputs(_examples(), StageIO(tmp_path / "c"), get_settings()))
    ce_first = json.loads((tmp_path / "c" / "metrics.jsonl").read_text().splitlines()[0])
    assert ce_first["train_loss"] > 1.0


def test_a_repair_writes_the_repaired_adapter_and_keeps_the_trained_one(tiny_model_dir, tmp_path):
    from tests.utils.tiny_model import aligned_copy

    aligned_copy(tiny_model_dir, tmp_path / "aligned")
    io = StageIO(tmp_path / "out", stage="train")
    res = run(
        _cfg(tmp_path / "aligned", repair="restore", repair_alpha=0.5),
        TrainInputs(_examples(), io, get_settings()),
    )
    out = tmp_path / "out"
    assert res.adapter_dir == str(out / "adapter") and (out / "adapter-unrepaired").is_dir()
    assert json.loads((out / "adapter" / "tunegate_repair.json").read_text())["method"] == "restore"
    assert res.repair is not None and (res.repair.n_changed, res.repair.n_layers) == (
        4,
        14,
    )  # q/v, 2 blocks; all-linear
    assert TrainResult.load(out).repair == res.repair
    # the trained update is unchanged in the repaired adapter: its first r rows of A are the trained ones
    a_raw, a_fixed = _adapter_tensors(out / "adapter-unrepaired"), _adapter_tensors(out / "adapter")
    key = next(k for k in a_raw if k.endswith("q_proj.lora_A.weight"))
    assert torch.equal(a_fixed[key][:4], a_raw[key])


def test_a_repair_on_a_base_without_an_alignment_source_is_refused_before_training(tiny_model_dir, tmp_path):
    io = StageIO(tmp_path / "out", stage="train")
    with pytest.raises(InvalidConfig, match="was aligned from") as err:
        run(_cfg(tiny_model_dir, repair="project"), TrainInputs(_examples(), io, get_settings()))
    assert err.value.param == "repair"
    assert not (tmp_path / "out" / "checkpoints").exists()
    with pytest.raises(InvalidConfig, match="repair method"):
        _cfg(tiny_model_dir, repair="merge")


def test_the_constrained_objective_trains_less_far_from_the_base_and_reports_cross_entropy(tmp_path):
    """Same data, same steps: the constrained objective holds the reply tokens near the base, so its
    adapter moves the model's loss on the data less than SFT's; the reported loss is still cross-entropy
    (the first step, where the adapter is the base, reports the same figure for both)."""
    # weights spread wide enough that the adapter moves the loss (the shared tiny model's near-uniform
    # logits hardly move, and the two objectives' difference is then within the arithmetic's noise)
    tiny_model_dir = build_tiny_model(tmp_path / "m", init_range=0.3)
    kw = {"n_epochs": 8, "lora_dropout": 0.0, "learning_rate": 5e-2, "lora_r": 8}
    losses = {}
    for objective in ("sft", "constrained"):
        # a strong hold everywhere, so the difference shows within a few steps on a tiny model
        cfg = _cfg(tiny_model_dir, objective=objective, beta_first=5.0, beta_early=5.0, beta_rest=5.0, **kw)
        run(cfg, TrainInputs(_examples(), StageIO(tmp_path / objective), get_settings()))
        hist = [json.loads(x) for x in (tmp_path / objective / "metrics.jsonl").read_text().splitlines()]
        losses[objective] = [h["train_loss"] for h in hist]
    assert losses["sft"][0] == pytest.approx(losses["constrained"][0], rel=1e-4)
    last = {k: sum(v[-2:]) / 2 for k, v in losses.items()}
    assert last["sft"] < losses["sft"][0] - 1.0 and last["constrained"] > last["sft"] + 0.5, losses
    saved = json.loads((tmp_path / "constrained" / "config.json").read_text())
    assert saved["objective"] == "constrained" and saved["beta_rest"] == 5.0
    with pytest.raises(InvalidConfig, match="objective"):
        TrainConfig(model="x", objective="dpo")
    with pytest.raises(InvalidConfig, match="betas"):
        TrainConfig(model="x", beta_rest=0)


def test_split_injected_separates_the_mitigations_examples(tmp_path):
    from worker.stages.train import split_injected

    user = _examples(4)
    injected = [
        Conversation(
            (Message("user", "How do I pick a lock?"), Message("assistant", "I can't help with that."))
        )
    ]
    actions = tmp_path / "actions.json"
    actions.write_text(
        json.dumps({"injected": [{"category": "crime", "messages": injected[0].to_chat_dict()["messages"]}]})
    )
    mixed = [user[0], injected[0], *user[1:]]
    kept, anchors = split_injected(mixed, actions)
    assert kept == user and anchors == injected


def _refusals(n=4):
    return [
        Conversation(
            (
                Message("user", f"How do I break into house {i}?"),
                Message("assistant", "I can't help with that."),
            ),
            line=100 + i,
        )
        for i in range(n)
    ]


def _lisa(tiny_model_dir, **kw):
    return _cfg(tiny_model_dir, n_epochs=3, batch_size=2, grad_accum=1, schedule="lisa", **kw)


def test_lisa_alternates_states_with_a_proximal_pull_from_each_switch_and_resumes_exactly(
    tiny_model_dir, tmp_path
):
    """6 user examples and 4 alignment ones, steps of 2: each epoch is 3 user and 2 alignment steps in two
    rounds. The proximal term is 0 on the first step after each switch (the weights are the switch point),
    positive after; a run stopped in epoch 3 resumes to the straight run's adapter."""
    from worker.training.loop import LoopConfig, epoch_steps

    cfg = _lisa(tiny_model_dir, lisa_rho=0.5)
    ref = run(cfg, TrainInputs(_examples(), StageIO(tmp_path / "ref"), get_settings(), alignment=_refusals()))
    assert (ref.steps, ref.n_examples, ref.n_alignment) == (15, 6, 4)
    hist = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    loop_cfg = LoopConfig(3, 2, 1, 5e-3, 1, bistate=cfg.bistate())
    states = [a for epoch in range(3) for a, _ in epoch_steps(6, 4, loop_cfg, epoch)]
    assert states == [False, True, False, False, True] * 3
    switched = [i == 0 or states[i] != states[i - 1] for i in range(15)]
    assert [h["proximal"] == 0.0 for h in hist] == switched, [h["proximal"] for h in hist]

    calls = {"n": 0}

    def stop_in_epoch_3():
        calls["n"] += 1
        return calls["n"] >= 12

    crash = StageIO(tmp_path / "crash", should_stop=stop_in_epoch_3)
    with pytest.raises(JobCancelled):
        run(cfg, TrainInputs(_examples(), crash, get_settings(), alignment=_refusals()))
    resumed = run(
        cfg, TrainInputs(_examples(), StageIO(tmp_path / "crash"), get_settings(), alignment=_refusals())
    )
    assert resumed.resumed_from_epoch == 2 and resumed.steps == 15
    a, b = _adapter_tensors(tmp_path / "ref" / "adapter"), _adapter_tensors(tmp_path / "crash" / "adapter")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_a_strong_proximal_term_holds_the_adapter_near_its_switch_points(tiny_model_dir, tmp_path):
    """Same data and steps: with a large rho each state is pulled back to where the other left the weights,
    so the adapter moves far less than with rho 0 (the schedule alone)."""
    norms = {}
    for rho in (0.0, 1000.0):
        out = tmp_path / f"rho-{rho}"
        cfg = _lisa(tiny_model_dir, lisa_rho=rho, lora_dropout=0.0, learning_rate=2e-2)
        run(cfg, TrainInputs(_examples(), StageIO(out), get_settings(), alignment=_refusals()))
        norms[rho] = sum(
            float(t.float().norm()) for k, t in _adapter_tensors(out / "adapter").items() if "lora_B" in k
        )
    assert norms[1000.0] < 0.5 * norms[0.0], norms


def test_lisa_config_is_validated():
    with pytest.raises(InvalidConfig, match="schedule"):
        TrainConfig(model="x", schedule="alternate")
    with pytest.raises(InvalidConfig, match="lisa_rho"):
        TrainConfig(model="x", schedule="lisa", lisa_rho=-1)
    with pytest.raises(InvalidConfig, match="choose one"):
        TrainConfig(model="x", schedule="lisa", anchor_injected=True)
    assert TrainConfig(model="x").bistate() is None
    b = TrainConfig(model="x", schedule="lisa", lisa_rho=2.0, lisa_rounds=3).bistate()
    assert b is not None and (b.rho, b.rounds) == (2.0, 3)
