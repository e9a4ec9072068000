"""Request and response bodies (separate classes), shaped after the OpenAI objects the SDK parses.

Nullable fields are always present and ``null`` (never ``{}``). Our additions to OpenAI's objects (``safety``,
``stage``, ``progress``, ...) are extra fields, which the SDK keeps.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, Protocol, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator

T = TypeVar("T")

UPLOAD_PURPOSES = ("fine-tune", "assistants", "batch", "vision", "user_data")
AUTO = "auto"
# hyperparameter -> (kind, low, high); low is exclusive for floats
HPARAM_BOUNDS: dict[str, tuple[type, float, float]] = {
    "n_epochs": (int, 1, 50),
    "batch_size": (int, 1, 256),
    "learning_rate_multiplier": (float, 0.0, 1000.0),
}


# --- responses ---------------------------------------------------------------------------------


class FileOut(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["uploaded", "processed", "error"]
    status_details: str | None
    expires_at: int | None = None


class FileDeletedOut(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class UploadOut(BaseModel):
    id: str
    object: Literal["upload"] = "upload"
    bytes: int
    created_at: int
    expires_at: int
    filename: str
    purpose: str
    status: Literal["pending", "completed", "cancelled", "expired"]
    file: FileOut | None = None


class UploadPartOut(BaseModel):
    id: str
    object: Literal["upload.part"] = "upload.part"
    created_at: int
    upload_id: str


class JobErrorOut(BaseModel):
    code: str
    message: str
    param: str | None


class HyperparametersOut(BaseModel):
    batch_size: int | Literal["auto"]
    learning_rate_multiplier: float | Literal["auto"]
    n_epochs: int | Literal["auto"]


class JobOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobErrorOut | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: HyperparametersOut
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"]
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] | None = None
    user_provided_suffix: str | None = None
    metadata: dict[str, str] | None
    method: dict[str, Any]
    # extensions
    safety: dict[str, Any]
    stage: str | None
    progress: float
    cancel_requested: bool
    released: bool
    paused: bool = False  # paused (status reads Settings.paused_status); jobs.resume continues it
    pause_requested: bool = False  # the worker pauses at its next checkpoint


class EventOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: dict[str, Any]
    type: Literal["message", "metrics"]


class CheckpointMetricsOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None


class CheckpointOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: CheckpointMetricsOut


class ModelOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ListOut(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def page(cls, data: list[T], has_more: bool) -> ListOut[T]:
        """A cursor page: ``first_id``/``last_id`` name its ends (the SDK sends ``after=last_id``)."""
        first = cast(_Identified, data[0]).id if data else None
        last = cast(_Identified, data[-1]).id if data else None
        return cls(data=data, has_more=has_more, first_id=first, last_id=last)


class _Identified(Protocol):
    id: str


class ModelDeletedOut(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool


class WebhookOut(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    events: list[str]
    created_at: int


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(description="The signing secret (whsec_...); shown only in this answer.")


class WebhookDeletedOut(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    deleted: bool


class WebhookDeliveryOut(BaseModel):
    id: str
    object: Literal["webhook_endpoint.delivery"] = "webhook_endpoint.delivery"
    endpoint_id: str
    event_id: str
    event_type: str
    job_id: str
    status: Literal["pending", "sending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    created_at: int
    delivered_at: int | None
    next_attempt_at: int | None  # only while pending


class HealthOut(BaseModel):
    status: Literal["ok"]
    database: Literal["ok"]


# --- requests ----------------------------------------------------------------------------------


def _check_hparam(name: str, value: Any) -> Any:
    if value is None or value == AUTO:
        return AUTO
    kind, low, high = HPARAM_BOUNDS[name]
    ok_type = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int and ok_type and float(value).is_integer() and low <= value <= high:
        return int(value)
    if kind is float and ok_type and low < value <= high:
        return float(value)
    rng = f"an integer from {int(low)} to {int(high)}" if kind is int else f"a number in (0, {int(high)}]"
    raise ValueError(f"must be 'auto' or {rng}, got {value!r}")


class HyperparametersIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batch_size: int | Literal["auto"] | None = None
    learning_rate_multiplier: float | Literal["auto"] | None = None
    n_epochs: int | Literal["auto"] | None = None

    @field_validator("batch_size", "learning_rate_multiplier", "n_epochs", mode="before")
    @classmethod
    def _bounds(cls, v: Any, info: Any) -> Any:
        return None if v is None else _check_hparam(info.field_name, v)


class SupervisedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: HyperparametersIn | None = None


class MethodIn(BaseModel):
    type: str = Field(max_length=64, description="Only 'supervised' is offered; other types answer 400.")
    supervised: SupervisedIn | None = None
    dpo: dict[str, Any] | None = None
    reinforcement: dict[str, Any] | None = None


class JobCreateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=256)
    training_file: str = Field(min_length=1, max_length=64)
    validation_file: str | None = Field(default=None, max_length=64)
    hyperparameters: HyperparametersIn | None = None
    method: MethodIn | None = None
    suffix: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_.\-]*$")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    safety: dict[str, Any] | None = Field(
        default=None, description="Tighten the organization's safety policy (see models/policy.py)."
    )

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > 16:
            raise ValueError(f"at most 16 key-value pairs, got {len(v)}")
        for k, val in v.items():
            if len(k) > 64:
                raise ValueError(f"key {k[:20]!r}... is longer than 64 characters")
            if len(val) > 512:
                raise ValueError(f"value of {k!r} is longer than 512 characters")
        return v


class UploadCreateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bytes: int = Field(
        ge=1, description="The size of the whole file; complete checks the parts add up to it."
    )
    filename: str = Field(min_length=1, max_length=512)
    mime_type: str = Field(min_length=1, max_length=128)
    purpose: str = Field(max_length=64)
    expires_after: dict[str, Any] | None = Field(
        default=None, description="The completed file's expiry: {'anchor': 'created_at', 'seconds': N}."
    )


class UploadCompleteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    part_ids: list[str] = Field(min_length=1, max_length=10_000, description="The parts, in file order.")
    md5: str | None = Field(default=None, max_length=64)


class WebhookCreateIn(BaseModel):
    """Shape only; ``models.webhooks`` checks the values (400 naming ``url`` or ``events``)."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(default=None, description="The http(s) URL that receives the events.")
    events: list[str] | None = Field(
        default=None, description="Event types to send, e.g. fine_tuning.job.failed."
    )
