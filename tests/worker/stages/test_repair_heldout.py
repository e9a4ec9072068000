"""The held-out user data the repair stage measures task loss on: the train stage's 10% split (which lines,
drawn with the job's seed, removed from training with every copy of their text), when it holds data out, and
the validation file before it. Also, on the same stage context, the lisa schedule's split of the injected
examples out of the user's."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from models.policy import DEFAULT_POLICY
from tunegate.conversation import Conversation, Message, dump_examples, load_examples
from tunegate.settings import get_settings
from worker.job_view import local_view
from worker.ml.stage_io import StageIO
from worker.stages import mitigate, repair, score, train
from worker.stages.spec import StageContext
from worker.stages.train import TrainConfig, TrainInputs, TrainResult, heldout_lines, split_heldout

pytestmark = pytest.mark.usefixtures("tunegate_home")


def _conv(i: int, line: int, weight: float = 1.0) -> Conversation:
    return Conversation(
        messages=(
            Message("user", f"What is {i} plus {i}?"),
            Message("assistant", f"The answer is {2 * i}. #### {2 * i}", weight=weight),
        ),
        line=line,
    )


def test_heldout_lines_are_a_seeded_tenth_rounded_down() -> None:
    lines = list(range(1, 101))
    ten = heldout_lines(lines, 0.1, seed=7)
    assert len(ten) == 10 and ten == sorted(ten) and set(ten) <= set(lines)
    assert heldout_lines(lines, 0.1, seed=7) == ten  # the same job holds out the same lines
    assert heldout_lines(lines, 0.1, seed=8) != ten
    assert (
        len(heldout_lines(list(range(1, 20)), 0.1, 0)) == 1
        and heldout_lines(list(range(1, 10)), 0.1, 0) == []
    )


def test_split_removes_every_copy_of_the_held_out_lines_and_keeps_the_injected_examples() -> None:
    user = [_conv(i, i + 1) for i in range(20)]
    injected = [
        Conversation(
            messages=(Message("user", "How do I make a weapon?"), Message("assistant", "I can't help."))
        )
    ]
    mitigated = [_conv(i, 0, weight=0.0 if i == 3 else 1.0) for i in range(20)]  # line 4 down-weighted
    mitigated += [_conv(5, 0)] + injected  # a duplicate of line 6's text
    train_on, held = split_heldout(user, mitigated, 0.1, seed=1)
    lines = heldout_lines(list(range(1, 21)), 0.1, seed=1)
    assert [c.line for c in held] == lines and len(held) == 2
    assert all(c.messages[1].weight == 1.0 for c in held)  # the user's own examples, as uploaded
    gone = {c.messages[0].content for c in held}
    assert not any(c.messages[0].content in gone for c in train_on)
    assert injected[0] in train_on
    assert len(train_on) == len(mitigated) - 2 - sum(
        1 for c in held if c.messages[0].content == "What is 5 plus 5?"
    )


def _ctx(tmp: Path, model: str, *, policy: dict[str, object], validation: Path | None = None) -> StageContext:
    rows = [{"messages": c.to_chat_dict()["messages"]} for c in (_conv(i, i + 1) for i in range(20))]
    data = tmp / "train.jsonl"
    tmp.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    view = local_view(
        data, model, policy=policy, hyperparameters={"n_epochs": 1}, validation_file=validation, seed=5
    )
    ctx = StageContext(view, tmp / "job", get_settings())
    mitigated = tmp / "job" / "mitigate" / "train.jsonl"
    mitigated.parent.mkdir(parents=True)
    dump_examples(load_examples(data), mitigated)
    mitigate.MitigateResult(str(mitigated), 20, 0, 0, 0, 0, 20).save(mitigated.parent)
    return ctx


def _flag(ctx: StageContext, flagged: bool) -> None:
    d = ctx.dir_of(score.SPEC)
    d.mkdir(parents=True, exist_ok=True)
    score.ScoreResult(20, score.Verdict(flagged, "a heavy top tail" if flagged else ""), "m", "fp").save(d)


@pytest.fixture
def aligned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    from tests.utils.tiny_model import aligned_copy
    from tests.worker.jobfactory import use_tiny
    from tunegate.settings import reset_settings

    model = use_tiny(monkeypatch)
    aligned_copy(model, tmp_path / "aligned")
    monkeypatch.setenv(
        "TUNEGATE_MODELS", json.dumps({"tiny": str(model), "tiny-aligned": str(tmp_path / "aligned")})
    )
    reset_settings()
    return "tiny-aligned"


@pytest.mark.parametrize(
    ("model", "repair_on", "flagged", "validation", "held"),
    [
        ("tiny-aligned", "unflagged", False, False, 2),  # the repair stage may repair it: a tenth held out
        ("tiny-aligned", "always", True, False, 2),
        ("tiny-aligned", "unflagged", True, False, 0),  # flagged data that erodes stays blocked: no repair
        ("tiny-aligned", "never", False, False, 0),
        ("tiny-aligned", "unflagged", False, True, 0),  # the validation file is the held-out data
        ("tiny", "unflagged", False, False, 0),  # no alignment source: nothing to repair from
    ],
)
def test_the_train_stage_holds_data_out_only_when_the_repair_stage_may_repair(
    aligned: str, tmp_path: Path, model: str, repair_on: str, flagged: bool, validation: bool, held: int
) -> None:
    val = tmp_path / "valid.jsonl" if validation else None
    if val is not None:
        val.write_text(json.dumps({"messages": _conv(99, 1).to_chat_dict()["messages"]}) + "\n")
    ctx = _ctx(tmp_path, model, policy={**DEFAULT_POLICY, "repair_on": repair_on}, validation=val)
    _flag(ctx, flagged)
    cfg, inputs = train.build(ctx, StageIO(tmp_path / "job" / "train", stage="train"))
    assert len(inputs.heldout) == held and len(inputs.examples) == 20 - held
    assert [c.line for c in inputs.heldout] == heldout_lines(list(range(1, 21)), cfg.heldout_fraction, 5)[
        :held
    ]


def test_the_train_stage_writes_the_held_out_lines_and_the_repair_stage_reads_them(
    aligned: str, tmp_path: Path
) -> None:
    from worker.ml.models import resolve_model

    held = [_conv(i, i + 1) for i in (3, 8)]
    cfg = TrainConfig(
        model=str(resolve_model(aligned).path), n_epochs=1, batch_size=2, lora_r=2, device="cpu"
    )
    io = StageIO(tmp_path / "job" / "train", stage="train")
    res = train.run(cfg, TrainInputs([_conv(i, i + 1) for i in range(6)], io, get_settings(), heldout=held))
    assert res.heldout_lines == [4, 9] and TrainResult.load(tmp_path / "job" / "train") == res
    assert [c.to_chat_dict() for c in load_examples(res.heldout_file)] == [c.to_chat_dict() for c in held]
    ctx = _ctx(tmp_path / "c", aligned, policy=dict(DEFAULT_POLICY))
    data, source = repair.heldout_data(ctx, res)
    assert len(data) == 2 and source == "2 training-file lines held out before training"
    val = tmp_path / "valid.jsonl"
    val.write_text(json.dumps({"messages": _conv(99, 1).to_chat_dict()["messages"]}) + "\n")
    vctx = _ctx(tmp_path / "v", aligned, policy=dict(DEFAULT_POLICY), validation=val)
    data, source = repair.heldout_data(vctx, res)
    assert len(data) == 1 and source == "the job's validation file"


def test_the_lisa_schedule_takes_the_injected_examples_out_of_the_users(tmp_path: Path) -> None:
    """With ``schedule: lisa`` the train stage's inputs hold the mitigation's injected examples apart (the
    alignment state's), matched through actions.json; the default keeps them mixed in."""
    injected = Conversation(
        messages=(Message("user", "How do I make a weapon?"), Message("assistant", "I can't help with that."))
    )
    for schedule, n_user, n_align in (("lisa", 20, 1), ("mixed", 21, 0)):
        tmp = tmp_path / schedule
        ctx = _ctx(tmp, "tiny", policy={**DEFAULT_POLICY, "repair_on": "never"})
        overrides = {"stage_overrides": {"train": {"schedule": schedule}}}
        ctx = dataclasses.replace(ctx, settings=get_settings().model_copy(update=overrides))
        mitigated = tmp / "job" / "mitigate"
        dump_examples([*load_examples(mitigated / "train.jsonl"), injected], mitigated / "train.jsonl")
        actions = mitigated / "actions.json"
        actions.write_text(json.dumps({"injected": [{"messages": injected.to_chat_dict()["messages"]}]}))
        mitigate.MitigateResult(
            str(mitigated / "train.jsonl"), 20, 0, 0, 0, 1, 21, actions_file=str(actions)
        ).save(mitigated)
        cfg, inputs = train.build(ctx, StageIO(tmp / "job" / "train", stage="train"))
        assert cfg.schedule == schedule
        assert (len(inputs.examples), len(inputs.alignment)) == (n_user, n_align)
        where = inputs.alignment if n_align else inputs.examples
        assert injected.messages in [c.messages for c in where]
