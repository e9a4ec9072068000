"""A job's CPU training, data-parallel over one-thread processes (``worker/training/dataparallel.py``).

The worker's own process is rank 0: it keeps the stage's io (progress, cancel, pause, the checkpoints'
records) and writes the adapter. Ranks 1.. are spawned helpers that train on their share of every step and
write nothing the job keeps, in scratch directories under ``<out>/.ranks/`` removed at the end. A resumed
run starts every helper from a copy of rank 0's latest checkpoint, so a crash, a pause or another number of
processes resumes from the one state the job recorded. When any process fails the others stop at their next
gradient sum (gloo sees the peer gone, or ``dataparallel.JOIN_TIMEOUT`` passes) and the stage fails with
the helpers' exit codes; the task's retry resumes from the last checkpoint.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from tunegate.conversation import Conversation
from tunegate.errors import TransientError, TunegateError
from tunegate.settings import Settings, use_settings
from worker.ml.stage_io import StageIO
from worker.stages import train
from worker.training import dataparallel
from worker.training.checkpoint import latest_checkpoint

log = logging.getLogger(__name__)
SCRATCH = ".ranks"
HELPER_EXIT_WAIT_S = 30.0  # after rank 0 ends, how long a helper may take to leave before it is killed


def run(cfg: train.TrainConfig, inputs: train.TrainInputs) -> train.TrainResult:
    """``train.run`` over ``inputs.processes`` processes, this one rank 0; the result is rank 0's."""
    world = inputs.processes
    if multiprocessing.current_process().daemon:
        log.info("training in this process: a daemonic pool process cannot start %d helpers", world - 1)
        return train.run(cfg, replace(inputs, processes=1))
    out_dir = Path(inputs.io.out_dir)
    scratch = out_dir / SCRATCH
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    rendezvous = scratch / "rendezvous"
    one = inputs.settings.model_copy(update={"torch_threads": 1, "train_processes": 1})
    log.info("training in %d one-thread processes, this one rank 0", world)
    helpers = start_helpers(cfg, inputs, one, world, rendezvous, latest_checkpoint(out_dir / "checkpoints"))
    try:
        with one_thread():
            shard = dataparallel.join(0, world, rendezvous)
            try:
                return train.run(cfg, replace(inputs, settings=one, shard=shard, processes=1))
            finally:
                dataparallel.leave(shard)
    except TunegateError:  # cancelled, paused, past its time: the helpers' ends follow from it
        raise
    except Exception as exc:  # a gradient sum broken by a helper that died (killed, out of memory)
        failed = stop_helpers(helpers)
        if not failed:
            raise
        log.error("data-parallel training: helpers %s ended abnormally; rank 0: %s", failed, exc)
        raise TransientError(
            "a training process ended abnormally; the stage resumes from its last checkpoint"
        ) from exc
    finally:
        stop_helpers(helpers)
        shutil.rmtree(scratch, ignore_errors=True)


def start_helpers(
    cfg: train.TrainConfig,
    inputs: train.TrainInputs,
    settings: Settings,
    world: int,
    rendezvous: Path,
    resume_from: Path | None,
) -> list[Any]:
    """Spawn ranks 1..world-1, each in its scratch directory (with a copy of ``resume_from``, rank 0's
    latest checkpoint, where there is one). Helpers neither repair, validate nor hold data out."""
    ctx = multiprocessing.get_context("spawn")
    helper_cfg = replace(cfg, repair="none")
    procs = []
    for rank in range(1, world):
        home = rendezvous.parent / f"rank-{rank}"
        if resume_from is not None:
            shutil.copytree(resume_from, home / "checkpoints" / resume_from.name)
        args = (
            helper_cfg,
            inputs.examples,
            inputs.anchors,
            inputs.alignment,
            settings,
            rank,
            world,
            str(rendezvous),
            str(home),
        )
        p = ctx.Process(target=helper, args=args, name=f"train-rank-{rank}", daemon=True)
        p.start()
        procs.append(p)
    return procs


def stop_helpers(procs: list[Any]) -> list[tuple[str, int | None]]:
    """Wait for the helpers to leave (killing any still there after ``HELPER_EXIT_WAIT_S``); the (name,
    exit code) of each that did not end cleanly."""
    failed = []
    for p in procs:
        p.join(HELPER_EXIT_WAIT_S)
        if p.is_alive():
            p.kill()
            p.join()
        if p.exitcode != 0:
            failed.append((p.name, p.exitcode))
    return failed


def helper(
    cfg: train.TrainConfig,
    examples: list[Conversation],
    anchors: list[Conversation],
    alignment: list[Conversation],
    settings: Settings,
    rank: int,
    world: int,
    rendezvous: str,
    home: str,
) -> None:
    """Rank ``rank`` (a spawned process): train its shares of every step beside rank 0."""
    use_settings(settings)
    with one_thread():
        shard = dataparallel.join(rank, world, Path(rendezvous))
        try:
            io = StageIO(Path(home), stage=train.SPEC.name)
            mine = train.TrainInputs(
                examples, io, settings, anchors=anchors, alignment=alignment, shard=shard
            )
            train.run(cfg, mine)
        finally:
            dataparallel.leave(shard)


@contextmanager
def one_thread() -> Iterator[None]:
    """One torch thread and one BLAS thread in this process while inside (restored after)."""
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)
