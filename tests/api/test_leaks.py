"""Issue 11 item 6: no tenant-visible response carries infrastructure details.

The worker side runs for real in this process (``worker.runner``, ``worker.reaper``, the stage specs)
against the live server's database and home; everything is then read back over HTTP as a tenant would:
job, events, errors, the adapter archive and the response headers. None may hold the host name or a pid,
an absolute path under TUNEGATE_HOME, a storage key, or an operator command.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import socket
import tarfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from models.base import utcnow
from models.db import session_scope
from models.tables import File, Job
from tests.api.conftest import good_file, new_key
from tests.api.server import Server
from tests.utils.reports import small_report_json
from tunegate.settings import get_settings, reset_settings


def _leaks(text: str, server: Server, storage_keys: list[str]) -> list[str]:
    from worker.claims import worker_id

    found = []
    if worker_id() in text or re.search(rf"\b{re.escape(socket.gethostname())}:\d+", text):
        found.append("host:pid")
    if re.search(r'"(pid|worker|hostname|host)"\s*:', text):
        found.append("a pid/worker/host field")
    for root in {str(server.home), str(server.home.resolve())}:
        if root in text:
            found.append("a path under TUNEGATE_HOME")
    if any(k in text or k.rsplit("/", 1)[-1] in text for k in storage_keys):
        found.append("a storage key")
    if "tunegate models prepare" in text or "models prepare" in text:
        found.append("an operator command")
    return found


class Tenant:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.http = httpx.Client(
            base_url=server.base_url, headers={"authorization": f"Bearer {new_key()}"}, timeout=30
        )
        self.seen: list[str] = []  # every tenant-visible response, headers included

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        r = self.http.request(method, path, **kw)
        self.seen.append(json.dumps(dict(r.headers)))
        if r.headers.get("content-type", "").startswith("application/json"):
            self.seen.append(r.text)
        return r

    def upload(self, n: int = 12) -> str:
        r = self.call(
            "POST", "/v1/files", files={"file": ("t.jsonl", good_file(n))}, data={"purpose": "fine-tune"}
        )
        assert r.status_code == 200, r.text
        file_id = str(r.json()["id"])
        deadline = time.monotonic() + 30  # liveness guard: processing runs after the upload answered
        while self.call("GET", f"/v1/files/{file_id}").json()["status"] == "uploaded":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        return file_id

    def job(self, model: str, file_id: str) -> str:
        r = self.call("POST", "/v1/fine_tuning/jobs", json={"model": model, "training_file": file_id})
        assert r.status_code == 200, r.text
        return str(r.json()["id"])

    def read_job(self, job_id: str) -> dict[str, Any]:
        events = self.call("GET", f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100})
        assert events.status_code == 200
        job = self.call("GET", f"/v1/fine_tuning/jobs/{job_id}")
        assert job.status_code == 200
        return {"job": job.json(), "events": events.json()["data"]}


def _hf_dir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    (p / "config.json").write_text("{}")
    (p / "model.safetensors").write_bytes(b"\0")
    return p


def _storage_key(file_id: str) -> str:
    with session_scope() as s:
        row = s.get(File, file_id)
        assert row is not None
        return row.storage_key


@pytest.fixture
def models_env(server: Server, monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> Path:
    """A registry with the aligned base and a local model directory that both exist when jobs are created,
    and a tiny real model."""
    local = _hf_dir(server.home / "local-models" / "acme-7b")
    registry = {
        "tiny": str(tiny_model_dir),
        "smollm2-135m": "embedded:smollm2",
        "smollm2-135m-aligned": "embedded:smollm2-aligned",
        "acme-7b": str(local),
    }
    monkeypatch.setenv("TUNEGATE_MODELS", json.dumps(registry))
    reset_settings()  # the in-process server and worker code read the settings per call
    return local


def test_worker_events_and_errors_hold_no_infrastructure_details(server: Server, models_env: Path) -> None:
    from worker import reaper, runner

    tenant = Tenant(server)
    settings = get_settings()
    aligned = _hf_dir(settings.models_path / "smollm2-aligned")
    jobs = {name: tenant.job(name, tenant.upload()) for name in ("smollm2-135m-aligned", "acme-7b")}
    missing_blob_file = tenant.upload(13)  # content of its own: blobs are shared by content
    jobs["missing-blob"] = tenant.job("tiny", missing_blob_file)
    keys = [_storage_key(missing_blob_file)]
    # The operator removes the aligned build and the local model; one stored file disappears from disk.
    shutil.rmtree(aligned)
    shutil.rmtree(models_env)
    (settings.files_path / keys[0]).unlink()
    stale = tenant.job("tiny", tenant.upload(14))
    for job_id in jobs.values():  # each stage fails in a worker: the job's error is tenant-visible
        assert runner.execute("validate", job_id) == runner.Outcome("failed"), job_id
    # A worker claims a job and dies: the reaper requeues it (its event used to name host:pid).
    from worker import claims

    with session_scope() as s:
        assert (
            claims.claim(s, stale, "validate", worker=claims.worker_id(), stale_after_s=60, first=True)
            is not None
        )
        job = s.get(Job, stale)
        assert job is not None
        job.heartbeat_at = utcnow() - timedelta(seconds=settings.stale_after_s + 60)
    with session_scope() as s:
        assert reaper._requeue_one(s, stale, settings) == "validate"
    seen = {name: tenant.read_job(job_id) for name, job_id in {**jobs, "stale": stale}.items()}
    for name in jobs:
        err = seen[name]["job"]["error"]
        assert seen[name]["job"]["status"] == "failed" and err["message"], name
    assert "not available" in seen["smollm2-135m-aligned"]["job"]["error"]["message"]
    assert seen["missing-blob"]["job"]["error"]["code"] == "file_content_missing"  # a coded error, no key
    assert any("requeued validate" in e["message"] for e in seen["stale"]["events"])
    content = tenant.call("GET", f"/v1/files/{missing_blob_file}/content")
    assert content.status_code == 404
    problems = {
        i: _leaks(text, server, keys) for i, text in enumerate(tenant.seen) if _leaks(text, server, keys)
    }
    assert problems == {}, [tenant.seen[i][:400] for i in problems]


def test_gate_event_and_adapter_archive_hold_no_server_paths(server: Server) -> None:
    from models.jobs import JobStatus, transition
    from worker import claims, runner
    from worker.stages.all import PIPELINE
    from worker.stages.gate import GateResult

    tenant = Tenant(server)
    job_id = tenant.job("smollm2-135m", tenant.upload())
    settings = get_settings()
    base_dir = settings.models_path / "smollm2"
    train_dir = settings.jobs_path / job_id / "train"
    adapter = train_dir / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(base_dir), "r": 8, "peft_type": "LORA"})
    )
    (adapter / "tunegate_adapter.json").write_text(
        json.dumps({"base_model_path": str(base_dir), "base_fingerprint": "abc"})
    )
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    gate_dir = settings.jobs_path / job_id / "gate"
    gate_dir.mkdir(parents=True)
    (gate_dir / "report.json").write_text(json.dumps(small_report_json()))
    with session_scope() as s:  # the job reached the gate
        job = s.get(Job, job_id)
        assert job is not None
        transition(s, job, JobStatus.QUEUED, message="queued", data={"stage": "gate"})
        transition(s, job, JobStatus.RUNNING, message="running", data={"stage": "gate"})
    with session_scope() as s:
        c = claims.claim(s, job_id, "gate", worker=claims.worker_id(), stale_after_s=60)
    assert c is not None
    view = runner._begin(c, PIPELINE, settings)
    assert view is not None
    result = GateResult(
        released=True,
        code=None,
        message="Released: within limits.",
        report_json=str(gate_dir / "report.json"),
        report_html=str(gate_dir / "report.html"),
        adapter_dir=str(adapter),
    )
    assert runner._apply(c, PIPELINE["gate"], PIPELINE, result) is None
    seen = tenant.read_job(job_id)
    assert seen["job"]["status"] == "succeeded"
    report = tenant.call("GET", f"/v1/fine_tuning/jobs/{job_id}/safety_report")
    assert report.status_code == 200 and report.json()["decision"]["released"] is True
    raw = tenant.call("GET", f"/v1/fine_tuning/jobs/{job_id}/adapter")
    assert raw.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(raw.content), mode="r:gz") as tar:
        files = {
            m.name: tar.extractfile(m).read().decode("utf-8", "replace")  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        }
    cfg = json.loads(files[f"{job_id}-adapter/adapter_config.json"])
    assert cfg["base_model_name_or_path"] == "smollm2-135m" and cfg["r"] == 8
    assert json.loads(files[f"{job_id}-adapter/tunegate_adapter.json"])["base_model"] == "smollm2-135m"
    tenant.seen.extend(files.values())
    problems = [t[:400] for t in tenant.seen if _leaks(t, server, [])]
    assert problems == []


def test_no_server_header(server: Server) -> None:
    r = httpx.get(f"{server.base_url}/healthz")
    assert r.status_code == 200 and "server" not in r.headers
    r = httpx.get(f"{server.base_url}/v1/files", headers={"authorization": "Bearer nope"})
    assert r.status_code == 401 and "server" not in r.headers


@pytest.mark.parametrize("launcher", ["tunegate api", "stack"])
def test_every_uvicorn_launcher_drops_the_server_header(launcher: str, server: Server) -> None:
    """`tunegate api` (also docker-compose's command) and the stack launcher of `tunegate serve`, for real."""
    import subprocess
    import sys

    from cli.stack import api_command, stop, wait_healthy
    from tests.api.server import free_port

    port = free_port()
    cli = [sys.executable, "-c", "from cli import main; main()", "api", "--port", str(port)]
    cmd = cli if launcher == "tunegate api" else api_command("127.0.0.1", port)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        r = httpx.get(f"http://127.0.0.1:{port}/healthz")
        assert r.status_code == 200 and "server" not in r.headers
    finally:
        stop(proc)
