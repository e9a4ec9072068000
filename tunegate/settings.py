"""The one place that reads the environment.

Every process (API, worker, CLI, migrations) builds its configuration from ``get_settings()``.
Variables are prefixed ``TUNEGATE_`` and may also come from a ``.env`` file in the working directory.

Embedded mode (the default) keeps everything under ``TUNEGATE_HOME``: a SQLite database, a Celery broker
on SQLite (kombu's SQLAlchemy transport), stored files, job artifacts and the model cache. Setting
``TUNEGATE_DATABASE_URL`` (PostgreSQL) and ``TUNEGATE_BROKER_URL`` (Redis) switches to distributed mode with
the same code.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tunegate.jsonfields import JsonObjectField

EMBEDDED_BASE = "smollm2-135m"
EMBEDDED_ALIGNED = "smollm2-135m-aligned"


def _default_models() -> dict[str, str]:
    # "embedded:" sources are prepared by `tunegate models prepare [--aligned]` into the model cache.
    return {EMBEDDED_BASE: "embedded:smollm2", EMBEDDED_ALIGNED: "embedded:smollm2-aligned"}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TUNEGATE_", env_file=".env", env_ignore_empty=True, extra="ignore"
    )

    home: Path = Field(default=Path("~/.tunegate"), description="State directory of the embedded mode.")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite in home.")
    broker_url: str | None = Field(default=None, description="Celery broker; default SQLite in home.")
    storage_dir: Path | None = Field(default=None, description="Uploaded files; default home/files.")
    artifacts_dir: Path | None = Field(default=None, description="Job artifacts; default home/jobs.")
    # Where uploaded files and the published job artifacts (adapters, checkpoints' adapters, reports) live.
    # Unset: the local files directory (storage_dir) and the job directories on this machine, as one shared
    # disk. s3://bucket/prefix: an S3-compatible object store, so the API and the workers share no disk
    # (uploads under <prefix>/files/, artifacts under <prefix>/jobs/<job_id>/; local copies stay for resume).
    storage_url: str | None = None
    s3_endpoint_url: str | None = None  # e.g. http://minio:9000 (unset: AWS's own endpoint for the region)
    s3_access_key_id: str | None = None  # unset: boto's usual credential chain
    s3_secret_access_key: str | None = Field(default=None, repr=False)
    s3_region: str | None = None
    # Where a worker keeps local copies of stored training files (by storage key) when the store is remote.
    file_cache_dir: Path | None = Field(default=None, description="Default home/file-cache.")
    model_cache_dir: Path | None = Field(default=None, description="Converted models; default home/models.")
    eval_cache_dir: Path | None = Field(
        default=None, description="Cached base-model evaluation results; default <model cache>/eval-cache."
    )
    # The shipped aligned base's reference scores and its own evaluation come with it (computed once on
    # those weights, worker/prepare/shipped_caches.py); false: every one is computed on this machine.
    shipped_caches: bool = True

    # Base-model registry: job `model` name -> local HF directory, GGUF file or "embedded:<id>".
    models: dict[str, str] = Field(default_factory=_default_models)
    default_model: str = EMBEDDED_ALIGNED

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # The largest file: sent whole to POST /v1/files, or assembled from an upload's parts (/v1/uploads).
    max_upload_bytes: int = 512 * 1024 * 1024
    # One part of an upload (POST /v1/uploads/{id}/parts), counted while it is read like any body.
    max_upload_part_bytes: int = 64 * 1024 * 1024
    # An upload not completed this long after its creation expires; the worker's reaper removes its parts.
    upload_expiry_s: int = 3600
    # Every other request body (JSON), counted while it is read, chunked bodies included: 413 past it.
    max_body_bytes: int = 1024 * 1024
    # Provider default of the bytes an organization's live files may take (org policy may override it).
    storage_quota_bytes: int = 10 * 1024**3
    # Jobs an organization may have active at once (not yet succeeded, failed or cancelled; paused ones
    # count): job create answers 429 too_many_active_jobs past it. Org policy max_active_jobs overrides it.
    max_active_jobs_per_org: int = Field(default=6, ge=0)
    # At API startup, temp uploads and objects no row references are removed once this old (an upload in
    # flight in another API process has written its object but not yet its row).
    storage_sweep_grace_s: float = 3600.0
    # Every API process also removes its temp uploads (.part files, e.g. of a process killed mid-upload)
    # older than the grace above this often while it runs, not only at startup (0: only at startup).
    storage_sweep_interval_s: float = Field(default=300.0, ge=0)
    max_example_tokens: int = 8192
    min_examples: int = 10
    max_status_details: int = 100
    rate_limit_per_minute: int = 600
    # Failed authentications (a key was sent and refused) per client address: a token bucket of this many
    # per minute (and as burst); when empty, every request from that address that carries a key gets 429.
    auth_failures_per_minute: int = 30
    # Requests of one organization in flight at once (counted per API key until the key's organization is
    # known); over it the request gets 429. Below the API's 12 database sessions, so others are served.
    max_concurrent_requests_per_org: int = 8
    # An API process remembers a key's organization this long after reading it from the database (0: no
    # cache), so a key revoked with `tunegate keys revoke` is refused by every API process at most this many
    # seconds later; organization changes (`tunegate orgs set`) take effect within it too.
    auth_cache_ttl_s: float = 5.0
    page_limit_default: int = 20
    # Proxies trusted to say who the client is (X-Forwarded-For, X-Forwarded-Proto): a comma-separated list
    # of addresses or networks ("10.0.0.5", "10.0.0.0/8"; "*" trusts any peer), passed to uvicorn by
    # `tunegate api` and `tunegate serve`. Empty (the default): none, so the client address that the
    # failed-authentication throttle and the logs use is the peer's own. Set it to the reverse proxy's
    # address when the API runs behind one (or every client shares the proxy's address).
    forwarded_allow_ips: str = ""
    # /healthz answers within this many seconds: 503 when the database has not answered by then.
    health_timeout_s: float = Field(default=2.0, gt=0)

    # Database timeouts (models/db.py), so that a database that accepts connections but does not answer
    # fails requests with 503 instead of holding them (and their organization's concurrency slots):
    # - connect: opening a PostgreSQL connection, the handshake included (libpq's connect_timeout, >= 2 s);
    # - statement: PostgreSQL's statement_timeout on every connection of the API and the workers (not the
    #   migrations); the client also gives up on a server that has not answered a statement, commit or ping
    #   for this long plus 2 s, and drops that connection;
    # - pool: waiting for a free pooled connection;
    # - busy: SQLite waits this long for another process's write lock.
    database_connect_timeout_s: float = Field(default=5.0, gt=0)
    database_statement_timeout_s: float = Field(default=30.0, gt=0)
    database_pool_timeout_s: float = Field(default=10.0, gt=0)
    database_busy_timeout_s: float = Field(default=30.0, gt=0)
    # Moderator console (/console): the key that signs its session cookies. Unset in embedded mode: one is
    # generated once and kept in <home>/console_secret (0600); in distributed mode it must be set, the same on
    # every API process. Sessions expire after console_session_max_age_s.
    console_secret: str | None = Field(default=None, repr=False)
    # Or a file holding that secret (read once at startup when console_secret is unset), e.g. the one the
    # compose file's console-secret step generates into a volume only the API mounts. A file that cannot be
    # read, or is empty, stops the process at startup, naming it. Neither set in distributed mode: the API
    # serves, but GET /readyz answers 503 "console": "not_configured" and the console cannot log in.
    console_secret_file: Path | None = None
    console_session_max_age_s: int = 8 * 3600
    # Where the per-organization rate limit and the failed-authentication throttle keep their counters
    # (a `limits` storage URL: redis://host:6379/1, memory://). Default: the broker's Redis when
    # TUNEGATE_BROKER_URL is redis:// (shared by every API process), else this process's memory.
    rate_limit_storage_url: str | None = None

    # Worker
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = 0  # 0: torch's default, capped at the CPUs a container allows (tunegate/cpus.py)
    # Training precision: auto = bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16 or AMX),
    # fp32 elsewhere (bf16 is several times slower than fp32 on an AVX2-only CPU); bf16 | fp32 force it
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # The BLAS of a CPU model's linear layers (worker/ml/blas.py): auto = numpy's OpenBLAS in a one-thread
    # process on an AMD CPU (where PyTorch's MKL measured about half as fast), PyTorch's own elsewhere
    cpu_blas: Literal["auto", "torch", "openblas"] = "auto"
    # One-time work (the aligned-base build, a base model's caches) runs in this many one-thread processes
    # side by side (worker/prepare/parallel.py); 0: one per core (at most 8), 1: in the calling process
    prepare_processes: int = 0
    # A job's CPU training runs data-parallel in this many one-thread processes, the worker's own process
    # as the first (worker/stages/train_ranks.py); 0: one per torch thread the worker has (at most 8) for a
    # model whose weights take at least 20 MB; 1: in the worker's process with all its threads. 1 by
    # default: on a quiet 2-core AMD EPYC the demo's job trained as fast either way (docs/benchmarks.md)
    train_processes: int = Field(default=1, ge=0)
    worker_concurrency: int = 1
    visibility_timeout_s: int = 12 * 3600  # above the longest stage, or a running task is redelivered
    # Per-queue limits on one stage task (Celery time_limit; the soft limit, which ends the job with
    # `stage_time_limit`, comes stage_time_grace_s earlier). Keep the gpu one below visibility_timeout_s.
    gpu_stage_time_limit_s: int = 11 * 3600
    cpu_stage_time_limit_s: int = 3600
    stage_time_grace_s: int = 60
    heartbeat_s: int = 30
    stale_after_s: int = 600  # a running job whose worker stopped reporting this long is requeued
    task_max_retries: int = 5
    # first retry delay of a transient error, doubling per retry up to ten minutes (Celery's retry_backoff:
    # whole seconds, at least 1); this and task_max_retries are read when the worker starts
    retry_backoff_s: float = 10.0
    reap_interval_s: int = 60  # how often each worker requeues stale jobs and removes expired files/uploads
    event_interval_s: float = 2.0  # progress events are written at most this often per stage
    # How a paused job's `status` reads in the API: "queued" (the default: the openai SDK's status literal
    # has no "paused", so strict clients would reject it; `paused: true` tells) or "paused" (OpenAI's API).
    paused_status: Literal["queued", "paused"] = "queued"
    worker_queues: str = "gpu,cpu"
    # Fair share (models/dispatch.py): a new or resumed job waits in the database until the dispatcher admits
    # it, round-robin across organizations, keeping at most worker_slots * jobs_per_worker_slot admitted jobs
    # unfinished. worker_slots: the heavy (gpu,cpu) task slots the deployment runs (heavy workers times their
    # concurrency), read by the API and the workers alike. With 1 job per slot, one organization's backlog
    # delays another's next job by at most one running job per slot; 2 keeps the heavy worker busy while a
    # job's short stages run, at the price of a looser bound.
    worker_slots: int = Field(default=1, ge=1)
    jobs_per_worker_slot: int = Field(default=1, ge=1)
    # A file the worker touches every heartbeat_s while it runs (None: none), for a container healthcheck:
    # a solo pool busy with a stage cannot answer `celery inspect ping`, but this file stays fresh.
    worker_alive_file: Path | None = None
    # Per-stage config overrides merged into the stage configs the worker builds (e.g. evaluation size):
    # '{"evaluate": {"max_new_tokens": 32}, "score": {"batch_size": 4}}'. Keyed by the pipeline's stage names
    # (worker/stages/all.py): an unknown stage or config field is refused where they are applied, and a
    # worker given one does not start (Pipeline.check_overrides).
    stage_overrides: dict[str, JsonObjectField] = Field(default_factory=dict)

    # Webhooks (models/webhooks.py, worker/webhooks.py). A failed delivery is retried after
    # webhook_retry_backoff_s, doubling per attempt up to webhook_max_retry_delay_s; the first
    # webhook_task_retries retries the task schedules itself, later ones the periodic sweep sends when due;
    # an event still undelivered webhook_give_up_after_s after it happened is marked failed.
    webhook_timeout_s: float = 10.0  # one POST to a receiver (connect + answer)
    webhook_retry_backoff_s: float = 30.0
    webhook_max_retry_delay_s: float = 3600.0
    webhook_task_retries: int = 5
    webhook_give_up_after_s: float = 3 * 24 * 3600.0
    # A due delivery whose task message was sent this long ago without an attempt (a lost message), or an
    # attempt holding it this long (a killed worker), is sent again by the sweep. Keep it above the timeout.
    webhook_requeue_after_s: float = 300.0
    # Where webhooks may go besides public addresses (tunegate/netguard.py), for local testing and private
    # deployments: a JSON list of IP networks or addresses ("10.0.0.0/8", "127.0.0.1/32") and host names
    # ("receiver.internal", "*.corp.example"). Empty (the default): only public addresses; a URL whose host
    # is, or resolves to, a loopback/private/link-local/reserved... address is refused.
    webhook_allowed_targets: list[str] = Field(default_factory=list)

    # Provider defaults for the safety policy (per-org policy may tighten them)
    # max one-sided 95% upper bound of the paired ASR increase (base vs fine-tuned), per template
    gate_delta: float = 0.05
    gate_min_margin_ratio: float = 0.5  # refusal-direction margin tuned/base below this = collapsed
    # unsafe_training_data when scoring flags the data and mitigation is off
    gate_block_flagged_unmitigated: bool = True

    # Optional LLM judge for safety evaluation (any OpenAI-compatible chat endpoint)
    llm_judge_url: str | None = None
    llm_judge_model: str | None = None
    llm_judge_api_key: str | None = None

    log_level: str = "INFO"
    # CLI: show the full traceback of a failed command instead of its one-line error (also: --debug)
    debug: bool = False
    # json: one JSON object per log line (request_id, org_id, job_id where known); text: the same fields
    # as key=value pairs, for a terminal.
    log_format: Literal["json", "text"] = "json"
    # Prometheus multiprocess directory: every API and worker process writes its counters and histograms
    # there and GET /metrics adds them up, so it must be shared by all of them (default: home/metrics).
    metrics_dir: Path | None = None

    @field_validator("webhook_allowed_targets")
    @classmethod
    def _check_webhook_allowed_targets(cls, v: list[str]) -> list[str]:
        from tunegate.netguard import Allowlist

        Allowlist.parse(v)  # ValueError naming the entry that is neither a network nor a host name
        return v

    @field_validator("models", "stage_overrides", mode="before")
    @classmethod
    def _parse_models(cls, v: Any) -> Any:
        if isinstance(v, str):
            return json.loads(v)
        return v

    # --- derived paths -------------------------------------------------------------------------
    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home_dir / 'tunegate.db'}"

    @property
    def celery_broker_url(self) -> str:
        return self.broker_url or f"sqla+sqlite:///{self.home_dir / 'broker.db'}"

    @property
    def files_path(self) -> Path:
        return (self.storage_dir or self.home_dir / "files").expanduser()

    @property
    def file_cache_path(self) -> Path:
        return (self.file_cache_dir or self.home_dir / "file-cache").expanduser()

    @property
    def jobs_path(self) -> Path:
        return (self.artifacts_dir or self.home_dir / "jobs").expanduser()

    @property
    def models_path(self) -> Path:
        return (self.model_cache_dir or self.home_dir / "models").expanduser()

    @property
    def eval_cache_path(self) -> Path:
        return (self.eval_cache_dir or self.models_path / "eval-cache").expanduser()

    def scoring_cache_path(self, fingerprint: str) -> Path:
        """The scoring caches (anchors, reference distributions) of the base model with ``fingerprint``."""
        return self.models_path / fingerprint / "scoring-cache"

    @property
    def metrics_path(self) -> Path:
        return (self.metrics_dir or self.home_dir / "metrics").expanduser()

    @property
    def rate_limit_storage(self) -> str:
        """The `limits` storage URL of the rate limiters (see ``rate_limit_storage_url``)."""
        if self.rate_limit_storage_url:
            return self.rate_limit_storage_url
        if self.celery_broker_url.startswith(("redis://", "rediss://")):
            return self.celery_broker_url
        return "memory://"

    @property
    def embedded(self) -> bool:
        """True when neither the database nor the broker points at a server."""
        return self.database_url is None and self.broker_url is None

    @property
    def console_configured(self) -> bool:
        """Whether the console can sign sessions: a secret is set (or read from console_secret_file), or this
        is embedded mode, which generates one in home."""
        return bool(self.console_secret) or self.embedded

    @model_validator(mode="after")
    def _read_console_secret_file(self) -> Settings:
        if self.console_secret or self.console_secret_file is None:
            return self
        path = self.console_secret_file.expanduser()
        try:
            secret = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"console_secret_file {path} cannot be read: {exc}") from exc
        if not secret:
            raise ValueError(f"console_secret_file {path} is empty")
        self.console_secret = secret
        return self

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("s3://"):
            raise ValueError(f"storage_url must be s3://bucket[/prefix] (or unset: local files), got {v!r}")
        if v is not None and not v[len("s3://") :].strip("/"):
            raise ValueError("storage_url names no bucket")
        return v.rstrip("/") if v else v

    def ensure_dirs(self) -> None:
        for p in (self.home_dir, self.files_path, self.jobs_path, self.models_path):
            p.mkdir(parents=True, exist_ok=True)


class ClientSettings(BaseSettings):
    """What the CLI's client commands (``tunegate files|jobs|follow``) need to reach a tunegate API.

    The ``openai`` SDK's own variables work too, so one environment serves both the SDK and the CLI.
    """

    model_config = SettingsConfigDict(env_file=".env", env_ignore_empty=True, extra="ignore")

    api_key: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TUNEGATE_API_KEY", "OPENAI_API_KEY"),
        description="An organization's API key (tg-...).",
    )
    base_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TUNEGATE_BASE_URL", "OPENAI_BASE_URL"),
        description="The API's base URL ending in /v1; default: the configured API host and port.",
    )

    def url(self, settings: Settings) -> str:
        return (self.base_url or f"http://{settings.api_host}:{settings.api_port}/v1").rstrip("/")


def get_client_settings() -> ClientSettings:
    """Read afresh on each call (one per CLI command)."""
    return ClientSettings()


_given: list[Settings] = []  # settings handed to this process by its parent (``use_settings``)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return _given[-1] if _given else Settings()


def use_settings(settings: Settings) -> None:
    """Make ``get_settings()`` return ``settings`` in this process: a child started by
    ``worker/prepare/parallel.py`` works with its parent's settings (one torch thread), not its
    environment."""
    _given[:] = [settings]
    get_settings.cache_clear()


def reset_settings() -> None:
    """Forget the cached settings (tests and CLI options that change the environment call this)."""
    _given.clear()
    get_settings.cache_clear()
