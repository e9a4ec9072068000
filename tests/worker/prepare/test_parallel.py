"""Pieces of work side by side in spawned processes: results in order, progress combined, errors raised."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunegate.settings import get_settings
from worker.prepare import parallel


def square_in_child(x: int, *, progress: parallel.Report) -> tuple[int, int]:
    """A piece: reports its progress and returns what it computed with the settings it was handed."""
    progress(0.5, f"half of {x}")
    progress(1.0, f"done {x}")
    return x * x, get_settings().torch_threads


def fail_in_child(x: int, *, progress: parallel.Report) -> int:
    raise ValueError(f"piece {x} failed")


@pytest.mark.parametrize(
    ("cores", "device", "n", "expected"),
    [
        (2, "cpu", 3, 2),
        (8, "cpu", 3, 3),
        (1, "cpu", 3, 1),
        (4, "cuda", 3, 1),
        (4, "cpu", 1, 1),
        (64, "cpu", 64, 8),
    ],
)
def test_process_count(
    monkeypatch: pytest.MonkeyPatch, cores: int, device: str, n: int, expected: int
) -> None:
    monkeypatch.setattr(parallel, "available_cpus", lambda: cores)
    assert parallel.processes(get_settings(), device, n) == expected


def test_the_setting_caps_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "available_cpus", lambda: 8)
    settings = get_settings().model_copy(update={"prepare_processes": 3})
    assert parallel.processes(settings, "cpu", 5) == 3
    assert parallel.processes(settings.model_copy(update={"prepare_processes": 1}), "cpu", 5) == 1


def test_pieces_run_in_child_processes_with_one_thread(
    tunegate_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parallel, "available_cpus", lambda: 2)
    seen: list[tuple[float, str]] = []
    pieces = [parallel.Piece(square_in_child, (x,), weight=float(x)) for x in (3, 1, 2)]
    out = parallel.run(pieces, get_settings(), "cpu", lambda f, m, met: seen.append((f, m)))
    assert out == [(9, 1), (1, 1), (4, 1)]  # in the pieces' order, each child with one torch thread
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)


def test_one_process_runs_here(tunegate_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "available_cpus", lambda: 1)
    out = parallel.run([parallel.Piece(square_in_child, (5,))], get_settings(), "cpu", lambda f, m, met: None)
    assert out == [(25, get_settings().torch_threads)]


def test_a_failing_piece_raises_its_error(tunegate_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel, "available_cpus", lambda: 2)
    pieces = [parallel.Piece(square_in_child, (2,)), parallel.Piece(fail_in_child, (7,))]
    with pytest.raises(ValueError, match="piece 7 failed"):
        parallel.run(pieces, get_settings(), "cpu", lambda f, m, met: None)
