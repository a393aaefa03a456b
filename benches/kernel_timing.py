"""Timing helpers shared by the kernel benchmarks (device sync, launch-gap amortisation, result file names)."""
from __future__ import annotations

import re
import time

import torch

ON_CUDA = torch.cuda.is_available()  # benches may look at the machine when collected; the library never does


def device_slug() -> str:
    name = torch.cuda.get_device_name(0) if ON_CUDA else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def sync() -> None:
    if ON_CUDA:
        torch.cuda.synchronize()


def time_per_call(benchmark, fn, target_s: float = 2e-3, rounds: int = 20 if ON_CUDA else 3) -> float:
    """Median seconds per call: each round runs `inner` calls and one device sync (launch gaps amortised)."""
    fn()  # compile / autotune / allocate
    sync()
    start = time.perf_counter()
    fn()
    sync()
    one = time.perf_counter() - start
    inner = max(1, min(200, int(target_s / max(one, 1e-7))))

    def run() -> None:
        for _ in range(inner):
            fn()
        sync()

    benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)
    return benchmark.stats.stats.median / inner
