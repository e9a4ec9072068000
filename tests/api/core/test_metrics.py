"""Issue 14: ``GET /metrics`` (Prometheus text, admin keys only) against a live server.

Counters are compared before and after what a test does (the server is shared by the session), and the
state gauges against the jobs actually written to the database.
"""

from __future__ import annotations

import os
import random
import secrets
import string
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from api.core.metrics import UNMATCHED, StateCollector
from models.db import session_scope
from models.jobs import JobStatus, transition
from models.keys import create_admin_key
from models.tables import Job
from tests.api.conftest import new_key, processed_file, sdk
from tests.api.server import REPO, Server, uvicorn_process
from tunegate import metrics, queue
from tunegate.metrics import HTTP_METHODS, OTHER_METHOD, STATUS_CLASSES
from tunegate.queue import reset_celery
from tunegate.settings import reset_settings

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
LATENCY = "tunegate_http_request_duration_seconds"


def admin_key() -> str:
    with session_scope() as session:
        return create_admin_key(session, f"ops-{secrets.token_hex(4)}").key


def _auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def scrape(server: Server, key: str) -> Samples:
    r = httpx.get(f"{server.base_url}/metrics", headers=_auth(key), timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_answer_only_an_admin_key(server: Server) -> None:
    url = f"{server.base_url}/metrics"
    missing = httpx.get(url)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    org = httpx.get(url, headers=_auth(new_key()))
    assert org.status_code == 403 and org.json()["error"]["type"] == "invalid_request_error"
    assert "tunegate_" not in org.text
    samples = scrape(server, admin_key())
    assert sample(samples, "tunegate_collector_up", source="database") == 1
    assert sample(samples, "tunegate_collector_up", source="broker") == 1


def test_request_latency_is_counted_by_route_template_and_status(server: Server) -> None:
    key, admin = new_key(), admin_key()
    before = scrape(server, admin)
    missing_id = "file-" + secrets.token_hex(8)
    assert httpx.get(f"{server.base_url}/v1/files/{missing_id}", headers=_auth(key)).status_code == 404
    for _ in range(2):
        assert httpx.get(f"{server.base_url}/v1/files", headers=_auth(key)).status_code == 200
    after = scrape(server, admin)
    one = {"route": "/v1/files/{file_id}", "method": "GET", "status": "4xx"}
    listed = {"route": "/v1/files", "method": "GET", "status": "2xx"}
    assert sample(after, f"{LATENCY}_count", **one) == sample(before, f"{LATENCY}_count", **one) + 1
    assert sample(after, f"{LATENCY}_count", **listed) == sample(before, f"{LATENCY}_count", **listed) + 2
    assert not any(missing_id in str(labels) for _, labels in after)  # never the raw path


def test_counts_of_other_processes_are_added_up(server: Server) -> None:
    """A second API process and a worker-like process count into the same directory; this server's
    /metrics reports the sum."""
    path = metrics.directory()
    assert path is not None  # the app factory set it up
    env = {"TUNEGATE_METRICS_DIR": str(path)}
    admin = admin_key()
    before = scrape(server, admin)
    observe = textwrap.dedent(
        """
        from tunegate import metrics
        from tunegate.settings import get_settings
        metrics.setup(get_settings())
        metrics.observe_stage("train", "succeeded", 42.0)
        metrics.count_webhook_failure("timeout")
        """
    )
    subprocess.run(
        [sys.executable, "-c", observe], cwd=REPO, env={**os.environ, **env}, check=True, timeout=120
    )
    with uvicorn_process(server.home, env) as (_, other):
        for _ in range(3):
            assert httpx.get(f"{other}/v1/models", headers=_auth(new_key())).status_code == 200
    after = scrape(server, admin)
    stage = {"stage": "train", "outcome": "succeeded"}
    name = "tunegate_stage_duration_seconds"
    assert sample(after, f"{name}_count", **stage) == sample(before, f"{name}_count", **stage) + 1
    assert sample(after, f"{name}_sum", **stage) == sample(before, f"{name}_sum", **stage) + 42.0
    failures = "tunegate_webhook_failures_total"
    assert sample(after, failures, reason="timeout") == sample(before, failures, reason="timeout") + 1
    models = {"route": "/v1/models", "method": "GET", "status": "2xx"}
    assert sample(after, f"{LATENCY}_count", **models) == sample(before, f"{LATENCY}_count", **models) + 3


def _latency_label_sets(samples: Samples) -> set[tuple[tuple[str, str], ...]]:
    return {
        tuple((k, v) for k, v in labels if k != "le") for name, labels in samples if name.startswith(LATENCY)
    }


PATHS = (
    lambda: "/healthz",
    lambda: f"/{secrets.token_hex(secrets.randbelow(12) + 1)}",
    lambda: f"/v1/files/{secrets.token_hex(4)}",
    lambda: f"/v1/fine_tuning/jobs/{secrets.token_hex(4)}/{secrets.token_hex(2)}",
    lambda: f"/console/{secrets.token_hex(3)}",
)


def _strangers(server: Server, rng: random.Random, n: int) -> None:
    """``n`` requests with made-up methods (``get`` among them: methods are case-sensitive) on made-up and
    real paths, one path of each kind in turn."""
    with httpx.Client(base_url=server.base_url, timeout=30) as http:
        for i in range(n):
            method = "get" if i % 10 == 0 else "GET"
            while method in HTTP_METHODS:
                method = "".join(rng.choices(string.ascii_uppercase + "_-", k=rng.randint(1, 16)))
            http.request(method, PATHS[i % len(PATHS)]())


def test_random_methods_and_paths_add_no_series(server: Server) -> None:
    """Issue 29.1: random HTTP methods on /healthz grew the series from 1,544 to 10,061 (each method a label
    set of its own). Every label now comes from a closed set: the route template (an unmatched path gets one
    label), a known method or ``other``, the status class. 200 strangers' requests add one label set per
    kind of path at most, and 200 more add none."""
    admin, rng = admin_key(), random.Random(29)
    before = scrape(server, admin)
    _strangers(server, rng, 200)
    middle = scrape(server, admin)
    _strangers(server, rng, 200)
    after = scrape(server, admin)
    added = _latency_label_sets(middle) - _latency_label_sets(before)
    assert len(added) <= len(PATHS) + 1, sorted(added)  # + 1: the scrape's own, on a fresh server
    assert _latency_label_sets(after) == _latency_label_sets(middle)
    series = [len([name for name, _ in s if name.startswith(LATENCY)]) for s in (middle, after)]
    assert series[0] == series[1], f"the second 200 requests added {series[1] - series[0]} series"
    for labels in map(dict, _latency_label_sets(after)):
        assert labels["method"] in HTTP_METHODS | {OTHER_METHOD}, labels
        assert labels["status"] in STATUS_CLASSES, labels
        assert labels["route"].startswith("/") or labels["route"] == UNMATCHED, labels


def _db_jobs() -> dict[str, int]:
    with session_scope() as session:
        statuses = [j.status for j in session.query(Job).all()]
    return {s.value: statuses.count(s.value) for s in JobStatus}


def test_job_gate_and_queue_numbers_are_those_of_the_database_and_broker(server: Server) -> None:
    admin = admin_key()
    client = sdk(server, new_key())
    before = scrape(server, admin)
    fid = processed_file(client)
    _, cancelled, blocked = (
        client.fine_tuning.jobs.create(model="smollm2-135m", training_file=fid) for _ in range(3)
    )
    client.fine_tuning.jobs.cancel(cancelled.id)
    with session_scope() as session:  # as the gate stage leaves a blocked job
        job = session.get(Job, blocked.id)
        assert job is not None
        job.stage = "gate"
        transition(
            session,
            job,
            JobStatus.FAILED,
            message="blocked",
            error={"code": "safety_eval_failed", "message": "too unsafe", "param": None},
        )
    after = scrape(server, admin)
    for status, n in _db_jobs().items():
        assert sample(after, "tunegate_jobs", status=status) == n, status
    assert (
        sample(after, "tunegate_jobs", status="cancelled")
        == sample(before, "tunegate_jobs", status="cancelled") + 1
    )
    code = {"code": "safety_eval_failed"}
    assert (
        sample(after, "tunegate_gate_decisions", **code)
        == sample(before, "tunegate_gate_decisions", **code) + 1
    )
    assert sample(after, "tunegate_failed_jobs", **code) == sample(before, "tunegate_failed_jobs", **code) + 1
    # each new job was admitted at once (the test server's room is unbounded) and sent its start task to the
    # short queue (no worker consumes it here)
    assert (
        sample(after, "tunegate_queue_messages", queue="short")
        == sample(before, "tunegate_queue_messages", queue="short") + 3
    )


@pytest.mark.redis
def test_queue_depth_is_read_from_a_redis_broker(
    tunegate_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "redis://127.0.0.1:6379/13"
    monkeypatch.setenv("TUNEGATE_BROKER_URL", url)
    reset_settings()
    reset_celery()
    redis.Redis.from_url(url).flushdb()
    from worker.stages.all import PIPELINE

    try:
        train = PIPELINE["train"]
        queue.enqueue(train.task, "ftjob-x", queue=train.queue)
        queue.enqueue(train.task, "ftjob-y", queue=train.queue)
        queue.enqueue(queue.REAP)
        (depth,) = (f for f in StateCollector().collect() if f.name == "tunegate_queue_messages")
        assert {s.labels["queue"]: s.value for s in depth.samples} == {"gpu": 2, "cpu": 0, "short": 1}
    finally:
        redis.Redis.from_url(url).flushdb()
        reset_celery()
