"""``estimated_finish`` of a running job, from the measured speed of its running stage.

The worker records progress events whose ``data.progress`` is the job's overall progress (0..1, each stage
weighted by its usual share of the time) with the time they were written. Over the running stage's events,
the rate is (last progress - first progress) / (last time - first time); the rest of the job is assumed to
go at that rate. Until the stage has two points that show progress there is no estimate (null), and an
estimate is never in the past.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def estimate_finish(points: Sequence[tuple[float, float]], *, now: float) -> int | None:
    """Unix seconds at which a job whose running stage recorded ``points`` ((unix time, overall progress),
    in any order) should finish; None without two points that show progress."""
    if len(points) < 2:
        return None
    ordered = sorted(points)
    (t0, p0), (t1, p1) = ordered[0], ordered[-1]
    if t1 <= t0 or p1 <= p0:
        return None
    rate = (p1 - p0) / (t1 - t0)
    finish = t1 + max(0.0, 1.0 - p1) / rate
    return math.ceil(max(finish, now))
