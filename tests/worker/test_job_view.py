"""Stage chaining and progress weights (the pipeline of specs), and what the stages see of a job row
(``worker.job_view``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.db import session_scope
from models.tables import Job
from tests.worker.jobfactory import make_job, use_tiny
from tunegate.errors import InvalidConfig
from tunegate.settings import get_settings, reset_settings
from worker import job_view
from worker.stages import validate
from worker.stages.all import PIPELINE
from worker.stages.spec import with_overrides


@pytest.fixture
def home(migrated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_tiny(monkeypatch)
    return migrated_home


def test_stages_chain_in_order_and_progress_reaches_one() -> None:
    order = [PIPELINE.first]
    while (nxt := PIPELINE.after(order[-1])) is not None:
        order.append(nxt)
    assert tuple(s.name for s in order) == PIPELINE.names
    marks = [PIPELINE.progress(s, f) for s in PIPELINE.names for f in (0.0, 0.5, 1.0)]
    assert marks == sorted(marks) and marks[0] == 0.0 and marks[-1] == 1.0
    assert len({s.task for s in PIPELINE.specs}) == len(PIPELINE.specs)
    assert {s.queue for s in PIPELINE.specs} == {"short", "cpu", "gpu"}


def test_method_hyperparameters_override_top_level() -> None:
    job = Job(
        hyperparameters={"n_epochs": 2, "batch_size": 4},
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 5, "batch_size": None}}},
    )
    assert job_view.merged_hyperparameters(job) == {"n_epochs": 5, "batch_size": 4}


def test_stage_overrides_are_applied_and_revalidated(
    monkeypatch: pytest.MonkeyPatch, tunegate_home: Path
) -> None:
    monkeypatch.setenv("TUNEGATE_STAGE_OVERRIDES", json.dumps({"validate": {"min_examples": 3}}))
    reset_settings()
    cfg = with_overrides(validate.ValidateConfig(model="m"), "validate", get_settings())
    assert cfg.min_examples == 3 and cfg.model == "m"
    monkeypatch.setenv("TUNEGATE_STAGE_OVERRIDES", json.dumps({"validate": {"min_examples": 3, "bogus": 1}}))
    reset_settings()
    with pytest.raises(InvalidConfig, match="unknown key.*bogus") as unknown:
        with_overrides(validate.ValidateConfig(model="m"), "validate", get_settings())
    assert unknown.value.param == "stage_overrides.validate.bogus"
    monkeypatch.setenv("TUNEGATE_STAGE_OVERRIDES", json.dumps({"validate": {"min_examples": 0}}))
    reset_settings()
    with pytest.raises(InvalidConfig) as err:
        with_overrides(validate.ValidateConfig(model="m"), "validate", get_settings())
    assert err.value.param == "min_examples"


def test_job_view_resolves_the_stored_file(home: Path) -> None:
    job_id = make_job("tiny", seed=7, suffix="s1", hyperparameters={"n_epochs": 1})
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        view = job_view.job_view(s, job, get_settings())
    assert view.training_file.is_file() and view.org_name == "acme" and view.seed == 7
    assert view.hyperparameters == {"n_epochs": 1}
    assert job_view.job_dir(get_settings(), job_id) == get_settings().jobs_path / job_id
