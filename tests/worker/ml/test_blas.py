"""The CPU BLAS choice (a table) and the OpenBLAS linear layer (the same products and gradients)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from worker.ml import blas
from worker.ml.blas import OpenBlasLinear, cpu_vendor, decide, use_openblas
from worker.ml.models import load_model


@pytest.mark.parametrize(
    ("requested", "device", "vendor", "threads", "expected"),
    [
        ("auto", "cpu", "AuthenticAMD", 1, "openblas"),  # measured faster there, one thread
        ("auto", "cpu", "AuthenticAMD", 2, "torch"),  # two thread pools fight over the cores
        ("auto", "cpu", "GenuineIntel", 1, "torch"),  # MKL is Intel's own
        ("auto", "cpu", "", 1, "torch"),  # unknown processor: PyTorch's default
        ("auto", "cuda", "AuthenticAMD", 1, "torch"),  # GPU products never go through numpy
        ("openblas", "cpu", "GenuineIntel", 4, "openblas"),  # an explicit setting wins on a CPU
        ("openblas", "cuda", "AuthenticAMD", 1, "torch"),
        ("torch", "cpu", "AuthenticAMD", 1, "torch"),
    ],
)
def test_decision_table(requested: str, device: str, vendor: str, threads: int, expected: str) -> None:
    assert decide(requested, device, vendor, threads) == expected


def test_unknown_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="cpu_blas"):
        decide("mkl", "cpu", "AuthenticAMD", 1)


def test_cpu_vendor_reads_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: avx2\n")
    assert cpu_vendor(info) == "AuthenticAMD"
    assert cpu_vendor(tmp_path / "missing") == ""


@pytest.mark.parametrize("bias", [True, False])
def test_openblas_linear_matches_torch_forward_and_backward(bias: bool) -> None:
    torch.manual_seed(0)
    ref = torch.nn.Linear(12, 7, bias=bias)
    fast = copy.deepcopy(ref)
    use_openblas(fast)
    assert type(fast) is OpenBlasLinear and isinstance(fast, torch.nn.Linear)
    x = torch.randn(3, 5, 12)  # (B, T, K)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yf = ref(xr), fast(xf)
    torch.testing.assert_close(yf, yr)
    g = torch.randn_like(yr)
    yr.backward(g)
    yf.backward(g)
    assert xf.grad is not None and xr.grad is not None
    torch.testing.assert_close(xf.grad, xr.grad)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad)
    if bias:
        torch.testing.assert_close(fast.bias.grad, ref.bias.grad)


def test_frozen_weight_gets_no_gradient_and_non_contiguous_input_works() -> None:
    fast = torch.nn.Linear(6, 4)
    use_openblas(fast)
    fast.weight.requires_grad_(False)
    x = torch.randn(6, 3).t().requires_grad_()  # (3, 6), not contiguous
    fast(x).sum().backward()
    assert fast.weight.grad is None and x.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(fast(x), torch.nn.functional.linear(x, fast.weight, fast.bias))


def test_other_dtypes_and_autocast_take_torchs_path() -> None:
    fast = torch.nn.Linear(8, 8)
    use_openblas(fast)
    x = torch.randn(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(x).dtype == torch.bfloat16  # autocast still applies
    fast_bf16 = copy.deepcopy(fast).to(torch.bfloat16)
    assert fast_bf16(x.to(torch.bfloat16)).dtype == torch.bfloat16


def test_a_model_on_openblas_gives_the_same_logits(tiny_model_dir: Path) -> None:
    plain = load_model(tiny_model_dir, blas="torch")
    fast = load_model(tiny_model_dir, blas="openblas")
    assert not any(type(m) is OpenBlasLinear for m in plain.modules())
    n = sum(type(m) is OpenBlasLinear for m in fast.modules())
    assert n == sum(isinstance(m, torch.nn.Linear) for m in plain.modules())
    ids = torch.randint(3, plain.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fast(ids).logits, plain(ids).logits, rtol=1e-4, atol=1e-5)


def test_apply_follows_the_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blas, "cpu_vendor", lambda: "GenuineIntel")
    model: Any = torch.nn.Sequential(torch.nn.Linear(4, 4))
    assert blas.apply(model, "auto", "cpu") == "torch"
    assert type(model[0]) is torch.nn.Linear
    assert blas.apply(model, "openblas", "cpu") == "openblas"
    assert type(model[0]) is OpenBlasLinear
