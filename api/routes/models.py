"""/v1/models: the configured base models and this organization's released fine-tunes; deleting a fine-tune
(``models.delete``) takes it off the list and makes its adapter and checkpoints no longer downloadable."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentOrg, SessionDep, SettingsDep
from api.schemas import ListOut, ModelDeletedOut, ModelOut
from api.services import crud
from models.base import unix, utcnow
from tunegate.errors import NotFound, PermissionDenied
from tunegate.model_cache import missing_reason

router = APIRouter(prefix="/v1/models", tags=["models"])
BASE_OWNER = "tunegate"


def _all(org: CurrentOrg, session: SessionDep, settings: SettingsDep) -> list[ModelOut]:
    out = []
    for name in sorted(settings.models):
        why = missing_reason(name, settings)
        out.append(ModelOut(id=name, created=0, owned_by=BASE_OWNER, ready=why is None, status_details=why))
    for job in crud.released_jobs(session, org=org):
        assert job.fine_tuned_model is not None
        out.append(
            ModelOut(
                id=job.fine_tuned_model,
                created=unix(job.finished_at or job.created_at) or 0,
                owned_by=org.name,
            )
        )
    return out


@router.get("", response_model=ListOut[ModelOut])
def list_models(org: CurrentOrg, session: SessionDep, settings: SettingsDep) -> ListOut[ModelOut]:
    return ListOut[ModelOut](data=_all(org, session, settings), has_more=False)


@router.get("/{model_id:path}", response_model=ModelOut)
def retrieve_model(model_id: str, org: CurrentOrg, session: SessionDep, settings: SettingsDep) -> ModelOut:
    for m in _all(org, session, settings):
        if m.id == model_id:
            return m
    raise NotFound(f"The model {model_id!r} does not exist", param="model", code="model_not_found")


@router.delete("/{model_id:path}", response_model=ModelDeletedOut)
def delete_model(
    model_id: str, org: CurrentOrg, session: SessionDep, settings: SettingsDep
) -> ModelDeletedOut:
    """Delete one of the organization's fine-tuned models (the job and its history stay)."""
    if model_id in settings.models:
        raise PermissionDenied(
            f"{model_id!r} is a base model of this gateway; only your organization's fine-tuned models "
            "can be deleted",
            param="model",
            code="model_not_deletable",
        )
    job = crud.released_model_job(session, org=org, model=model_id)
    if job is None:
        raise NotFound(f"The model {model_id!r} does not exist", param="model", code="model_not_found")
    job.model_deleted_at = utcnow()
    session.commit()
    return ModelDeletedOut(id=model_id, deleted=True)
