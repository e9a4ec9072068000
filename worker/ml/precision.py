"""Training precision, chosen by what the hardware does well (the one place every stage asks).

bf16 autocast halves the work of a matrix multiply only where the hardware multiplies bf16 natively: CUDA
GPUs that support it, and CPUs with AVX512-BF16 or AMX. Everywhere else (an AVX2-only CPU, say) PyTorch
falls back to a reference GEMM for bf16 that measured 4.6x slower than fp32, so those train in fp32.

``decide`` is pure (its inputs are strings and flags, not the machine), so its table is unit-tested;
``resolve`` reads the machine once and calls it. An explicit ``bf16`` or ``fp32`` always wins.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Precision = Literal["auto", "bf16", "fp32"]
Resolved = Literal["bf16", "fp32"]
PRECISIONS: tuple[str, ...] = ("auto", "bf16", "fp32")

# /proc/cpuinfo flags that mean the CPU multiplies bf16 in hardware
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class Hardware:
    """What the decision looks at. ``cpu_capability`` is ``torch.backends.cpu.get_cpu_capability()``
    (``AVX2``, ``AVX512``, ``DEFAULT``...); it follows ``ATEN_CPU_CAPABILITY`` when that is set."""

    device_kind: str  # "cpu" | "cuda"
    cpu_capability: str = ""
    cpu_flags: frozenset[str] = frozenset()
    cuda_bf16: bool = False

    @property
    def cpu_native_bf16(self) -> bool:
        return self.cpu_capability.upper().startswith("AVX512") and bool(self.cpu_flags & NATIVE_BF16_FLAGS)

    def describe(self) -> str:
        if self.device_kind == "cuda":
            return f"cuda (bf16 {'supported' if self.cuda_bf16 else 'not supported'})"
        native = sorted(self.cpu_flags & NATIVE_BF16_FLAGS) if self.cpu_native_bf16 else []
        return f"cpu {self.cpu_capability or '?'}" + (f" + {'/'.join(native)}" if native else "")


def decide(requested: str, hw: Hardware) -> Resolved:
    """``bf16`` or ``fp32`` for training on ``hw``; ``requested`` other than ``auto`` wins."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested != "auto":
        return "bf16" if requested == "bf16" else "fp32"
    if hw.device_kind == "cuda":
        return "bf16" if hw.cuda_bf16 else "fp32"
    return "bf16" if hw.cpu_native_bf16 else "fp32"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where ``/proc/cpuinfo`` is not there."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@functools.lru_cache(maxsize=4)
def hardware(device: str) -> Hardware:
    """This machine, as seen for ``device`` (``cpu``, ``cuda`` or ``cuda:N``)."""
    import torch

    kind = "cuda" if device.startswith("cuda") else "cpu"
    cuda_bf16 = kind == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return Hardware(kind, torch.backends.cpu.get_cpu_capability(), cpu_flags(), cuda_bf16)


def resolve(requested: str, device: str) -> Resolved:
    """The precision to train in on ``device`` of this machine."""
    return decide(requested, hardware(device))
