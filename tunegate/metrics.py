"""Every Prometheus metric that a process *counts* (the API and the workers), in one place.

Prometheus' multiprocess mode: each process writes its samples to memory-mapped files in one directory
(``Settings.metrics_dir``, shared by the API and the workers) and ``GET /metrics`` adds up the files of all of
them, so several uvicorn workers and Celery pool processes report as one service. ``setup`` must run in a
process before it counts anything (the API app factory and the Celery worker call it); only counters and
histograms are kept here, so the files of processes that have exited keep counting in the totals, as
counters should, and need no cleaning.

What is true of the database and the broker at scrape time (jobs by status, gate decisions, queue depth) is
not counted here but read when ``/metrics`` is asked (``api/core/metrics.py``), so it is right whichever
process changed it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from prometheus_client import Counter, Histogram, values

from tunegate.settings import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # the variable prometheus_client reads the directory from

# Every label comes from a closed set, whatever a client sends (issue 29: random HTTP methods on /healthz
# grew the series from 1,544 to 10,061): the route template (an unmatched path gets one fixed label, see
# ``api.core.metrics.route_template``), a known method or ``other``, and the status class.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")

REQUEST_SECONDS = Histogram(
    "tunegate_http_request_duration_seconds",
    "Time to answer an API request, by route template (not the raw path), method (GET, POST ... or other) "
    "and status class (2xx, 4xx ...).",
    ["route", "method", "status"],
)
STAGE_SECONDS = Histogram(
    "tunegate_stage_duration_seconds",
    "Time one run of a pipeline stage took in a worker, by stage and how the run ended.",
    ["stage", "outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 43200),
)
WEBHOOK_FAILURES = Counter(
    "tunegate_webhook_failures",
    "Webhook deliveries that failed, by the reason (HTTP status class, timeout, connection).",
    ["reason"],
)

_directory: list[Path] = []  # the directory this process writes to, once ``setup`` has run


def setup(settings: Settings) -> Path:
    """Make this process count into ``settings.metrics_path``; returns the directory.

    The first call in a process decides (one process belongs to one deployment); later calls return it.
    Samples are written under a per-host, per-process id, so containers whose processes share pids can
    share the directory; after a fork the child writes files of its own.
    """
    if _directory:
        return _directory[0]
    path = settings.metrics_path
    path.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(path)
    host = socket.gethostname().replace("_", "-")  # prometheus_client splits file names on "_"
    values.ValueClass = values.MultiProcessValue(lambda: f"{host}-{os.getpid()}")
    _directory.append(path)
    return path


def directory() -> Path | None:
    """The multiprocess directory of this process (None before ``setup``)."""
    return _directory[0] if _directory else None


def observe_stage(stage: str, outcome: str, seconds: float) -> None:
    """Record one run of a stage: ``outcome`` is how it ended (``succeeded``, ``failed``, ``retried`` ...)."""
    STAGE_SECONDS.labels(stage=stage, outcome=outcome).observe(seconds)


def method_label(method: str) -> str:
    """The method's label: one of ``HTTP_METHODS``, else ``other``."""
    return method if method in HTTP_METHODS else OTHER_METHOD


def status_class(status: int) -> str:
    """``2xx`` for 200 ...; ``5xx`` for anything outside 100-599 (never an answer the service gives)."""
    return STATUS_CLASSES[status // 100 - 1] if 100 <= status <= 599 else "5xx"


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """One answered request; ``route`` is already a template (or the fixed label of an unmatched path)."""
    REQUEST_SECONDS.labels(route=route, method=method_label(method), status=status_class(status)).observe(
        seconds
    )


def count_webhook_failure(reason: str) -> None:
    WEBHOOK_FAILURES.labels(reason=reason).inc()
