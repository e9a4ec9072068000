"""The one error tree of tunegate.

    TunegateError                      every error we raise on purpose
    ├── InvalidRequest        400      a request or its body is malformed
    │   └── InvalidFile       400      a training file breaks a rule (names file, line, field)
    ├── AuthenticationFailed  401      missing, unknown or revoked API key
    ├── PermissionDenied      403      exists, but not allowed (e.g. an unreleased adapter)
    │   └── QuotaExceeded     403      the organization's stored files would pass its storage quota
    ├── NotFound              404      no such object for this organization
    ├── MethodNotAllowed      405
    ├── Conflict              409      state or idempotency conflict (never retried by clients)
    ├── Unprocessable         422      well-formed but invalid (hyperparameters, unknown model)
    │   ├── InvalidConfig     422      a stage or policy config field is out of range
    │   └── UnsafeTrainingData 422     the data is refused before training (mostly flagged; names lines)
    ├── PayloadTooLarge       413
    ├── RateLimited           429      carries retry_after seconds
    │   └── TooManyActiveJobs 429      the organization has as many active jobs as it may have
    ├── JobCancelled                   a worker observed a cancel request at a step boundary
    ├── JobPaused                      a worker observed a pause request at a checkpoint boundary
    ├── ClaimLost                      another worker took over this job stage: stop without writing
    ├── StageTimeLimit                 a stage ran past its queue's time limit (Settings.*_stage_time_limit_s)
    ├── ModelError                     a base model cannot be resolved, converted or loaded
    └── TransientError                 the only retryable class (broker/database/network hiccups)
        ├── StorageFull       507      the disk is full (ENOSPC) while storing a file or writing artifacts
        └── StorageUnavailable 503     the object store (TUNEGATE_STORAGE_URL) failed or could not be reached

HTTP mapping lives in one place, ``api/core/errors.py``; Celery retries only ``TransientError``.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class ErrorBody(TypedDict):
    """The API's error object (``{"error": ...}``), as OpenAI's API shapes it."""

    message: str
    type: str
    param: str | None
    code: str | None


class JobError(TypedDict):
    """A failed job's or safety scan's ``error`` (stored in its row's JSON column, shown as it is)."""

    code: str | None
    message: str
    param: NotRequired[str | None]  # a scan that could not be queued stores none


class TunegateError(Exception):
    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code

    def to_dict(self) -> ErrorBody:
        """The API's error body (``{"error": ...}``, api/core/errors.py)."""
        return {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}

    def job_error(self) -> JobError:
        """The error a failed job or safety scan stores and shows (``error`` of OpenAI's fine-tuning job):
        the API body's fields without its ``type``."""
        return {"code": self.code, "message": self.message, "param": self.param}


class InvalidRequest(TunegateError):
    status_code = 400
    error_type = "invalid_request_error"


class InvalidFile(InvalidRequest):
    """A training file breaks a rule. ``line`` is 1-based; ``field`` names the offending key."""

    default_code = "invalid_file"

    def __init__(
        self,
        message: str,
        *,
        line: int | None = None,
        field: str | None = None,
        filename: str | None = None,
        param: str | None = "file",
        code: str | None = None,
    ) -> None:
        where = []
        if filename:
            where.append(filename)
        if line is not None:
            where.append(f"line {line}")
        if field:
            where.append(f"field '{field}'")
        full = f"{', '.join(where)}: {message}" if where else message
        super().__init__(full, param=param, code=code)
        self.line = line
        self.field = field
        self.filename = filename
        self.reason = message


class AuthenticationFailed(TunegateError):
    status_code = 401
    error_type = "invalid_request_error"
    default_code = "invalid_api_key"


class PermissionDenied(TunegateError):
    status_code = 403
    error_type = "invalid_request_error"
    default_code = "permission_denied"


class QuotaExceeded(PermissionDenied):
    default_code = "storage_quota_exceeded"


class NotFound(TunegateError):
    status_code = 404
    error_type = "invalid_request_error"
    default_code = "not_found"


class MethodNotAllowed(TunegateError):
    status_code = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class Conflict(TunegateError):
    status_code = 409
    error_type = "invalid_request_error"
    default_code = "conflict"


class PayloadTooLarge(TunegateError):
    status_code = 413
    error_type = "invalid_request_error"
    default_code = "file_too_large"


class Unprocessable(TunegateError):
    status_code = 422
    error_type = "invalid_request_error"
    default_code = "invalid_value"


class InvalidConfig(Unprocessable):
    default_code = "invalid_config"


class RateLimited(TunegateError):
    status_code = 429
    error_type = "rate_limit_error"
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyActiveJobs(RateLimited):
    """Job create past the organization's active-job limit (``Settings.max_active_jobs_per_org``, or its
    policy's ``max_active_jobs``); retrying at once does not help, a job must end first."""

    default_code = "too_many_active_jobs"


class JobCancelled(TunegateError):
    error_type = "cancelled"
    default_code = "cancelled"


class JobPaused(TunegateError):
    """A pause was requested and the stage reached a checkpoint it can resume from: the job pauses."""

    error_type = "paused"
    default_code = "paused"


class ClaimLost(TunegateError):
    """Another worker took over this job stage (this one was presumed dead): stop without writing."""

    error_type = "server_error"
    default_code = "claim_lost"


class StageTimeLimit(TunegateError):
    """A stage ran past the soft time limit of its queue; the job fails with ``stage_time_limit``."""

    error_type = "server_error"
    default_code = "stage_time_limit"


class ModelError(TunegateError):
    status_code = 422
    error_type = "invalid_request_error"
    default_code = "model_not_available"


class TransientError(TunegateError):
    status_code = 503
    error_type = "server_error"
    default_code = "transient"


class StorageFull(TransientError):
    """No space left while writing; nothing half-written stays visible. Retried like any transient error."""

    status_code = 507
    default_code = "storage_full"


# The codes the safety gate blocks a job with (worker/stages/gate.py decides them; a moderator may override
# them in the console; /metrics counts them).
UNSAFE_TRAINING_DATA = "unsafe_training_data"
SAFETY_EVAL_FAILED = "safety_eval_failed"
OVER_REFUSAL = "over_refusal"
GATE_CODES = (UNSAFE_TRAINING_DATA, SAFETY_EVAL_FAILED, OVER_REFUSAL)


class UnsafeTrainingData(Unprocessable):
    """The training data was refused as unsafe before training (e.g. mitigation would have to repair more
    than the policy's ``max_repair_share`` of it); the message names the lines, ``report`` is the safety
    report written for it (a local path or a store key; empty when none)."""

    default_code = UNSAFE_TRAINING_DATA

    def __init__(self, message: str, *, param: str | None = "training_file", report: str = "") -> None:
        super().__init__(message, param=param)
        self.report = report


class StorageUnavailable(TransientError):
    """The object store answered with an error or could not be reached (the message names no host, bucket
    or key: the cause is chained for the logs). Retried like any transient error."""

    default_code = "storage_unavailable"
