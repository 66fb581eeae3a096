"""Model FLOPs utilisation: achieved model FLOP/s over the machine's matmul peak."""

from __future__ import annotations

import time
from functools import cache

import torch

# Dense bf16 peaks of common GPUs (no sparsity); anything else is measured.
KNOWN_PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


@cache
def peak_flops(device_type: str, dtype: str = "fp32") -> float:
    if device_type == "cuda":
        name = torch.cuda.get_device_name()
        for key, peak in KNOWN_PEAKS.items():
            if key in name:
                return peak if dtype != "fp32" else peak / 2
    # fp16 matmuls are emulated on most CPUs (~1 GFLOP/s): a 1024^3 probe would take ~40 s
    n = 256 if device_type == "cpu" and dtype == "fp16" else 1024
    return measure_matmul_flops(device_type, dtype, n)


def measure_matmul_flops(device_type: str = "cpu", dtype: str = "fp32", n: int = 1024) -> float:
    """Best of a few square matmuls: the practical peak this process can reach right now."""
    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.randn(n, n, device=device_type, dtype=tdtype)
    b = torch.randn(n, n, device=device_type, dtype=tdtype)
    best = float("inf")
    for _ in range(5):
        if device_type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        if device_type == "cuda":
            torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - t0) / 4)
    return 2 * n**3 / best
