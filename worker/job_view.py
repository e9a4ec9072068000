"""What the stages see of a job: a snapshot of its row (``JobView``), read once in a short transaction.

Each stage writes into ``job_dir(settings, job_id)/<stage>/``; its spec's ``build`` turns this snapshot, the
effective safety policy stored on the job and earlier stages' results into plain paths and conversations,
never DB rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from models.policy import Policy
from models.records import Hyperparameters
from models.tables import File, Job, Organization
from tunegate.errors import NotFound
from tunegate.settings import Settings
from tunegate.storage import ObjectMissing, get_storage


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.jobs_path / job_id


@dataclass(frozen=True)
class JobView:
    """What the stages need from a job row, read once in a short transaction."""

    id: str
    org_name: str
    model: str
    training_file: Path
    validation_file: Path | None
    hyperparameters: Hyperparameters
    seed: int
    suffix: str | None
    # the effective policy stored on the job (a job created before a knob existed lacks it: its readers fall
    # back to ``DEFAULT_POLICY``, as the stage configs' defaults do)
    safety: Policy


def _file_path(session: Session, org_id: str, file_id: str, settings: Settings) -> Path:
    row = session.get(File, file_id)
    if row is None or row.org_id != org_id or row.deleted_at is not None:
        raise NotFound(f"training file {file_id} no longer exists", param="training_file")
    try:  # the stages read local paths: a remote object is copied into the worker's file cache first
        return get_storage(settings).materialize(row.storage_key, settings.file_cache_path)
    except ObjectMissing:  # the message names no storage path: the tenant reads it in the job's error
        raise NotFound(
            f"the stored content of training file {file_id} is missing",
            param="training_file",
            code="file_content_missing",
        ) from None


def merged_hyperparameters(job: Job) -> Hyperparameters:
    """Top-level ``hyperparameters`` overridden by ``method.supervised.hyperparameters`` (as OpenAI; a null
    there overrides nothing)."""
    hp = (job.hyperparameters or {}).copy()
    sup = ((job.method or {}).get("supervised") or {}).get("hyperparameters") or {}
    if (batch_size := sup.get("batch_size")) is not None:
        hp["batch_size"] = batch_size
    if (multiplier := sup.get("learning_rate_multiplier")) is not None:
        hp["learning_rate_multiplier"] = multiplier
    if (n_epochs := sup.get("n_epochs")) is not None:
        hp["n_epochs"] = n_epochs
    return hp


def local_view(
    training_file: Path,
    model: str,
    *,
    policy: Policy,
    hyperparameters: Hyperparameters | None = None,
    validation_file: Path | None = None,
    seed: int = 0,
) -> JobView:
    """A job that lives in no database (``tunegate finetune``): the same snapshot the stages read."""
    return JobView(
        id="local",
        org_name="local",
        model=model,
        training_file=Path(training_file),
        validation_file=validation_file,
        hyperparameters=(hyperparameters or {}).copy(),
        seed=seed,
        suffix=None,
        safety=policy.copy(),
    )


def job_view(session: Session, job: Job, settings: Settings) -> JobView:
    org = session.get(Organization, job.org_id)
    val = _file_path(session, job.org_id, job.validation_file, settings) if job.validation_file else None
    return JobView(
        id=job.id,
        org_name=org.name if org else job.org_id,
        model=job.model,
        training_file=_file_path(session, job.org_id, job.training_file, settings),
        validation_file=val,
        hyperparameters=merged_hyperparameters(job),
        seed=int(job.seed or 0),
        suffix=job.suffix,
        safety=job.safety.copy(),
    )
