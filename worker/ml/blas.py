"""Which BLAS multiplies a CPU model's linear layers: PyTorch's own (MKL) or numpy's OpenBLAS.

Nearly all the CPU time of training, scoring and generation is ``nn.Linear``. PyTorch's CPU wheels multiply
through MKL, which on AMD processors measured about half as fast as numpy's OpenBLAS for the shapes of a small
model (docs/benchmarks.md, "CPU matrix products"): 16 x 576 x 1536 at 37 against 66 GFLOP/s on one thread of
an AMD EPYC, 1024 x 1536 x 576 at 39 against 121. ``use_openblas`` turns a model's ``nn.Linear`` modules into
``OpenBlasLinear``: the same module (weights, hooks, peft wrapping, ``isinstance``), whose fp32 CPU products,
forward and backward, go through OpenBLAS; anything else (CUDA, bf16, autocast) takes PyTorch's path.

OpenBLAS's and PyTorch's thread pools fight over the cores when both have several threads (measured 2.5x
slower on 2 cores), so ``auto`` uses OpenBLAS only in a one-thread process, with OpenBLAS limited to one
thread too; the embedded demo runs its work as such processes side by side. ``decide`` is pure and
table-tested; an explicit ``torch`` or ``openblas`` (``TUNEGATE_CPU_BLAS``) wins.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import torch

Blas = Literal["torch", "openblas"]
CHOICES: tuple[str, ...] = ("auto", "torch", "openblas")
# vendors whose processors ran MKL's products slower than OpenBLAS's (measured; others keep PyTorch's)
OPENBLAS_VENDORS = frozenset({"AuthenticAMD"})


def decide(requested: str, device_kind: str, vendor: str, threads: int) -> Blas:
    """The BLAS for a model on ``device_kind`` in a process with ``threads`` torch threads."""
    if requested not in CHOICES:
        raise ValueError(f"cpu_blas must be one of {', '.join(CHOICES)}, got {requested!r}")
    if device_kind != "cpu" or requested == "torch":
        return "torch"
    if requested == "openblas":
        return "openblas"
    return "openblas" if vendor in OPENBLAS_VENDORS and threads == 1 else "torch"


def cpu_vendor(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """``vendor_id`` of /proc/cpuinfo (``AuthenticAMD``, ``GenuineIntel``); "" where it is not there."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            return value.strip()
    return ""


def _np(t: torch.Tensor) -> Any:
    """A 2-D numpy view of ``t`` (..., K) -> (M, K), sharing memory where the layout allows."""
    return t.detach().reshape(-1, t.shape[-1]).numpy()


class _Product(torch.autograd.Function):
    """y = x Wᵀ through numpy (OpenBLAS); backward: dx = dy W, dW = dyᵀ x (only the ones needed)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        y = torch.from_numpy(_np(x) @ weight.detach().numpy().T)  # (M, K) @ (K, N) -> (M, N)
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, weight = ctx.saved_tensors
        g = _np(grad)  # (M, N)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            dx = torch.from_numpy(g @ weight.detach().numpy()).view(*grad.shape[:-1], weight.shape[1])
        if ctx.needs_input_grad[1]:
            dw = torch.from_numpy(g.T @ _np(x))  # (N, M) @ (M, K) -> (N, K)
        return dx, dw


class OpenBlasLinear(torch.nn.Linear):
    """``nn.Linear`` whose fp32 CPU products run through OpenBLAS (set by ``use_openblas``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32:
            return super().forward(x)
        if torch.is_autocast_enabled("cpu"):
            return super().forward(x)
        y: torch.Tensor = _Product.apply(x, w)  # type: ignore[no-untyped-call]
        return y if self.bias is None else y + self.bias


@functools.lru_cache(maxsize=1)
def _one_blas_thread() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")  # process-wide, for the process's life


def use_openblas(model: torch.nn.Module) -> int:
    """Route ``model``'s plain ``nn.Linear`` products through OpenBLAS (one thread); returns how many."""
    _one_blas_thread()
    n = 0
    for m in model.modules():
        if type(m) is torch.nn.Linear:
            m.__class__ = OpenBlasLinear
            n += 1
    return n


def apply(model: torch.nn.Module, requested: str, device: str) -> Blas:
    """Apply the BLAS ``decide`` picks for ``model`` on ``device`` in this process; returns it."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    chosen = decide(requested, kind, cpu_vendor(), torch.get_num_threads())
    if chosen == "openblas":
        use_openblas(model)
    return chosen
