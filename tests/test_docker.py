"""Issue 14: the Docker files hold together (docker compose is not run here; the files are read as YAML)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
ONE_SHOT = {"migrate", "prepare"}


def _compose(name: str) -> dict[str, Any]:
    data = yaml.safe_load((REPO / name).read_text())
    assert isinstance(data, dict)
    return data


def test_every_long_running_service_has_a_healthcheck_and_restarts() -> None:
    services = _compose("docker-compose.yml")["services"]
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no" and service["healthcheck"] == {"disable": True}, name
        else:
            assert service["restart"] == "unless-stopped", name
            assert service["healthcheck"]["test"], name
    worker_check = " ".join(services["worker"]["healthcheck"]["test"])
    assert "http" not in worker_check
    assert services["worker"]["environment"]["TUNEGATE_WORKER_ALIVE_FILE"] in worker_check


def test_workers_start_after_the_migration_and_the_model_preparation() -> None:
    services = _compose("docker-compose.yml")["services"]
    assert services["prepare"]["command"][:3] == ["tunegate", "models", "prepare"]
    assert services["migrate"]["command"] == ["tunegate", "db", "upgrade"]
    for one_shot in ONE_SHOT:
        assert services["worker"]["depends_on"][one_shot] == {"condition": "service_completed_successfully"}
    assert services["api"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}


def test_the_cuda_variant_reserves_a_gpu_and_builds_the_cuda_image() -> None:
    worker = _compose("docker-compose.cuda.yml")["services"]["worker"]
    assert worker["build"]["args"]["VARIANT"] == "cuda"
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"


def test_the_image_copies_every_package_and_the_context_leaves_out_the_rest() -> None:
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    copied = set(re.findall(r"^COPY (\w+) \./\1$", (REPO / "Dockerfile").read_text(), re.MULTILINE))
    assert {p.rstrip("*") for p in packages["include"]} <= copied
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "tests"} <= ignored and not copied & ignored
