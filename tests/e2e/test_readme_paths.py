"""The README's second path, run as written from a fresh home, without the demo having run first (issue 28,
"Done when"): its shell lines (``tunegate serve --detach``, then at once ``export KEY=$(tunegate keys
create ...)``) in bash, then its Python snippet (upload, wait for processing, create a job). Both are read
out of README.md, so this breaks when the README changes. Two things differ from a user's machine, neither
in the README's lines: the model registry points the README's model name at the tiny test model (minutes
become seconds), and the port is a free one (the snippet's ``127.0.0.1:8000`` is replaced by it).

And the path's first stumble: on a home where the aligned model was never built, what a user gets names
``tunegate models prepare --aligned`` (``models.list`` and the refused job; ``serve``'s own line is checked
in tests/cli/test_service.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
import psutil  # type: ignore[import-untyped]
import pytest

from tests.api.conftest import new_key, processed_file, sdk, server  # noqa: F401
from tests.api.server import Server, free_port, wait_for
from tests.e2e.harness import TERMINAL, chat_rows, overrides
from tests.worker.jobfactory import shared_tiny

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Using the API with the openai SDK"
README_MODEL = "smollm2-135m-aligned"
README_URL = "http://127.0.0.1:8000/v1"
PREPARE = "`tunegate models prepare --aligned`"


def readme_path() -> tuple[list[str], str]:
    """The section's shell lines (its first indented block) and its Python snippet (its first ```python)."""
    text = (REPO / "README.md").read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    shell = re.search(r"\n\n((?: {4}\S.*\n)+)", section)
    python = re.search(r"```python\n(.*?)```", section, re.S)
    assert shell and python, "the section lost its shell lines or its Python snippet"
    lines = [line[4:] for line in shell.group(1).splitlines()]
    return lines, python.group(1)


def test_the_readme_path_is_what_this_test_runs() -> None:
    shell, snippet = readme_path()
    assert [line.split()[:2] for line in shell] == [["tunegate", "serve"], ["export", "KEY=$(tunegate"]]
    assert shell[0].split("#")[0].strip() == "tunegate serve --detach"
    assert README_URL in snippet and f'model="{README_MODEL}"' in snippet and 'open("train.jsonl"' in snippet


def _kill_tree(pid: int) -> None:
    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            continue


@pytest.mark.slow
def test_the_readme_sdk_path_from_a_fresh_home(tmp_path: Path) -> None:
    shell, snippet = readme_path()
    model, cache = shared_tiny()
    home, work, port = tmp_path / "home", tmp_path / "work", free_port()
    work.mkdir()
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_rows(24)))  # the user's file
    (work / "snippet.py").write_text(snippet.replace(README_URL, f"http://127.0.0.1:{port}/v1"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNEGATE_", "OPENAI_"))}
    env |= {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",  # `tunegate`, `python`
        "TUNEGATE_HOME": str(home),
        "TUNEGATE_API_PORT": str(port),
        "TUNEGATE_MODELS": json.dumps({README_MODEL: str(model), "smollm2-135m": str(model)}),
        "TUNEGATE_MODEL_CACHE_DIR": str(cache),
        "TUNEGATE_STAGE_OVERRIDES": json.dumps(overrides(tmp_path / "eval")),
        "TUNEGATE_GATE_DELTA": "0.6",  # as tests/e2e/harness.py: 12 paired prompts bound no tighter
        "TUNEGATE_MIN_EXAMPLES": "10",
        "TUNEGATE_MAX_EXAMPLE_TOKENS": "512",
        "TUNEGATE_TORCH_THREADS": "1",
    }
    script = "\n".join([*shell, "python snippet.py", ""])  # the README's lines as they are
    (work / "path.sh").write_text(script)
    serve_pid: int | None = None
    try:
        # files, not pipes: should serve stay in the foreground, this still ends (and fails below)
        with (work / "out").open("w") as out, (work / "err").open("w") as err:
            code = subprocess.run(["bash", "path.sh"], cwd=work, env=env, stdout=out, stderr=err, timeout=300)
        stdout, stderr = (work / "out").read_text(), (work / "err").read_text()
        pid = re.search(r"tunegate is serving at \S+ .*; pid (\d+), stop it with: kill \1", stdout)
        assert pid, f"{stdout}\n{stderr}"
        serve_pid = int(pid.group(1))
        assert code.returncode == 0, f"{stdout}\n{stderr}"
        assert "no tunegate tables" not in stderr, stderr
        # the snippet printed the job's events, then "status fine_tuned_model error" of the created job
        lines = [line for line in stdout.splitlines() if not line.startswith("tunegate is serving at")]
        assert lines and lines[-1].split()[0] in ("validating_files", "queued", "running", *TERMINAL), stdout

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=_key(home, env))
        jobs = client.fine_tuning.jobs.list().data
        assert (
            len(jobs) == 1
            and jobs[0].model == README_MODEL
            and getattr(jobs[0], "user_provided_suffix", None) == "support"
        )
        job = jobs[0]
        deadline = time.monotonic() + 180
        while job.status not in TERMINAL and time.monotonic() < deadline:
            time.sleep(1)
            job = client.fine_tuning.jobs.retrieve(job.id)
        assert job.status in TERMINAL, f"{job.id} still {job.status} after 3 minutes"
        assert job.status == "succeeded" or (job.error and job.error.code) in (
            "unsafe_training_data",
            "safety_eval_failed",
        ), job.error  # the gate's decision, not a crash

        os.kill(serve_pid, signal.SIGTERM)  # the README: `kill PID` stops serve with its API and workers
        wait_for(lambda: not psutil.pid_exists(serve_pid) or _zombie(serve_pid), "serve to stop", 30)
    finally:
        if serve_pid is not None:
            _kill_tree(serve_pid)


def _zombie(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def _key(home: Path, env: dict[str, str]) -> str:
    """A second key of the README's organization (the first one went into the snippet's environment)."""
    made = subprocess.run(
        [sys.executable, "-c", "import cli; cli.main()", "keys", "create", "--org", "acme"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


def test_a_home_without_the_aligned_model_names_the_command_that_builds_it(server: Server) -> None:  # noqa: F811
    """The API fixture's registry is the default one and its home never built the aligned base: the model
    list says it is not ready and why, and a job for it is refused with the command."""
    client = sdk(server, new_key())
    listed = {m.id: m.model_extra or {} for m in client.models.list()}
    assert listed[README_MODEL]["ready"] is False
    assert PREPARE in listed[README_MODEL]["status_details"]
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        client.fine_tuning.jobs.create(model=README_MODEL, training_file=processed_file(client))
    assert PREPARE in refused.value.message
