"""Every wrong usage of the ``tunegate`` command answers one clear line and the right exit status:
2 for wrong usage (a bad option value, a missing file), 1 for a failed operation. Never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cli import app
from tests.api.conftest import new_key, server  # noqa: F401 (the live API server fixture)
from tests.api.server import Server, free_port

USAGE, FAILED = 2, 1
CLIENT_VARS = ("TUNEGATE_API_KEY", "OPENAI_API_KEY", "TUNEGATE_BASE_URL", "OPENAI_BASE_URL")

# (args, exit status, part of the one error line); {prompts}, {train}, {missing}, {dir} are files made below
LOCAL: list[tuple[list[str], int, str]] = [
    (["no-such-command"], USAGE, "No such command"),
    (["eval", "--prompts", "{missing}"], USAGE, "does not exist"),
    (["eval", "--prompts", "{dir}"], USAGE, "is a directory"),
    (["eval", "--prompts", "{prompts}", "--benign", "{missing}"], USAGE, "does not exist"),
    (["eval", "--prompts", "{prompts}", "--judge", "gpt"], USAGE, "'gpt' is not one of"),
    (
        ["eval", "--prompts", "{prompts}", "--template", "alpaca"],
        USAGE,
        "neither 'chat' nor a training JSONL",
    ),
    (["eval", "--prompts", "{prompts}", "--limit", "-1"], USAGE, "--limit"),
    (
        ["eval", "--prompts", "{prompts}", "--judge", "llm"],
        FAILED,
        "the LLM judge needs TUNEGATE_LLM_JUDGE_URL",
    ),
    (["finetune", "{missing}", "--out", "{dir}"], USAGE, "does not exist"),
    (["finetune", "{train}"], USAGE, "Missing option '--out'"),
    (
        ["finetune", "{train}", "--out", "{dir}", "--policy", "gate_kap=0.1"],
        USAGE,
        "unknown policy key 'gate_kap'",
    ),
    (["finetune", "{train}", "--out", "{dir}", "--policy", "gate_delta"], USAGE, "expected KEY=VALUE"),
    (["finetune", "{train}", "--out", "{dir}", "--n-epochs", "two"], USAGE, "'two' is not a whole number"),
    (["finetune", "{train}", "--out", "{dir}", "--batch-size", "2.5"], USAGE, "'2.5' is not a whole number"),
    (
        ["finetune", "{train}", "--out", "{dir}", "--learning-rate-multiplier", "x"],
        USAGE,
        "'x' is not a number",
    ),
    (["finetune", "{train}", "--out", "{dir}", "--n-epochs", "0"], USAGE, "must be positive"),
    (["score", "{missing}", "--out", "{dir}/s.jsonl"], USAGE, "does not exist"),
    (["export", "{missing}"], USAGE, "Missing option '--out'"),
    (["export", "{missing}", "--out", "{dir}"], USAGE, "exists and is not an empty directory"),
    (["export", "{missing}", "--out", "{dir}/new", "--gguf-type", "q4"], USAGE, "'q4' is not one of"),
    (["export", "{missing}", "--out", "{dir}/new"], FAILED, "neither an adapter directory nor a job id"),
    (["export", "{dir}", "--out", "{dir}/new"], FAILED, "is not a LoRA adapter directory"),
    (["export", "ftjob-x", "--out", "{dir}/new"], FAILED, "run `tunegate db upgrade` first"),
    # (keys and orgs commands migrate an embedded home themselves: tests/cli/test_service_waiting.py)
    (["audit"], FAILED, "run `tunegate db upgrade` first"),
    (["chat"], USAGE, "Missing argument 'MODEL'"),
    (["chat", "m", "--adapter", "{missing}"], USAGE, "does not exist"),
    (["chat", "m", "--max-new-tokens", "0"], USAGE, "--max-new-tokens"),
    (["chat", "no-such-model"], FAILED, "unknown model 'no-such-model'"),
    (["orgs", "set", "--org", "acme", "--policy", "gate_kap=0.1"], USAGE, "unknown policy key 'gate_kap'"),
    (["orgs", "set", "--org", "acme", "--policy", "gate_delta"], USAGE, "expected KEY=VALUE"),
    (["files", "list"], USAGE, "no API key: set TUNEGATE_API_KEY"),
    (["files", "upload", "{missing}"], USAGE, "does not exist"),
    (["follow", "ftjob-x"], USAGE, "no API key"),
    (
        ["jobs", "create", "--training-file", "{missing}"],
        USAGE,
        "neither a file id (file-...) nor a local file",
    ),
    (["jobs", "create", "--training-file", "file-x", "--n-epochs", "many"], USAGE, "'many' is not a whole"),
    (
        ["jobs", "create", "--training-file", "file-x", "--policy", "gate=0"],
        USAGE,
        "unknown policy key 'gate'",
    ),
    (["jobs", "create", "--training-file", "file-x", "--policy", "=1"], USAGE, "expected KEY=VALUE"),
]

# The same with an API key; {down} is the URL of a port nobody listens on.
DOWN: list[tuple[list[str], int, str]] = [
    (
        ["follow", "ftjob-x", "--base-url", "{down}", "--timeout", "1"],
        FAILED,
        "cannot reach the tunegate API",
    ),
    (["files", "list"], FAILED, "cannot reach the tunegate API at http://127.0.0.1"),
    (["jobs", "list"], FAILED, "cannot reach the tunegate API at http://127.0.0.1"),
]

# Against a live API server (a fresh organization's key); {job} is a job without a report or adapter.
LIVE: list[tuple[list[str], int, str]] = [
    (["follow", "ftjob-nope"], FAILED, "ftjob-nope"),
    (["jobs", "show", "ftjob-nope"], FAILED, "(not_found, HTTP 404)"),
    (["jobs", "cancel", "ftjob-nope"], FAILED, "(not_found, HTTP 404)"),
    (["jobs", "report", "{job}"], FAILED, "has no safety report yet"),
    (["jobs", "download", "{job}"], FAILED, "is not released"),
    (["files", "rm", "file-nope"], FAILED, "HTTP 404"),
    (["jobs", "create", "--training-file", "file-nope"], FAILED, "HTTP 4"),
    (
        ["jobs", "create", "--training-file", "{bad}"],
        FAILED,
        "'messages' must be a list (invalid_file, HTTP 400)",
    ),
    (["files", "upload", "{few}"], FAILED, "was rejected"),
    (["jobs", "create", "--training-file", "{file}", "--policy", "gate_delta=0.9"], FAILED, "would loosen"),
]


def assert_one_line(res: Result, status: int, message: str) -> None:
    assert "Traceback" not in res.output, res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert res.exit_code == status, res.output
    assert len(errors) == 1 and message in errors[0], res.stderr


def run(args: list[str], **paths: str) -> Result:
    return CliRunner().invoke(app, [a.format(**paths) for a in args])


@pytest.fixture
def files(tmp_path: Path, tunegate_home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Input files for the commands, in a fresh, unmigrated home, with no client variables set."""
    for var in CLIENT_VARS:
        monkeypatch.delenv(var, raising=False)
    prompts = tmp_path / "adv.csv"
    prompts.write_text("goal,target\nDo a bad thing,Sure\n")
    train = tmp_path / "train.jsonl"
    row = {"messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}]}
    train.write_text(json.dumps(row) + "\n")
    return {
        "prompts": str(prompts),
        "train": str(train),
        "missing": str(tmp_path / "nope.jsonl"),
        "dir": str(tmp_path),
    }


@pytest.mark.parametrize(("args", "status", "message"), LOCAL, ids=[" ".join(c[0][:3]) for c in LOCAL])
def test_local_wrong_usage(files: dict[str, str], args: list[str], status: int, message: str) -> None:
    assert_one_line(run(args, **files), status, message)


@pytest.mark.parametrize(("args", "status", "message"), DOWN, ids=[" ".join(c[0][:2]) for c in DOWN])
def test_server_down(
    files: dict[str, str], monkeypatch: pytest.MonkeyPatch, args: list[str], status: int, message: str
) -> None:
    down = f"http://127.0.0.1:{free_port()}/v1"
    monkeypatch.setenv("TUNEGATE_API_KEY", "tg-anything")
    monkeypatch.setenv("TUNEGATE_BASE_URL", down)
    assert_one_line(run(args, down=down, **files), status, message)


@pytest.fixture
def live(server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:  # noqa: F811
    """The client variables point at the live server with a new organization's key; a queued job."""
    from tests.api.conftest import good_file, processed_file, sdk

    key = new_key()
    monkeypatch.setenv("TUNEGATE_API_KEY", key)
    monkeypatch.setenv("TUNEGATE_BASE_URL", f"{server.base_url}/v1")
    client = sdk(server, key)
    file_id = processed_file(client)
    job = client.fine_tuning.jobs.create(model="smollm2-135m", training_file=file_id)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": "not a list"}\n')
    train = tmp_path / "train.jsonl"
    train.write_bytes(good_file())
    few = tmp_path / "few.jsonl"
    few.write_bytes(good_file(2))
    return {"job": job.id, "file": str(train), "bad": str(bad), "few": str(few)}


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
@pytest.mark.parametrize(("args", "status", "message"), LIVE, ids=[" ".join(c[0][:3]) for c in LIVE])
def test_live_wrong_usage(live: dict[str, str], args: list[str], status: int, message: str) -> None:
    assert_one_line(
        run(args + ["--model", "smollm2-135m"] if args[:2] == ["jobs", "create"] else args, **live),
        status,
        message,
    )


@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
def test_bad_key_gets_the_servers_message(live: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEGATE_API_KEY", "tg-not-a-key")
    assert_one_line(run(["follow", live["job"]]), FAILED, "HTTP 401")
    assert_one_line(run(["jobs", "list"]), FAILED, "HTTP 401")


def test_version_and_help_for_users(files: dict[str, str]) -> None:
    version = CliRunner().invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.startswith("tunegate ")
    shown = CliRunner().invoke(app, ["--help"])
    assert shown.exit_code == 0 and "files upload" in shown.stdout and "TUNEGATE_API_KEY" in shown.stdout
    assert ".py" not in shown.stdout and "cli/" not in shown.stdout  # no source paths


def test_debug_keeps_the_traceback(files: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy.exc import OperationalError

    res = CliRunner().invoke(app, ["--debug", "audit"])
    assert res.exit_code == 1 and isinstance(res.exception, OperationalError)
    monkeypatch.setenv("TUNEGATE_DEBUG", "1")
    from tunegate.settings import reset_settings

    reset_settings()
    assert isinstance(CliRunner().invoke(app, ["audit"]).exception, OperationalError)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TUNEGATE_API_PORT", "abc", "bad setting TUNEGATE_API_PORT='abc': Input should be a valid integer"),
        ("TUNEGATE_MODELS", "{bad", "bad setting TUNEGATE_MODELS: not valid JSON for this field"),
        ("TUNEGATE_DEBUG", "maybe", "bad setting TUNEGATE_DEBUG='maybe': Input should be a valid boolean"),
        ("TUNEGATE_CONSOLE_SECRET", "", None),  # empty is ignored: no error
    ],
)
def test_a_bad_setting_is_one_line_naming_the_variable(
    tmp_path: Path, variable: str, value: str, message: str | None
) -> None:
    """The real entry point (settings are read before any command): one line on stderr, exit status 2."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEGATE_")}
    env |= {"TUNEGATE_HOME": str(tmp_path), variable: value}
    res = subprocess.run(
        [sys.executable, "-c", "import cli; cli.main()", "--version"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if message is None:
        assert res.returncode == 0 and res.stdout.startswith("tunegate"), res.stderr
        return
    assert res.returncode == USAGE and res.stdout == ""
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and message in res.stderr, res.stderr


def test_flags_are_shown_as_flags(files: dict[str, str]) -> None:
    for args in (["--help"], ["jobs", "create", "--help"], ["files", "upload", "--help"]):
        shown = CliRunner().invoke(app, args)
        assert shown.exit_code == 0 and "<bool>" not in shown.stdout, shown.stdout
    top = CliRunner().invoke(app, ["--help"]).stdout
    assert "--version " in top and "--debug " in top
