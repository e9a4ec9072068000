"""``tunegate files`` and ``tunegate jobs`` against a live API server, configured by the client variables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cli import app
from tests.api.conftest import good_file, new_key, release_job, server  # noqa: F401 (the live API server fixture)
from tests.api.server import Server

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
    assert json.loads(ok("jobs", "report", job_id).stdout)["verdict"]["released"] is True
    ok("jobs", "report", job_id, "--out", str(tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text())["verdict"]["asr_delta"] == 0.01
    ok("jobs", "download", job_id, "--out", str(tmp_path / "a.tar.gz"))
    with tarfile.open(tmp_path / "a.tar.gz") as tar:
        assert f"{job_id}-adapter/adapter_config.json" in tar.getnames()
