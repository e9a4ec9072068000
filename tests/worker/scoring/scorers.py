"""A throwaway scorer, added to ``tunegate.scorers.SCORERS`` with its hook in ``worker.scoring.scorers.HOOKS``
for one test (issue 30: a scorer is one spec and one hook, and every place that lists the scorers finds a new
one with no other edit)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tunegate import scorers
from tunegate.scorers import ScorerSpec
from worker.scoring import scorers as hooks
from worker.scoring.scorers import Pass

THROWAWAY = ScorerSpec(
    "throwaway_length",
    "length of the trained response (a test scorer)",
    "its trained response is long, which only a test scorer minds",
)


def response_length(p: Pass) -> dict[str, float]:
    """The example's supervised token count: a scorer needing neither the gradient nor the anchors."""
    return {THROWAWAY.name: float(p.example.n_response_tokens)}


@contextmanager
def throwaway_scorer() -> Iterator[ScorerSpec]:
    """``THROWAWAY`` in the scorer table, and its hook, while the block runs; both as they were after."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(scorers.SCORERS, THROWAWAY.name, THROWAWAY)
        mp.setitem(hooks.HOOKS, THROWAWAY.name, response_length)
        yield THROWAWAY
    assert THROWAWAY.name not in scorers.SCORERS and THROWAWAY.name not in hooks.HOOKS
