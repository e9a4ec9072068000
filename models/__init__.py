"""SQLAlchemy models of tunegate (the schema itself is created only by the Alembic migrations)."""

from models.base import Base, new_id, unix, utcnow
from models.jobs import JobStatus, record_event, transition
from models.tables import ApiKey, Checkpoint, File, Job, JobEvent, Organization, Upload, UploadPart

__all__ = [
    "ApiKey",
    "Base",
    "Checkpoint",
    "File",
    "Job",
    "JobEvent",
    "JobStatus",
    "Organization",
    "Upload",
    "UploadPart",
    "new_id",
    "record_event",
    "transition",
    "unix",
    "utcnow",
]
