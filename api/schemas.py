"""Request and response bodies (separate classes), shaped after the OpenAI objects the SDK parses.

Nullable fields are always present and ``null`` (never ``{}``). Our additions to OpenAI's objects (``safety``,
``stage``, ``progress``, ...) are extra fields, which the SDK keeps.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, NotRequired, Protocol, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, with_config
from typing_extensions import TypedDict

from tunegate.jsonfields import JsonField, JsonObjectField
from tunegate.netguard import Outcome
from tunegate.unicode import replaced

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


def _printable_text(value: Any) -> Any:
    """Text the API stored before it refused lone UTF-16 surrogates (issue 29) can still hold one, which no
    JSON answer can encode: every list, retrieve and cancel of its organization answered 500. Such text is
    shown with U+FFFD in its place (used as a ``before`` validator of the fields that hold stored text)."""
    return replaced(value)


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

    _printable = field_validator("filename", "status_details", mode="before")(_printable_text)


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

    _printable = field_validator("message", "param", mode="before")(_printable_text)


class HyperparametersOut(BaseModel):
    batch_size: int | Literal["auto"]
    learning_rate_multiplier: float | Literal["auto"]
    n_epochs: int | Literal["auto"]


# What a job stored in a JSON column, typed: a TypedDict (not a model) so that the answer holds the keys
# stored and no others (one it does not know, from another version, is kept); pydantic writes them in the
# order declared here, the order the API stores them in.
_STORED = ConfigDict(extra="allow")


@with_config(_STORED)
class MethodHyperparametersOut(TypedDict, total=False):
    batch_size: int | Literal["auto"] | None
    learning_rate_multiplier: float | Literal["auto"] | None
    n_epochs: int | Literal["auto"] | None


@with_config(_STORED)
class SupervisedOut(TypedDict, total=False):
    hyperparameters: MethodHyperparametersOut


@with_config(_STORED)
class MethodOut(TypedDict, total=False):
    """The SDK's ``Method``. The API stores ``type`` and ``supervised`` (it refuses the other methods)."""

    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedOut
    dpo: JsonObjectField
    reinforcement: JsonObjectField


@with_config(_STORED)
class RepairOut(TypedDict, total=False):
    """The repair stage's record (``Job.repair``): whether a repair passed, which (``method``, e.g.
    "restore:0.25"; null: none did), the variants tried in order and why, in words."""

    repaired: bool
    method: str | None
    tried: list[str]
    reason: str


class WandbOut(TypedDict):
    project: str
    entity: NotRequired[str | None]
    name: NotRequired[str | None]
    tags: NotRequired[list[str] | None]
    run_id: str


class IntegrationOut(TypedDict):
    """The SDK's ``FineTuningJobWandbIntegrationObject`` (refused by this gateway: a job has none)."""

    type: Literal["wandb"]
    wandb: WandbOut


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
    integrations: list[IntegrationOut] | None = None
    user_provided_suffix: str | None = None
    metadata: dict[str, str] | None
    method: MethodOut
    # extensions
    safety: JsonObjectField  # the job's effective policy as stored (models/policy.py)
    stage: str | None
    progress: float
    cancel_requested: bool
    released: bool
    paused: bool = False  # paused (status reads Settings.paused_status); jobs.resume continues it
    pause_requested: bool = False  # the worker pauses at its next checkpoint
    # why an admitted job makes no progress, e.g. "no worker is serving queue gpu" (models/presence.py)
    waiting: str | None = None
    # the repair stage's record when the gate would have blocked the adapter for erosion; null when there was
    # nothing to repair
    repair: RepairOut | None = None

    _printable = field_validator("metadata", "safety", "method", "integrations", mode="before")(
        _printable_text
    )


class EventOut(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    data: JsonObjectField  # what the worker recorded with the event (metrics, the stage, the gate's figures)
    type: Literal["message", "metrics"]

    _printable = field_validator("message", "data", mode="before")(_printable_text)


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
    # Extensions: a base model listed but not yet usable says why, and what the operator runs to fix it.
    ready: bool = True
    status_details: str | None = None


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

    _printable = field_validator("url", "events", mode="before")(_printable_text)


class WebhookCreatedOut(WebhookOut):
    secret: str = Field(description="The signing secret (whsec_...); shown only in this answer.")


class WebhookDeletedOut(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    deleted: bool


class WebhookEndpointOut(BaseModel):
    """The openai SDK's ``WebhookEndpoint`` (``client.webhooks.retrieve``/``list``/``update``)."""

    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    name: str
    url: str
    event_types: list[str]
    signing_secret_hint: str | None
    created_at: int
    updated_at: int | None

    _printable = field_validator("name", "url", "event_types", mode="before")(_printable_text)


class WebhookEndpointWithSecretOut(WebhookEndpointOut):
    """``WebhookEndpointWithSecret``: the answer of ``create`` and ``rotate_secret``, the only ones that carry
    the signing secret."""

    signing_secret: str = Field(description="The signing secret (whsec_...); shown only in this answer.")


class WebhookEndpointDeletedOut(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool


class WebhookEndpointTestOut(BaseModel):
    """``WebhookEndpointTestResult``: the receiver answered ``status_code`` (success is true whenever it
    answered at all; no answer, or an address the policy refuses, is an error instead)."""

    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    webhook_endpoint_id: str
    event_type: str
    status_code: int
    success: Literal[True] = True


class WebhookEventTypesOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[str]


class WebhookDeliveryOut(BaseModel):
    id: str
    object: Literal["webhook_endpoint.delivery"] = "webhook_endpoint.delivery"
    endpoint_id: str
    event_id: str
    event_type: str
    job_id: str
    status: Literal["pending", "sending", "delivered", "failed"]
    attempts: int
    # The latest attempt as a class only (tunegate.netguard.outcome), never the receiver's status or words:
    # 2xx..5xx, connection_failed (no answer) or refused_by_policy (the address is not allowed; nothing sent).
    last_result: Outcome | None
    last_error: Outcome | None = Field(description="last_result when that attempt failed, else null.")
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
    dpo: JsonObjectField | None = None  # not offered: any JSON object is taken, and not used
    reinforcement: JsonObjectField | None = None


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
    integrations: list[JsonObjectField] | None = None  # not offered: a job with integrations answers 400
    safety: JsonObjectField | None = Field(
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


class ExpiresAfterIn(TypedDict, total=False):
    """The SDK's ``ExpiresAfter``, ``{"anchor": "created_at", "seconds": N}``: its parts are taken as any JSON
    here, and checked by ``file_store.expires_after_seconds`` (a 400 naming the part); a TypedDict, so that
    anything but an object is refused in the words of any other object field."""

    anchor: JsonField
    seconds: JsonField


class UploadCreateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bytes: int = Field(
        ge=1, description="The size of the whole file; complete checks the parts add up to it."
    )
    filename: str = Field(min_length=1, max_length=512)
    mime_type: str = Field(min_length=1, max_length=128)
    purpose: str = Field(max_length=64)
    expires_after: ExpiresAfterIn | None = Field(
        default=None, description="The completed file's expiry: {'anchor': 'created_at', 'seconds': N}."
    )


class UploadCompleteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    part_ids: list[str] = Field(min_length=1, max_length=10_000, description="The parts, in file order.")
    md5: str | None = Field(default=None, max_length=64)


class WebhookEndpointCreateIn(BaseModel):
    """``client.webhooks.create``; shape only: ``models.webhooks`` checks the values (a 400 naming one)."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(default=None, description="The http(s) URL that receives the events.")
    name: str | None = Field(default=None, description="A human-readable name for the endpoint.")
    event_types: list[str] | None = Field(
        default=None, description="Event types to send, e.g. fine_tuning.job.failed."
    )


class WebhookEndpointUpdateIn(BaseModel):
    """``client.webhooks.update``: what is given changes, the rest stays."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = None
    name: str | None = None
    event_types: list[str] | None = None


class WebhookRotateSecretIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep_old_secret_active_for_24_hours: bool = Field(
        default=False, description="Also sign deliveries with the previous secret for 24 hours."
    )


class WebhookTestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event_type: str | None = Field(default=None, description="The sample event's type.")


class WebhookCreateIn(BaseModel):
    """Shape only; ``models.webhooks`` checks the values (400 naming ``url`` or ``events``)."""

    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(default=None, description="The http(s) URL that receives the events.")
    events: list[str] | None = Field(
        default=None, description="Event types to send, e.g. fine_tuning.job.failed."
    )


# --- safety scans (an extension: POST /v1/files/{file_id}/safety_scan) ------------------------------------


class SafetyScanCreateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=256, description="The base model the file would train.")


class SafetyScanVerdictOut(BaseModel):
    """The score stage's verdict on the file for that model (the one a job's score stage reaches)."""

    flagged: bool
    reason: str

    _printable = field_validator("reason", mode="before")(_printable_text)


class SafetyScanErrorOut(BaseModel):
    code: str
    message: str
    param: str | None

    _printable = field_validator("message", "param", mode="before")(_printable_text)


class SafetyScanOut(BaseModel):
    id: str
    object: Literal["safety_scan"] = "safety_scan"
    status: Literal["queued", "running", "completed", "failed"]
    file_id: str
    model: str
    verdict: SafetyScanVerdictOut | None = Field(description="null until the scan has completed.")
    summary: JsonObjectField | None = Field(
        description="Counts, the scorers, the cluster and the ten riskiest lines; null until completed."
    )
    mitigation: JsonObjectField | None = Field(
        description="What the mitigate stage would do: lines kept, down-weighted, dropped; examples injected."
    )
    created_at: int
    completed_at: int | None
    error: SafetyScanErrorOut | None = Field(description="Why the scan failed; null unless failed.")
    progress: float = Field(description="0..1 while the scan runs.")

    _printable = field_validator("summary", "mitigation", mode="before")(_printable_text)


class SafetyScanRecordOut(BaseModel):
    """One line of the scanned file: its risk, why, its text and what the mitigate stage would do with it."""

    id: str = Field(description="line-<n>: the cursor of ?after=")
    object: Literal["safety_scan.record"] = "safety_scan.record"
    line: int
    rank: int = Field(description="1 for the riskiest line of the file.")
    risk: float = Field(description="The scorers' combined reference percentile, 0..100.")
    percentiles: dict[str, float] = Field(description="Each scorer's percentile in the reference corpus.")
    reasons: list[str] = Field(description="Why the line is risky, in plain words (empty: it is not).")
    text: str
    action: Literal["keep", "downweight", "exclude", "drop", "refuse"] = Field(
        description="keep; downweight (its reply is not trained on); exclude (down-weighted to nothing: "
        "left out); drop; refuse (too many such lines: a job on the file would fail before training)."
    )

    _printable = field_validator("reasons", "text", mode="before")(_printable_text)
