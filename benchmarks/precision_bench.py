"""fp32 vs bf16 autocast for the training step's matrix work, side by side in one run.

Times a forward+backward of SmolLM2-135M-sized linear layers (576 -> 1536 -> 576, 8 x 256 tokens) in fp32
and under bf16 autocast, and prints the ratio with the precision ``auto`` picks on this machine. Run it once
as is and once as an AVX2-only CPU sees it (PyTorch's AVX2 kernels; MKL and oneDNN held to AVX2 too):

    python benchmarks/precision_bench.py
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \
        python benchmarks/precision_bench.py
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
from machine import print_machine


def step_seconds(bf16: bool, tokens: int, repeats: int) -> float:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(576, 1536), torch.nn.SiLU(), torch.nn.Linear(1536, 576))
    x = torch.randn(tokens, 576)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    best = float("inf")
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        with ctx:
            y = mlp(x)
        y.float().pow(2).mean().backward()
        if i:  # the first is a warm-up
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8 * 256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print_machine()
    fp32 = step_seconds(False, args.tokens, args.repeats)
    bf16 = step_seconds(True, args.tokens, args.repeats)
    print(f"MLP forward+backward, {args.tokens} tokens: fp32 {fp32 * 1e3:.1f} ms, bf16 {bf16 * 1e3:.1f} ms")
    print(f"bf16 / fp32 time: {bf16 / fp32:.2f}")


if __name__ == "__main__":
    main()
