"""The training-precision decision table: capability strings and flags are inputs, not this machine's."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.ml.precision import Hardware, cpu_flags, decide, resolve

AMX = frozenset({"avx2", "avx512f", "amx_bf16", "amx_tile"})
AVX512_BF16 = frozenset({"avx2", "avx512f", "avx512_bf16"})
AVX512_ONLY = frozenset({"avx2", "avx512f", "avx512bw"})
AVX2_ONLY = frozenset({"avx2", "fma"})


@pytest.mark.parametrize(
    ("requested", "hw", "expected"),
    [
        # auto: CUDA by its bf16 support
        ("auto", Hardware("cuda", "AVX2", AVX2_ONLY, cuda_bf16=True), "bf16"),
        ("auto", Hardware("cuda", "AVX512", AMX, cuda_bf16=False), "fp32"),
        # auto on CPU: bf16 only with native bf16 (AVX512-BF16 or AMX) and an AVX512 kernel set in use
        ("auto", Hardware("cpu", "AVX512", AMX), "bf16"),
        ("auto", Hardware("cpu", "AVX512", AVX512_BF16), "bf16"),
        ("auto", Hardware("cpu", "AVX512", AVX512_ONLY), "fp32"),
        ("auto", Hardware("cpu", "AVX2", AVX2_ONLY), "fp32"),
        # ATEN_CPU_CAPABILITY=avx2 on an AMX machine: PyTorch's kernels are the AVX2 ones, so fp32
        ("auto", Hardware("cpu", "AVX2", AMX), "fp32"),
        ("auto", Hardware("cpu", "DEFAULT", frozenset()), "fp32"),
        ("auto", Hardware("cpu", "", frozenset()), "fp32"),
        # an explicit setting always wins
        ("bf16", Hardware("cpu", "AVX2", AVX2_ONLY), "bf16"),
        ("fp32", Hardware("cpu", "AVX512", AMX), "fp32"),
        ("fp32", Hardware("cuda", "AVX512", AMX, cuda_bf16=True), "fp32"),
    ],
)
def test_decision_table(requested: str, hw: Hardware, expected: str) -> None:
    assert decide(requested, hw) == expected


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        decide("fp16", Hardware("cpu", "AVX2"))


def test_cpu_flags_read_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 amx_bf16\n\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpu_flags(info) == frozenset({"fpu", "sse", "avx2", "amx_bf16"})
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_resolve_explicit_on_this_machine() -> None:
    assert resolve("fp32", "cpu") == "fp32"
    assert resolve("auto", "cpu") in ("bf16", "fp32")


def test_describe_names_the_native_flags() -> None:
    assert Hardware("cpu", "AVX512", AMX).describe() == "cpu AVX512 + amx_bf16"
    assert Hardware("cpu", "AVX2", AVX2_ONLY).describe() == "cpu AVX2"
    assert Hardware("cpu", "AVX2", AMX).describe() == "cpu AVX2"  # ATEN_CPU_CAPABILITY=avx2: not used
