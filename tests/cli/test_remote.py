"""``tunegate files`` and ``tunegate jobs`` against a live API server, configured by the client variables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cli import app
from tests.api.conftest import good_file, new_key, release_job, server  # noqa: F401 (the live API server fixture)
from tests.api.server import Server
from tests.utils.reports import small_report_json

pytestmark = pytest.mark.parametrize("server", ["sqlite"], indirect=True)
MODEL = "smollm2-135m"


@pytest.fixture
def api(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:  # noqa: F811
    """The OpenAI variables (the SDK's own) point at the server with a new organization's key."""
    for var in ("TUNEGATE_API_KEY", "TUNEGATE_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", new_key())
    monkeypatch.setenv("OPENAI_BASE_URL", f"{server.base_url}/v1")
    return server


def ok(*args: str) -> Result:
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res


def rows(res: Result) -> list[list[str]]:
    return [line.split("\t") for line in res.stdout.splitlines()]


def test_files_upload_list_rm(api: Server, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(good_file())
    [uploaded] = rows(ok("files", "upload", str(path)))
    file_id, name, size, status = uploaded[:4]
    assert file_id.startswith("file-") and name == "train.jsonl" and int(size) == len(good_file())
    assert status == "processed"
    assert [r[0] for r in rows(ok("files", "list"))] == [file_id]
    assert ok("files", "rm", file_id).stdout.strip() == f"deleted {file_id}"
    assert ok("files", "list").stdout == ""


def test_jobs_create_list_show_events_cancel(api: Server, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(good_file())
    created = ok(
        "jobs", "create", "--training-file", str(path), "--model", MODEL, "--n-epochs", "2",
        "--learning-rate-multiplier", "auto", "--suffix", "cli", "--policy", "gate_delta=0.01",
    )  # fmt: skip
    assert "uploaded train.jsonl as file-" in created.stderr.replace(str(tmp_path) + "/", "")
    [row] = rows(created)
    job_id = row[0]
    assert job_id.startswith("ftjob-") and row[2] == MODEL
    assert [r[0] for r in rows(ok("jobs", "list"))] == [job_id]
    shown = json.loads(ok("jobs", "show", job_id).stdout)
    assert shown["id"] == job_id and shown["hyperparameters"]["n_epochs"] == 2
    assert shown["safety"]["gate_delta"] == 0.01  # the policy went through as the job's safety object
    events = rows(ok("jobs", "events", job_id))
    assert events and job_id in events[0][2]  # oldest first: the creation event names the job
    assert rows(ok("jobs", "cancel", job_id)) == [[job_id, "cancelled"]]
    followed = CliRunner().invoke(app, ["follow", job_id])
    assert followed.exit_code == 1 and f"{job_id}: cancelled" in followed.stdout


def test_jobs_create_with_a_file_id(api: Server, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(good_file())
    file_id = rows(ok("files", "upload", str(path)))[0][0]
    job_id = rows(ok("jobs", "create", "--training-file", file_id, "--model", MODEL))[0][0]
    assert json.loads(ok("jobs", "show", job_id).stdout)["training_file"] == file_id


def test_jobs_report_and_download_of_a_released_job(api: Server, tmp_path: Path) -> None:
    import tarfile

    path = tmp_path / "train.jsonl"
    path.write_bytes(good_file())
    job_id = rows(ok("jobs", "create", "--training-file", str(path), "--model", MODEL))[0][0]
    release_job(job_id, tmp_path / "artifacts")  # what the gate stage leaves on a pass
    assert json.loads(ok("jobs", "report", job_id).stdout) == small_report_json()  # printed as served
    ok("jobs", "report", job_id, "--out", str(tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text())["decision"]["released"] is True
    ok("jobs", "download", job_id, "--out", str(tmp_path / "a.tar.gz"))
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        assert f"{job_id}-adapter/adapter_config.json" in tar.getnames()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "smollm2-135n"], "no model 'smollm2-135n' on the service"),
        (["--policy", "gate_delta=lots"], "policy.gate_delta must be a number"),
        (["--policy", "gate_judges=some"], "policy.gate_judges must be one of"),
    ],
)
def test_jobs_create_checks_model_and_policy_before_uploading(
    api: Server, tmp_path: Path, args: list[str], message: str
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(good_file())
    res = CliRunner().invoke(app, ["jobs", "create", "--training-file", str(path), *args])
    assert res.exit_code == 2 and message in " ".join(res.stderr.split()), res.output
    assert "uploaded" not in res.stderr
    assert ok("files", "list").stdout == ""  # nothing was left behind


def test_a_job_the_service_refuses_removes_the_file_it_uploaded(api: Server, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(good_file())
    res = CliRunner().invoke(
        app, ["jobs", "create", "--training-file", str(path), "--model", MODEL, "--suffix", "x" * 200]
    )
    assert res.exit_code == 1 and "suffix" in res.stderr, res.output
    assert "removed file-" in res.stderr
    assert ok("files", "list").stdout == ""


def test_a_large_upload_shows_a_byte_progress_bar(
    api: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cli.remote.UPLOAD_BAR_BYTES", 64 * 1024)  # the test server takes 200 kB at most
    path = tmp_path / "big.jsonl"
    path.write_bytes(good_file(12) + b"\n" * (100 * 1024))  # blank lines are skipped
    res = ok("files", "upload", str(path))
    assert rows(res)[0][3] == "processed"
    assert "big.jsonl: 100%" in res.stderr and "k/10" in res.stderr, res.stderr
    small = tmp_path / "small.jsonl"
    small.write_bytes(good_file())
    assert "100%" not in ok("files", "upload", str(small)).stderr  # a small file uploads without a bar


def test_pause_resume_checkpoints_and_json_listings(api: Server, tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_bytes(good_file())
    job_id = rows(ok("jobs", "create", "--training-file", str(path), "--model", MODEL))[0][0]
    assert rows(ok("jobs", "pause", job_id))[0][0] == job_id
    shown = json.loads(ok("jobs", "show", job_id).stdout)
    assert shown["paused"] or shown["pause_requested"]  # at once, or at its next checkpoint
    assert rows(ok("jobs", "resume", job_id))[0][0] == job_id
    shown = json.loads(ok("jobs", "show", job_id).stdout)
    assert not shown["paused"] and not shown["pause_requested"]
    assert ok("jobs", "checkpoints", job_id).stdout == ""
    assert json.loads(ok("jobs", "checkpoints", job_id, "--json").stdout) == []
    [listed] = json.loads(ok("jobs", "list", "--json").stdout)
    assert listed["id"] == job_id and listed["object"] == "fine_tuning.job"
    assert listed["status"] == shown["status"]
    [f] = json.loads(ok("files", "list", "--json").stdout)
    assert f["id"] == listed["training_file"] and f["status"] == "processed"
    assert json.loads(ok("files", "show", f["id"]).stdout)["filename"] == "train.jsonl"
    events = json.loads(ok("jobs", "events", job_id, "--json").stdout)
    assert [e["object"] for e in events] == ["fine_tuning.job.event"] * len(events) and len(events) >= 3
    assert events == sorted(events, key=lambda e: e["created_at"])  # oldest first, as the rows
