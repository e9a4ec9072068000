"""The demo's up-front plan: phases appear only when needed, and times scale with the measured unit costs."""

from __future__ import annotations

import dataclasses

import pytest

from cli.demo import worker_layout
from cli.demo_plan import EVAL_BATCH_COST, FOLD_S, OVERHEAD, DemoPlan, Workload, decode_steps, estimate
from worker.prepare.calibrate import UnitCosts

WORK = Workload(
    distill_steps=100,
    align_tokens=1000,
    cache_tokens=500,
    anchor_tokens=200,
    base_eval_steps=10.0,
    job_train_tokens=400,
    job_score_tokens=100,
    job_eval_steps=20.0,
)


def units(scale: float = 1.0) -> UnitCosts:
    return UnitCosts(
        train_token_s=0.01 * scale,
        fp32_token_s=0.02 * scale,
        decode_step_s=0.5 * scale,
        precision="fp32",
        threads=2,
    )


def test_first_run_has_every_phase_with_counted_times() -> None:
    plan = estimate(WORK, units(), build=True, caches=True, parallel=2, machine="m", n_examples=(40, 40))
    by = {p.name: p.seconds for p in plan.phases}
    assert list(by) == ["build", "caches", "jobs"]
    assert by["build"] == pytest.approx(
        OVERHEAD["distill"] * 100 * 0.5 + OVERHEAD["align_train"] * 1000 * 0.01
    )
    assert by["caches"] == pytest.approx(OVERHEAD["scoring_cache"] * 500 * 0.02 + OVERHEAD["base_eval"] * 5)
    # units() trains in fp32: the jobs' factor for fp32 training
    assert by["jobs"] == pytest.approx(OVERHEAD["job_fp32"] * (400 * 0.01 + 100 * 0.02 + 20 * 0.5))
    assert plan.total_s == pytest.approx(sum(by.values()))
    text = "\n".join(plan.lines())
    assert "build the aligned base" in text and "2 Celery workers" in text and "(m)" in text


def test_with_the_shipped_adapter_the_build_is_a_fold_whatever_the_machine() -> None:
    def plan_at(scale: float) -> DemoPlan:
        return estimate(
            WORK,
            units(scale),
            build=True,
            caches=True,
            shipped=True,
            parallel=2,
            machine="m",
            n_examples=(40, 40),
        )

    plan, slow = plan_at(1.0), plan_at(3.0)
    assert [p.name for p in plan.phases] == ["build", "caches", "jobs"]
    assert plan.phases[0].seconds == slow.phases[0].seconds == FOLD_S
    assert "fold the shipped alignment adapter" in "\n".join(plan.lines())


def test_with_shipped_caches_only_the_anchors_are_scored() -> None:
    plan = estimate(
        WORK,
        units(),
        build=True,
        caches=True,
        shipped=True,
        shipped_caches=True,
        parallel=2,
        machine="m",
        n_examples=(40, 40),
        processes=2,
    )
    caches = plan.phases[1]
    assert caches.name == "caches" and caches.seconds == pytest.approx(OVERHEAD["anchors_alone"] * 200 * 0.02)
    assert "shipped with it" in caches.what


def test_later_runs_skip_what_is_built_and_a_slower_machine_takes_longer() -> None:
    plan = estimate(WORK, units(), build=False, caches=False, parallel=1, machine="m", n_examples=(40, 40))
    assert [p.name for p in plan.phases] == ["jobs"]
    slow = estimate(WORK, units(3.0), build=False, caches=False, parallel=1, machine="m", n_examples=(40, 40))
    assert slow.total_s == pytest.approx(3 * plan.total_s)


def test_training_in_bf16_has_its_own_jobs_factor() -> None:
    bf16 = dataclasses.replace(units(), precision="bf16")
    plan = estimate(WORK, bf16, build=False, caches=False, parallel=1, machine="m", n_examples=(40, 40))
    assert plan.total_s == pytest.approx(OVERHEAD["job"] * (400 * 0.01 + 100 * 0.02 + 20 * 0.5))


def test_decode_steps_count_batches() -> None:
    assert decode_steps(60, 64, 32) == 2 * 64
    assert decode_steps(60, 64, 16) == pytest.approx(4 * 64 * EVAL_BATCH_COST)


@pytest.mark.parametrize(
    ("cores", "threads", "expected"),
    [
        (2, 0, (1, {"TUNEGATE_TORCH_THREADS": "2"})),  # one worker, both cores: no core idles
        (4, 0, (1, {"TUNEGATE_TORCH_THREADS": "4"})),
        (16, 0, (2, {"TUNEGATE_TORCH_THREADS": "8"})),
        (1, 0, (1, {"TUNEGATE_TORCH_THREADS": "1"})),
        (8, 3, (2, {})),  # the provider's explicit thread setting is kept
    ],
)
def test_worker_layout(cores: int, threads: int, expected: tuple[int, dict[str, str]]) -> None:
    assert worker_layout(cores, threads) == expected
