"""Data-parallel training in two processes gives the adapter one process trains."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.worker.jobfactory import use_tiny
from tunegate.conversation import Conversation, Message
from tunegate.settings import get_settings
from worker.ml.stage_io import StageIO
from worker.prepare import parallel
from worker.prepare.align import train_data_parallel
from worker.stages import train
from worker.training.dataparallel import Shard


def _convs(n: int, reply: str) -> list[Conversation]:
    return [
        Conversation(
            (Message("user", f"question {i} about item {i * 7}"), Message("assistant", f"{reply} {i}"))
        )
        for i in range(n)
    ]


def test_shard_takes_interleaved_shares() -> None:
    items = list(range(7))
    assert Shard(0, 2).take(items) == [0, 2, 4, 6] and Shard(1, 2).take(items) == [1, 3, 5]
    assert Shard(0, 1).take(items) == items


@pytest.mark.parametrize("world", [1, 2])
def test_two_processes_train_the_same_adapter_as_one(
    tunegate_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, world: int
) -> None:
    model = use_tiny(monkeypatch)
    monkeypatch.setattr(parallel, "available_cpus", lambda: world)
    cfg = train.TrainConfig(
        model=str(model),
        n_epochs=2,
        batch_size=3,
        grad_accum=2,
        learning_rate=1e-2,
        lora_dropout=0.0,
        seed=3,
        precision="fp32",  # exact sums: bf16 rounding (chosen on native-bf16 CPUs) differs with the split
    )
    reports: list[tuple[float, str, dict]] = []
    io = StageIO(tmp_path / "outer", progress=lambda f, m, met: reports.append((f, m, met)))
    res = train_data_parallel(
        cfg,
        _convs(9, "Sure, the answer is"),
        _convs(4, "Well"),
        tmp_path / f"w{world}" / "lora",
        get_settings(),
        io,
    )
    weights = load_file(str(Path(res.adapter_dir) / "adapter_model.safetensors"))
    ref_dir = tmp_path / "single"
    single = train.run(
        cfg,
        train.TrainInputs(
            _convs(9, "Sure, the answer is"), StageIO(ref_dir), get_settings(), anchors=_convs(4, "Well")
        ),
    )
    expected = load_file(str(Path(single.adapter_dir) / "adapter_model.safetensors"))
    assert res.steps == single.steps and res.trained_tokens == single.trained_tokens
    assert weights.keys() == expected.keys()
    for name, w in expected.items():
        torch.testing.assert_close(
            weights[name], w, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
        )
    assert res.metrics["train_loss"] == pytest.approx(single.metrics["train_loss"], rel=1e-5)
    assert reports and "train_loss" in reports[-1][2]  # rank 0's progress reaches the caller with metrics
