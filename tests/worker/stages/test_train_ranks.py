"""A job's training in several CPU processes: the adapter one process trains, resumed from rank 0's
checkpoint, and a clean end when a helper dies or the job is paused."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.worker.jobfactory import use_tiny
from tunegate.conversation import Conversation, Message
from tunegate.errors import JobPaused, TransientError
from tunegate.settings import get_settings
from worker.ml.stage_io import StageIO
from worker.stages import train, train_ranks
from worker.training.dataparallel import MIN_MODEL_BYTES, cpu_world


def _convs(n: int) -> list[Conversation]:
    return [
        Conversation(
            (Message("user", f"what is {i} times 3?"), Message("assistant", f"It is {3 * i}.")), line=i + 1
        )
        for i in range(n)
    ]


def _cfg(model: Path, **kw: object) -> train.TrainConfig:
    base: dict[str, object] = {
        "model": str(model),
        "n_epochs": 2,
        "batch_size": 2,
        "grad_accum": 2,
        "learning_rate": 1e-2,
        "lora_dropout": 0.0,
        "seed": 5,
        "precision": "fp32",  # exact sums: bf16 rounding differs with the split
    }
    base.update(kw)
    return train.TrainConfig(**base)  # type: ignore[arg-type]


def _weights(res: train.TrainResult) -> dict[str, torch.Tensor]:
    return load_file(str(Path(res.adapter_dir) / "adapter_model.safetensors"))


def _assert_same(got: train.TrainResult, want: train.TrainResult) -> None:
    assert (got.steps, got.trained_tokens) == (want.steps, want.trained_tokens)
    a, b = _weights(got), _weights(want)
    assert a.keys() == b.keys()
    for name, w in b.items():
        torch.testing.assert_close(a[name], w, rtol=1e-4, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize(
    ("requested", "kind", "threads", "step", "size", "want"),
    [
        (0, "cpu", 2, 4, MIN_MODEL_BYTES, 2),  # auto: one process per thread
        (0, "cpu", 2, 4, MIN_MODEL_BYTES - 1, 1),  # a tiny model: not worth the processes' start
        (0, "cpu", 16, 4, MIN_MODEL_BYTES, 4),  # never more than a step's examples
        (0, "cpu", 32, 64, MIN_MODEL_BYTES, 4),  # nor more than MAX_WORLD (4)
        (0, "cuda", 8, 8, MIN_MODEL_BYTES, 1),  # a GPU trains in its one process
        (1, "cpu", 8, 8, MIN_MODEL_BYTES, 1),  # explicitly one
        (3, "cpu", 2, 8, 1, 3),  # explicit wins over the size and the threads
    ],
)
def test_cpu_world(requested: int, kind: str, threads: int, step: int, size: int, want: int) -> None:
    assert cpu_world(requested, kind, threads, step, size) == want


def test_the_stage_picks_its_processes_from_the_settings(
    tunegate_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = use_tiny(monkeypatch, device="cpu", torch_threads="2")
    assert train.processes(_cfg(model), get_settings()) == 1  # the default: in the worker's process
    model = use_tiny(monkeypatch, device="cpu", torch_threads="2", train_processes="0")
    assert train.processes(_cfg(model), get_settings()) == 1  # auto: the tiny model is below MIN_MODEL_BYTES
    model = use_tiny(monkeypatch, device="cpu", torch_threads="2", train_processes="2")
    assert train.processes(_cfg(model), get_settings()) == 2
    assert train.processes(_cfg(model, batch_size=1, grad_accum=1), get_settings()) == 1


def test_two_processes_resume_the_checkpoint_one_process_paused_at(
    tunegate_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model = use_tiny(monkeypatch)
    cfg, data = _cfg(model), _convs(7)
    whole = train.run(cfg, train.TrainInputs(data, StageIO(tmp_path / "whole"), get_settings()))
    out = tmp_path / "job"
    paused = StageIO(out, stage="train", should_pause=lambda: True)
    with pytest.raises(JobPaused):  # after epoch 1's checkpoint, by one process
        train.run(cfg, train.TrainInputs(data, paused, get_settings()))
    events: list[dict[str, object]] = []
    io = StageIO(out, stage="train", progress=lambda f, m, met: events.append(met))
    resumed = train.run(cfg, train.TrainInputs(data, io, get_settings(), processes=2))
    assert resumed.resumed_from_epoch == 1
    _assert_same(resumed, whole)
    assert any("train_loss" in e for e in events)  # rank 0's progress reaches the stage's io
    assert not (out / train_ranks.SCRATCH).exists()


def test_a_pause_in_two_processes_ends_as_a_pause(
    tunegate_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model = use_tiny(monkeypatch)
    io = StageIO(tmp_path / "job", stage="train", should_pause=lambda: True)
    with pytest.raises(JobPaused):
        train.run(_cfg(model), train.TrainInputs(_convs(7), io, get_settings(), processes=2))
    assert not multiprocessing.active_children()
    assert not (tmp_path / "job" / train_ranks.SCRATCH).exists()
    assert (tmp_path / "job" / "checkpoints" / "epoch-1").is_dir()


def test_a_helper_that_dies_fails_the_stage_as_transient(
    tunegate_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model = use_tiny(monkeypatch)

    def kill_helpers(fraction: float, message: str, metrics: dict[str, object]) -> None:
        for p in multiprocessing.active_children():
            if p.name.startswith("train-rank-"):
                os.kill(p.pid, signal.SIGKILL)

    io = StageIO(tmp_path / "job", stage="train", progress=kill_helpers)
    with pytest.raises(TransientError, match="training process ended abnormally"):
        train.run(_cfg(model, n_epochs=4), train.TrainInputs(_convs(9), io, get_settings(), processes=2))
    assert not multiprocessing.active_children()
    assert torch.get_num_threads() >= 1
