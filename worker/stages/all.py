"""The job pipeline: the stage specs in order (the only list of stages).

validate ──> score ──> mitigate ──> train ──> evaluate ──> gate ──> succeeded | failed (blocked)
"""

from __future__ import annotations

from worker.stages import evaluate, gate, mitigate, score, train, validate
from worker.stages.spec import Pipeline

PIPELINE = Pipeline([validate.SPEC, score.SPEC, mitigate.SPEC, train.SPEC, evaluate.SPEC, gate.SPEC])
