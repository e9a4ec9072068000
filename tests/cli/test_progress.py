"""The one progress bar: the callback every stage and scorer takes; tqdm's bar and ETA, with the average rate
counted from the first report."""

from __future__ import annotations

import io
from contextlib import redirect_stderr

import pytest

from cli.progress import Progress


class Clock:
    """tqdm's clock (``tqdm.std.time``), moved by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(1000.0)
    monkeypatch.setattr("tqdm.std.time", fake)
    return fake


def last_draw(err: io.StringIO) -> str:
    return err.getvalue().split("\r")[-1]


def test_takes_both_callback_shapes_and_shows_message_loss_and_eta(clock: Clock) -> None:
    err = io.StringIO()
    with redirect_stderr(err), Progress("training") as bar:
        clock.now += 30  # loading a model before the first report: counted as elapsed, not in the rate
        bar(0.2, "self-distillation 4/20")  # the scorers' (fraction, message)
        assert "[00:30<?] self-distillation 4/20" in last_draw(err)
        clock.now += 8
        bar(0.6, "epoch 1/2 step 3/6", {"train_loss": 1.25})  # StageIO's (fraction, message, metrics)
        # 0.4 done in 8 s: 0.4 left takes 8 s more
        assert "60%" in last_draw(err) and "[00:38<00:08] epoch 1/2 step 3/6 loss=1.250" in last_draw(err)
        clock.now += 2
        bar.describe("training again")  # redrawn 2 s later with no new report: the average rate fell
        assert "[00:40<00:10]" in last_draw(err) and last_draw(err).startswith("training again")
    assert "training" in err.getvalue()


def test_a_bar_opened_halfway_counts_its_rate_from_there(clock: Clock) -> None:
    """``follow`` on a job already 60 % done: the 60 % is not work done since the bar opened."""
    err = io.StringIO()
    with redirect_stderr(err), Progress("ftjob-x") as bar:
        bar(0.6)
        clock.now += 10
        bar(0.7)
        assert "70%" in last_draw(err) and "[00:10<00:30]" in last_draw(err)


def test_eta_is_unknown_before_anything_moved(clock: Clock) -> None:
    err = io.StringIO()
    with redirect_stderr(err), Progress("x") as bar:
        assert "<?]" in last_draw(err)
        bar(0.3, "loading")
        clock.now += 1e6
        bar(0.3, "loading")  # one fraction so far: no rate yet
        assert "<?] loading" in last_draw(err)


def test_a_disabled_bar_takes_reports() -> None:
    """``--quiet`` and non-interactive runs disable the bar; reports must still be taken (tqdm leaves a
    disabled bar without its clock)."""
    bar = Progress("quiet", enabled=False)
    bar(0.1, "start")
    bar(0.5, "half", {"train_loss": 1.0})
    bar.close()
