"""How many CPUs this process may really use: the one place that counts them.

``os.cpu_count()`` counts the host's CPUs. In a container limited with ``--cpus 2`` (compose's
``deploy.resources.limits.cpus``, a Kubernetes CPU limit) on a 64-core host it still says 64, so anything
sized by it (one process per core, torch's threads) would start 32 times too many and be throttled by the CFS
quota. ``available_cpus()`` takes the smallest of:

- the CPUs this process may be scheduled on (``os.sched_getaffinity``: ``--cpuset-cpus``, ``taskset``);
- the CFS bandwidth quota of its cgroup and of every cgroup above it, rounded up to whole CPUs: cgroup v2
  ``cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``), cgroup v1 ``cpu.cfs_quota_us`` /
  ``cpu.cfs_period_us`` (a quota of -1: none).

The process's cgroup comes from ``/proc/self/cgroup``; inside a container whose cgroup namespace hides the
path (or whose mount shows only its own cgroup) the mount's root is the process's cgroup. Every file is read
under ``root`` so that tests can lay out a fake ``/proc`` and ``/sys/fs/cgroup``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_MOUNT = Path("sys/fs/cgroup")  # under root
SELF_CGROUP = Path("proc/self/cgroup")  # under root
V1_CPU_CONTROLLERS = ("cpu,cpuacct", "cpuacct,cpu", "cpu")  # how distributions name the v1 cpu mount


def available_cpus(root: Path = Path("/"), *, affinity: int | None = None) -> int:
    """Whole CPUs this process may use (at least 1): its CPU affinity, capped by its cgroups' CPU quota.

    ``affinity`` (tests): the number of CPUs in the affinity mask; default: this process's own."""
    cpus = affinity if affinity is not None else _affinity()
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _affinity() -> int:
    if hasattr(os, "sched_getaffinity"):  # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # macOS, Windows: no affinity mask to read, no cgroups either


def cgroup_cpu_quota(root: Path = Path("/")) -> float | None:
    """The smallest CPU quota (in CPUs, e.g. 1.5) of this process's cgroup and its ancestors; None: no limit
    (or no cgroup filesystem, e.g. not Linux)."""
    paths = _self_cgroups(root)
    mount = root / CGROUP_MOUNT
    limits: list[float] = []
    if (mount / "cgroup.controllers").is_file():  # v2: one unified hierarchy
        for directory in _ancestry(mount, paths.get("", "/")):
            limits += _v2_limit(directory / "cpu.max")
    else:  # v1: a hierarchy per controller
        for name in V1_CPU_CONTROLLERS:
            controller = mount / name
            if controller.is_dir():
                for directory in _ancestry(controller, paths.get("cpu", "/")):
                    limits += _v1_limit(directory)
                break
    return min(limits) if limits else None


def _self_cgroups(root: Path) -> dict[str, str]:
    """``/proc/self/cgroup`` as {controller: path}: "" for the v2 hierarchy, "cpu" for v1's cpu controller."""
    try:
        text = (root / SELF_CGROUP).read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            out[""] = path
        elif "cpu" in controllers.split(","):
            out["cpu"] = path
    return out


def _ancestry(mount: Path, cgroup: str) -> list[Path]:
    """The directories of ``cgroup`` and of each of its ancestors up to the mount's root, where they exist.

    A path that does not exist under the mount (a container that sees the host's path of its cgroup but has
    only its own cgroup mounted) means the mount's root is this process's cgroup."""
    directory = mount / cgroup.strip("/")
    if not directory.is_dir():
        return [mount]
    out = [directory]
    while directory != mount and mount in directory.parents:
        directory = directory.parent
        out.append(directory)
    return out


def _v2_limit(path: Path) -> list[float]:
    try:
        quota, _, period = path.read_text().strip().partition(" ")
    except OSError:  # the root cgroup has no cpu.max, nor has a cgroup whose cpu controller is off
        return []
    if quota == "max":
        return []
    return _ratio(quota, period or "100000", path)


def _v1_limit(directory: Path) -> list[float]:
    try:
        quota = (directory / "cpu.cfs_quota_us").read_text().strip()
        period = (directory / "cpu.cfs_period_us").read_text().strip()
    except OSError:
        return []
    return _ratio(quota, period, directory / "cpu.cfs_quota_us")


def _ratio(quota: str, period: str, path: Path) -> list[float]:
    try:
        q, p = int(quota), int(period)
    except ValueError as exc:
        raise ValueError(f"{path}: not a CPU quota and period: {quota!r} {period!r}") from exc
    if q <= 0 or p <= 0:  # v1's -1: no quota
        return []
    return [q / p]
