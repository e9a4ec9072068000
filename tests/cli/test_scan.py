"""``tunegate files scan`` against a live API server and a worker thread that serves the scoring queue with
the real task body (``worker.scan.run``) on a tiny model: its lines and exit statuses."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from typer.testing import CliRunner, Result

from cli import app
from tests.api.conftest import chat, good_file, jsonl, new_key, sdk, server  # noqa: F401 (the server fixture)
from tests.api.server import Server
from tests.utils.broker import queued_tasks
from tests.worker.jobfactory import use_tiny
from tunegate import queue
from worker import scan as scan_worker

pytestmark = pytest.mark.parametrize("server", ["sqlite"], indirect=True)
OVERRIDES: dict[str, Any] = {
    "score": {"scorers": ["representation"], "batch_size": 16},
    "mitigate": {"contrast_ratio": 0.0, "min_risk": 0.0},  # the riskiest 5% are acted on, whatever their risk
}


@pytest.fixture
def worker() -> Iterator[None]:
    """A worker thread on the embedded broker's scoring queue: each safety scan message runs the task body."""
    queued_tasks(("gpu",))  # what earlier tests left there
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            for task, args in queued_tasks(("gpu",)):
                if task == queue.SAFETY_SCAN:
                    scan_worker.run(args[0])
            stop.wait(0.1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=60)


def _api(server: Server, monkeypatch: pytest.MonkeyPatch, **org: Any) -> openai.OpenAI:  # noqa: F811
    """The tiny model on the server, and the client variables for a new organization's key."""
    use_tiny(monkeypatch, stage_overrides=json.dumps(OVERRIDES), event_interval_s="0")
    key = new_key(**org)
    for var in ("TUNEGATE_API_KEY", "TUNEGATE_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("OPENAI_BASE_URL", f"{server.base_url}/v1")
    return sdk(server, key)


def _train(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_bytes(good_file(12))
    return path


def scan(*args: str) -> Result:
    return CliRunner().invoke(app, ["files", "scan", *args])


def test_scan_a_local_file_and_wait_for_the_verdict_and_the_riskiest_lines(
    server: Server,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    worker: None,
    tmp_path: Path,
) -> None:
    client = _api(server, monkeypatch)
    res = scan(str(_train(tmp_path)), "--model", "tiny", "--wait")
    lines = res.stdout.splitlines()
    row = lines[0].split("\t")
    assert row[1:3] == ["completed", "tiny"] and row[0].startswith("ss-") and row[3].startswith("file-")
    assert "uploaded train.jsonl as file-" in res.stderr.replace(str(tmp_path) + "/", "")
    assert "scanning file-" in res.stderr and "100%" in res.stderr  # the progress bar
    shown = client.get(f"/safety_scans/{row[0]}", cast_to=dict)
    flagged = shown["verdict"]["flagged"]
    assert lines[1] == f"verdict: {'FLAGGED' if flagged else 'ok'} - {shown['verdict']['reason']}"
    m = shown["mitigation"]
    assert m["lines_kept"] < 12  # the riskiest 5% at least are acted on (OVERRIDES)
    assert lines[2].startswith(
        f"mitigation (downweight): {m['lines_kept']} of 12 lines kept, "
        f"{m['lines_downweighted']} down-weighted, 0 dropped; {m['examples_injected']} examples injected"
    )
    assert lines[3] == "riskiest lines (10): line, risk, action, why"
    riskiest = [line.split("\t") for line in lines[4:]]
    # a single-turn example down-weighted has nothing left to train on: it is left out ("exclude")
    assert len(riskiest) == 10 and riskiest[0][2] == "exclude" and riskiest[-1][2] == "keep"
    assert [r[0] for r in riskiest] == [f"line {r['line']}" for r in shown["summary"]["riskiest"]]
    assert res.exit_code == (3 if flagged else 0), res.output
    assert [f.id for f in client.files.list()] == [row[3]]  # the uploaded file stays, to train on


def test_a_file_mitigation_would_refuse_exits_3_and_json_has_the_scan_and_lines(
    server: Server,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    worker: None,
    tmp_path: Path,
) -> None:
    client = _api(server, monkeypatch, policy={"max_repair_share": 0.0})
    file_id = client.files.create(file=("t.jsonl", good_file(12)), purpose="fine-tune").id
    client.files.wait_for_processing(file_id, poll_interval=0.05, max_wait_seconds=30)
    res = scan(file_id, "--model", "tiny", "--wait")
    assert res.exit_code == 3, res.output
    assert (
        "mitigation: the file would be refused before training: The training data was refused" in res.stdout
    )
    out = json.loads(scan(file_id, "--model", "tiny", "--wait", "--json").stdout)
    assert out["scan"]["status"] == "completed" and out["scan"]["mitigation"]["refused"]
    assert [r["rank"] for r in out["riskiest"]] == list(range(1, 11))
    assert out["riskiest"][0]["action"] == "refuse" and out["riskiest"][0]["text"].startswith("system: ")


def test_without_wait_the_scan_is_queued(
    server: Server,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    client = _api(server, monkeypatch)
    file_id = client.files.create(file=("t.jsonl", good_file(12)), purpose="fine-tune").id
    client.files.wait_for_processing(file_id, poll_interval=0.05, max_wait_seconds=30)
    res = scan(file_id, "--model", "tiny")
    assert res.exit_code == 0, res.output
    [row] = [line.split("\t") for line in res.stdout.splitlines()]
    assert row[1:4] == ["queued", "tiny", file_id]
    out = json.loads(scan(file_id, "--model", "tiny", "--json").stdout)
    assert out["scan"]["status"] == "queued" and out["scan"]["verdict"] is None and out["riskiest"] == []


def test_a_failed_scan_exits_1_with_one_line(
    server: Server,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    worker: None,
    tmp_path: Path,
) -> None:
    client = _api(server, monkeypatch)
    broken = tmp_path / "broken"  # looks like a model directory to the API; the worker cannot load it
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (broken / "model.safetensors").write_bytes(b"not weights")
    models = {"tiny": str(use_tiny(monkeypatch)), "broken": str(broken)}
    monkeypatch.setenv("TUNEGATE_MODELS", json.dumps(models))
    from tunegate.settings import reset_settings

    reset_settings()
    res = scan(str(_train(tmp_path)), "--model", "broken", "--wait")
    assert res.exit_code == 1, res.output
    [error] = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: safety scan ss-") and " failed: " in error
    assert str(broken) not in res.output  # the tenant reads no server path
    assert len(client.files.list().data) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope"], "no model 'nope' on the service"),
        (["file.jsonl"], "is neither a file id (file-...) nor a local file"),
    ],
)
def test_bad_usage_exits_2_before_uploading(
    server: Server,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    client = _api(server, monkeypatch)
    target = [] if args[0] == "file.jsonl" else [str(_train(tmp_path))]
    res = scan(*target, *args)
    assert res.exit_code == 2 and message in " ".join(res.stderr.split()), res.output
    assert len(res.stderr.strip().splitlines()) == 1
    assert "uploaded" not in res.stderr and client.files.list().data == []
