"""The one progress bar: the callback every stage and scorer takes, with an ETA from the average rate."""

from __future__ import annotations

import io
from contextlib import redirect_stderr

import pytest

from cli.progress import Progress


def test_takes_both_callback_shapes_and_shows_message_loss_and_eta() -> None:
    err = io.StringIO()
    with redirect_stderr(err), Progress("training") as bar:
        bar(0.2, "self-distillation 4/20")  # the scorers' (fraction, message)
        bar(0.6, "epoch 1/2 step 3/6", {"train_loss": 1.25})  # StageIO's (fraction, message, metrics)
        assert bar._first is not None
        start = bar._first[0]
        assert bar.eta(start + 8.0) == pytest.approx(8.0)  # 0.4 done in 8 s: 0.4 left takes 8 s more
        assert bar.eta(start) is None
    text = err.getvalue()
    assert "training" in text and "60%" in text and "step 3/6 loss=1.250" in text and "<" in text


def test_eta_is_unknown_before_anything_moved() -> None:
    with redirect_stderr(io.StringIO()), Progress("x") as bar:
        assert bar.eta(1e9) is None
        bar(0.3, "loading")
        assert bar.eta(1e9) is None  # one report: no rate yet
