"""Issue 29 (8): process counts follow the container's CPU limit, not the host's core count.

Each test lays out a fake ``/proc/self/cgroup`` and ``/sys/fs/cgroup`` under a tmp dir (the layouts Docker and
Kubernetes give a container: cgroup v2 with and without a cgroup namespace, cgroup v1) and reads it with
``available_cpus(root)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tunegate.cpus import available_cpus, cgroup_cpu_quota


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def v2(root: Path, cgroup: str = "/", limits: dict[str, str] | None = None) -> Path:
    """A cgroup v2 layout: the process in ``cgroup``; ``limits``: {cgroup path: cpu.max content}."""
    write(root / "proc/self/cgroup", f"0::{cgroup}\n")
    mount = root / "sys/fs/cgroup"
    write(mount / "cgroup.controllers", "cpuset cpu io memory pids\n")
    (mount / cgroup.strip("/")).mkdir(parents=True, exist_ok=True)
    for path, content in (limits or {}).items():
        write(mount / path.strip("/") / "cpu.max", content)
    return root


def v1(root: Path, cgroup: str, quota: int, period: int = 100_000, at: str | None = None) -> Path:
    """A cgroup v1 layout with its cpu controller mounted as cpu,cpuacct; the quota files in ``at``
    (default: the process's cgroup)."""
    write(root / "proc/self/cgroup", f"12:memory:{cgroup}\n4:cpu,cpuacct:{cgroup}\n1:name=systemd:{cgroup}\n")
    directory = root / "sys/fs/cgroup/cpu,cpuacct" / (at if at is not None else cgroup).strip("/")
    write(directory / "cpu.cfs_quota_us", f"{quota}\n")
    write(directory / "cpu.cfs_period_us", f"{period}\n")
    return root


def test_a_v2_container_limit_caps_the_host_cores(tmp_path: Path) -> None:
    # docker run --cpus 2 on a 64-core host, a private cgroup namespace: the container's cgroup is the root
    root = v2(tmp_path, "/", {"/": "200000 100000\n"})
    assert cgroup_cpu_quota(root) == 2.0
    assert available_cpus(root, affinity=64) == 2


def test_a_fractional_quota_rounds_up_and_never_gives_zero(tmp_path: Path) -> None:
    assert available_cpus(v2(tmp_path / "a", "/", {"/": "150000 100000"}), affinity=64) == 2
    assert available_cpus(v2(tmp_path / "b", "/", {"/": "10000 100000"}), affinity=64) == 1


def test_no_quota_leaves_the_affinity(tmp_path: Path) -> None:
    root = v2(tmp_path, "/", {"/": "max 100000\n"})
    assert cgroup_cpu_quota(root) is None
    assert available_cpus(root, affinity=6) == 6
    # a quota above the affinity mask (--cpus 8 --cpuset-cpus 0-3) does not raise it
    assert available_cpus(v2(tmp_path / "b", "/", {"/": "800000 100000"}), affinity=4) == 4


def test_the_smallest_quota_of_the_cgroup_and_its_ancestors_counts(tmp_path: Path) -> None:
    # a Kubernetes pod: the pod's cgroup limits 3 CPUs, the container inside it asks for none (host namespace)
    cgroup = "/kubepods.slice/pod1.slice/cri-containerd-abc.scope"
    root = v2(
        tmp_path,
        cgroup,
        {
            "/kubepods.slice": "max 100000",
            "/kubepods.slice/pod1.slice": "300000 100000",
            cgroup: "max 100000",
        },
    )
    assert available_cpus(root, affinity=64) == 3


def test_a_host_path_missing_under_the_mount_reads_the_mount_root(tmp_path: Path) -> None:
    # cgroup v1 Docker: /proc/self/cgroup shows /docker/<id>, but the container's mount is its own cgroup
    root = v1(tmp_path, "/docker/0123abcd", quota=400_000, at="/")
    assert available_cpus(root, affinity=32) == 4


def test_v1_quota_and_no_quota(tmp_path: Path) -> None:
    assert available_cpus(v1(tmp_path / "a", "/", quota=250_000), affinity=16) == 3
    assert available_cpus(v1(tmp_path / "b", "/", quota=50_000, period=100_000), affinity=16) == 1
    assert available_cpus(v1(tmp_path / "c", "/", quota=-1), affinity=16) == 16


def test_no_cgroup_filesystem_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None
    assert available_cpus(tmp_path, affinity=5) == 5


def test_a_malformed_quota_names_the_file(tmp_path: Path) -> None:
    root = v2(tmp_path, "/", {"/": "lots 100000"})
    with pytest.raises(ValueError, match=r"cpu\.max"):
        available_cpus(root)


def test_this_process_never_counts_more_than_it_may_run_on() -> None:
    n = available_cpus()
    assert 1 <= n <= len(os.sched_getaffinity(0))
