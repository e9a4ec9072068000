"""The job pipeline: the stage specs in order (the only list of stages).

validate ──> score ──> mitigate ──> train ──> evaluate ──> repair ──> gate ──> succeeded | failed (blocked)

(repair does nothing unless the gate would block the adapter for erosion: worker/stages/repair.py)
"""

from __future__ import annotations

from worker.stages import evaluate, gate, mitigate, repair, score, train, validate
from worker.stages.spec import Pipeline

PIPELINE = Pipeline(
    [validate.SPEC, score.SPEC, mitigate.SPEC, train.SPEC, evaluate.SPEC, repair.SPEC, gate.SPEC]
)
