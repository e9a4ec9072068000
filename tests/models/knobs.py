"""A throwaway safety knob, added to ``models.policy.KNOBS`` for one test (issue 30: a knob is one row of the
table, and every place that lists the knobs finds a new one with no other edit)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from models import policy
from models.policy import KnobSpec

THROWAWAY = KnobSpec(
    "throwaway_share",
    "lower",
    "throwaway share of nothing",
    "a knob only the tests add: the share of nothing this job may keep",
    default=0.4,
)


@contextmanager
def throwaway_knob() -> Iterator[KnobSpec]:
    """``THROWAWAY`` in the knob table while the block runs; the table as it was after."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(policy.KNOBS, THROWAWAY.name, THROWAWAY)
        yield THROWAWAY
    assert THROWAWAY.name not in policy.KNOBS
