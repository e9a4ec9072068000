"""What ``tunegate demo`` is about to do on this machine, and how long that should take.

The estimate is the work each phase does (decoding steps, training tokens, scoring tokens; counted from the
stage configs and the shipped data) times what this machine takes per unit of that work, measured a few
seconds before (``worker/prepare/calibrate.py``). ``OVERHEAD`` holds, per phase, what the unit counts
leave out (a KL teacher pass, per-example scoring work, evaluation bookkeeping); its values are measured
ratios of actual to counted time from the runs recorded in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# actual seconds / (counted units x unit cost), per phase, from measured first runs (docs/benchmarks.md,
# "First run"): the build's from 2026-12-04 (188 s; actual / estimated 0.85), the caches' and the jobs' from
# the fresh-home demos of 2026-12-07: on a 2-core AMD EPYC with native bf16 (caches 7.1 min where 4.5 were
# estimated: x 1.58, the request probe's fit and the anchors' save being uncounted; jobs 4.6 where 4.0 were),
# and with the shipped caches on a 2-core AMD EPYC with AVX2 only, training in fp32 (the anchors 3.8 min
# where 2.4 were: x 1.58, then x 1.34 once the passes were cut into shares that end with the probe, 0.85x
# the time side by side; jobs 8.4 where 5.9 were). The units are measured as one one-thread process when
# the build and caches run as one per core; the jobs run in one worker with every core, whose fp32 products
# on AMD go through MKL rather than the one-thread OpenBLAS measured (docs/benchmarks.md, "CPU matrix
# products"), hence the larger factor for fp32 training.
OVERHEAD = {
    "distill": 0.94,
    "align_train": 0.77,
    "scoring_cache": 1.48,
    "base_eval": 1.10,
    "anchors_alone": 1.34,
    "job": 0.24,
    "job_fp32": 0.30,
}
EVAL_BATCH_COST = 0.6  # a decoding step of a batch of 16 costs this share of one of 32 (measured)
# folding the shipped alignment adapter into the embedded model (worker/prepare/shipped.py): reading and
# writing 538 MB of weights and hashing them, 2-4 s measured (docs/benchmarks.md), about the same anywhere
FOLD_S = 5.0


@dataclass
class Phase:
    name: str
    what: str
    seconds: float


@dataclass
class DemoPlan:
    machine: str
    phases: list[Phase] = field(default_factory=list)

    @property
    def total_s(self) -> float:
        return sum(p.seconds for p in self.phases)

    def lines(self) -> list[str]:
        out = ["tunegate demo will:"]
        for i, p in enumerate(self.phases, 1):
            out.append(f"  {i}. {p.what}  [~{_minutes(p.seconds)}]")
        out.append(f"Expected on this machine ({self.machine}): about {_minutes(self.total_s)} in all.")
        return out


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


@dataclass(frozen=True)
class Workload:
    """Counts of the work one demo run does (no timing in here)."""

    distill_steps: int  # decoding steps of a batch of 32 (self-distillation)
    align_tokens: int  # training tokens of the alignment SFT (all epochs)
    cache_tokens: int  # tokens scored for the anchor and reference caches
    anchor_tokens: int  # of those, the anchor sets' (all a base with shipped caches scores)
    base_eval_steps: float  # decoding steps (batch-32 equivalents) of the base model's chat-template results
    job_train_tokens: int  # training tokens of both jobs together
    job_score_tokens: int  # tokens scored in both jobs
    job_eval_steps: float  # decoding steps (batch-32 equivalents) of both jobs' evaluations


def estimate(
    work: Workload,
    units: Any,
    *,
    build: bool,
    caches: bool,
    shipped: bool = False,
    shipped_caches: bool = False,
    parallel: int,
    machine: str,
    n_examples: tuple[int, int],
    processes: int = 1,
) -> DemoPlan:
    """A plan with each phase's expected seconds; ``units`` is a ``worker.prepare.calibrate.UnitCosts``
    measured as one of the ``processes`` one-thread processes that share the build and the caches;
    ``shipped``: the aligned base is made by folding the shipped adapter, not built by the recipe;
    ``shipped_caches``: its reference scores and own evaluation come with it, so the caches are the anchors
    alone, in one process with every thread."""
    plan = DemoPlan(machine=machine)
    side = f" ({processes} processes side by side)" if processes > 1 else ""
    if build and shipped:
        plan.phases.append(
            Phase(
                "build",
                "make the aligned base once: fold the shipped alignment adapter into the embedded model",
                FOLD_S,
            )
        )
    elif build:
        plan.phases.append(
            Phase(
                "build",
                "build the aligned base once: self-distil the base model's answers, then a LoRA safety SFT"
                + side,
                (
                    OVERHEAD["distill"] * work.distill_steps * units.decode_step_s
                    + OVERHEAD["align_train"] * work.align_tokens * units.train_token_s
                )
                / processes,
            )
        )
    if caches and shipped_caches:
        plan.phases.append(
            Phase(
                "caches",
                "score the base model's anchor sets (its reference scores and its own evaluation are "
                "shipped with it)",
                OVERHEAD["anchors_alone"] * work.anchor_tokens * units.fp32_token_s,
            )
        )
    elif caches:
        plan.phases.append(
            Phase(
                "caches",
                "score the base model's anchor and reference sets and evaluate it once (cached per base)"
                + side,
                (
                    OVERHEAD["scoring_cache"] * work.cache_tokens * units.fp32_token_s
                    + OVERHEAD["base_eval"] * work.base_eval_steps * units.decode_step_s
                )
                / processes,
            )
        )
    job_s = OVERHEAD["job_fp32" if units.precision == "fp32" else "job"] * (
        work.job_train_tokens * units.train_token_s
        + work.job_score_tokens * units.fp32_token_s
        + work.job_eval_steps * units.decode_step_s
    )
    # the workers share the machine's cores: the same total work whether one or two run the stages
    workers = f"{parallel} Celery worker{'s' if parallel > 1 else ''}"
    plan.phases.append(
        Phase(
            "jobs",
            f"start the API and {workers}, upload a benign ({n_examples[0]}) and a risky "
            f"({n_examples[1]} examples) dataset through the openai SDK, and run both jobs: "
            "validate, score, mitigate, train, evaluate, gate (the risky one should stop at mitigation)",
            job_s,
        )
    )
    return plan


def decode_steps(n_prompts: int, max_new_tokens: int, batch: int) -> float:
    """Batch-32-equivalent decoding steps to answer ``n_prompts`` in batches of ``batch``."""
    cost = 1.0 if batch >= 32 else EVAL_BATCH_COST
    return math.ceil(n_prompts / batch) * max_new_tokens * cost
