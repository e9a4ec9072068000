"""The machine a benchmark ran on, printed beside its figures (every benchmark calls ``print_machine``).

CPU model, cores, PyTorch's CPU kernel set (``get_cpu_capability()``, which follows ``ATEN_CPU_CAPABILITY``),
whether the CPU multiplies bf16 natively, the precision training picks there, the versions of torch,
transformers and peft, and the commit.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from worker.ml.precision import Resolved
else:  # run as a script, the worker may not be importable; at run time only the panel's record reader
    Resolved = str  # (tunegate.schema) reads MachineInfo's hints: the precision is a string there

ROOT = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


class MachineInfo(TypedDict):
    """What ``machine_info`` reports (a JSON object in every result file)."""

    cpu: str
    cores: int | None
    torch_threads: int
    cpu_capability: str
    native_bf16_flags: list[str]
    aten_cpu_capability_env: str
    gpu: str | None
    training_precision_auto: Resolved
    torch: str
    transformers: str
    peft: str
    python: str
    commit: str


def machine_info() -> MachineInfo:
    import torch

    from worker.ml.precision import NATIVE_BF16_FLAGS, cpu_flags, resolve

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16_flags": sorted(cpu_flags() & NATIVE_BF16_FLAGS),
        "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY", ""),
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "training_precision_auto": resolve("auto", device),
        "torch": torch.__version__,
        "transformers": _version("transformers"),
        "peft": _version("peft"),
        "python": platform.python_version(),
        "commit": _commit(),
    }


def print_machine() -> MachineInfo:
    info = machine_info()
    print("machine: " + json.dumps(info))
    return info


if __name__ == "__main__":
    print_machine()
