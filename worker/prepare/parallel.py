"""One-time work split into pieces that run side by side: one process per core, one torch thread each.

A small model's CPU work scales poorly across the threads of one process (on 2 cores, two threads ran a
training micro-batch 1.8x and a decoding step 1.4x as fast as one) but fully across processes, and a
one-thread process multiplies through OpenBLAS where that is faster (``worker/ml/blas.py``). The aligned-base
build and a base model's caches (``align.py``, ``caches.py``) split their work into ``Piece`` s.

A piece is a module-level function (a spawned child imports it) called as ``fn(*args, progress=report)``;
``report(fraction, message, metrics)`` reaches the parent's progress callback through a queue. Each child
works with the parent's settings, one torch thread (``tunegate.settings.use_settings``). On CUDA, on one
core, or with a single piece, everything runs here, one piece after the other.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_mod
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Protocol

from tunegate.cpus import available_cpus
from tunegate.settings import Settings, use_settings
from worker.ml.stage_io import Metric


class Report(Protocol):
    """A piece's progress callback: fraction of the piece done, a message, metrics (a training loss)."""

    def __call__(self, fraction: float, message: str, metrics: dict[str, Metric] | None = None) -> None: ...


Progress = Callable[[float, str, dict[str, Metric]], None]  # the caller's: overall fraction, message, metrics
MAX_PROCESSES = 8  # each child holds its own copy of the model


@dataclass(frozen=True)
class Piece:
    fn: Callable[..., Any]  # fn(*args, progress=report) -> result
    args: tuple[Any, ...]
    weight: float = 1.0  # its share of the progress bar, relative to the others


def processes(settings: Settings, device: str, n_pieces: int) -> int:
    """How many processes run ``n_pieces`` side by side here (1: in this process)."""
    if device.startswith("cuda") or n_pieces < 2:
        return 1
    wanted = settings.prepare_processes or min(available_cpus(), MAX_PROCESSES)
    return max(1, min(wanted, n_pieces))


_child_queue: Any = None


def _child_init(settings: Settings, q: Any) -> None:
    global _child_queue
    use_settings(settings)
    _child_queue = q


def _child_call(index: int, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    def report(fraction: float, message: str, metrics: dict[str, Metric] | None = None) -> None:
        _child_queue.put((index, fraction, message, metrics or {}))

    return fn(*args, progress=report)


class _Bar:
    """Combines the pieces' fractions (by weight) into one progress callback."""

    def __init__(self, pieces: Sequence[Piece], progress: Progress) -> None:
        self.weights = [p.weight for p in pieces]
        self.total = sum(self.weights) or 1.0
        self.done = [0.0] * len(pieces)
        self.progress = progress

    def __call__(
        self, index: int, fraction: float, message: str, metrics: dict[str, Metric] | None = None
    ) -> None:
        self.done[index] = max(self.done[index], min(1.0, fraction))
        overall = sum(w * f for w, f in zip(self.weights, self.done, strict=True)) / self.total
        self.progress(overall, message, metrics or {})


def run(pieces: Sequence[Piece], settings: Settings, device: str, progress: Progress) -> list[Any]:
    """Every piece's result, in the pieces' order; pieces start in that order as processes free up (put the
    longest first). The first exception raised by a piece is raised here."""
    bar = _Bar(pieces, progress)
    n = processes(settings, device, len(pieces))
    if n == 1:
        return [p.fn(*p.args, progress=lambda f, m, i=i: bar(i, f, m)) for i, p in enumerate(pieces)]
    ctx = multiprocessing.get_context("spawn")
    child = settings.model_copy(update={"torch_threads": 1, "prepare_processes": 1})
    with ctx.Manager() as manager:
        q = manager.Queue()
        with ProcessPoolExecutor(n, mp_context=ctx, initializer=_child_init, initargs=(child, q)) as pool:
            futures = [pool.submit(_child_call, i, p.fn, p.args) for i, p in enumerate(pieces)]
            pending: set[Future[Any]] = set(futures)
            while pending:
                _, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                _drain(q, bar)
                failed = next((f for f in futures if f.done() and f.exception() is not None), None)
                if failed is not None:
                    for f in futures:
                        f.cancel()  # the ones not started yet; running ones finish their piece
                    failed.result()  # raises the piece's exception
            _drain(q, bar)
            return [f.result() for f in futures]


def _drain(q: Any, bar: _Bar) -> None:
    while True:
        try:
            index, fraction, message, metrics = q.get_nowait()
        except queue_mod.Empty:
            return
        bar(index, fraction, message, metrics)
