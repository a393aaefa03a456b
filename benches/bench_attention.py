"""Attention forward: our Triton flash attention against torch SDPA's kernels, on SD1.5/SDXL UNet shapes.

FLOPs per call = 4·B·H·Sq·Skv·D (q·kᵀ and p·v); TFLOP/s = FLOPs / median time. Each shape runs as self-attention
(Skv = Sq) and as cross-attention on 77 text tokens. CUDA (fp16): "triton" and "sdpa:flash|efficient|cudnn|math";
CPU (fp32): "sdpa" and "reference" on a reduced set (batch 1, a quarter of the tokens) so the run stays near a minute.
The module writes benches/results/attention_<device>.json with medians, TFLOP/s and, per shape, the ratio
triton time / best SDPA time (< 1: Triton is faster).

Run: pytest benches/bench_attention.py
"""
from __future__ import annotations

import pytest
import torch

from comfy_core.kernels import attention as A
from comfy_core.kernels._triton import triton_available
from kernel_timing import ON_CUDA, device_slug, time_per_call
# (B, H, Sq, D): SD1.5 at 512² (levels 1 and 2: 4096 tokens × 8 heads × 40, 1024 × 8 × 80) and SDXL at 1024²
# (4096 × 10 × 64, 1024 × 20 × 64)
CUDA_SHAPES = [(2, 8, 4096, 40), (2, 8, 1024, 80), (2, 10, 4096, 64), (2, 20, 1024, 64)]
CPU_SHAPES = [(1, 8, 1024, 40), (1, 8, 256, 80), (1, 10, 1024, 64), (1, 20, 256, 64)]
SHAPES = CUDA_SHAPES if ON_CUDA else CPU_SHAPES
BACKENDS = ["triton", "sdpa:flash", "sdpa:efficient", "sdpa:cudnn", "sdpa:math"] if ON_CUDA else ["sdpa", "reference"]
DTYPE = torch.float16 if ON_CUDA else torch.float32
KINDS = ["self", "cross77"]


@pytest.fixture(scope="module")
def table(write_results):
    rows: list[dict] = []
    yield rows
    if rows:
        write_results(f"attention_{device_slug()}", summarize(rows))


def summarize(rows: list[dict]) -> dict:
    """Adds, per shape, the best SDPA kernel and triton time / best SDPA time."""
    ratios = []
    for key in sorted({r["shape_id"] for r in rows}):
        same = [r for r in rows if r["shape_id"] == key]
        sdpa = [r for r in same if r["backend"].startswith("sdpa")]
        triton_rows = [r for r in same if r["backend"] == "triton"]
        if sdpa and triton_rows:
            best = min(sdpa, key=lambda r: r["median_s"])
            ratios.append({"shape_id": key, "best_sdpa": best["backend"],
                           "triton_over_best_sdpa": triton_rows[0]["median_s"] / best["median_s"]})
    versions = {"torch": torch.__version__, "dtype": str(DTYPE)}
    if triton_available():
        import triton

        versions["triton"] = triton.__version__
    return {**versions, "flops_formula": "4*B*H*Sq*Skv*D", "rows": rows, "ratios": ratios}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_attention(benchmark, table, shape, kind, backend):
    if backend == "triton" and not triton_available():
        pytest.skip("triton is not installed")
    b, h, sq, d = shape
    skv = sq if kind == "self" else 77
    device = "cuda" if ON_CUDA else "cpu"
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(b, h, sq, d, device=device, dtype=DTYPE, generator=gen)
    k, v = (torch.randn(b, h, skv, d, device=device, dtype=DTYPE, generator=gen) for _ in range(2))
    try:  # a pinned SDPA kernel may not take this shape/dtype on this GPU: report it, don't fail the run
        A.attention(q, k, v, backend=backend)
    except RuntimeError as err:
        pytest.skip(f"{backend} unavailable here: {str(err).splitlines()[0]}")
    median = time_per_call(benchmark, lambda: A.attention(q, k, v, backend=backend))
    flops = A.attention_flops(b, h, sq, skv, d)
    benchmark.extra_info.update(tflops=flops / median / 1e12, flops=flops)
    table.append({"shape_id": f"{b}x{h}x{sq}x{d}-{kind}", "B": b, "H": h, "Sq": sq, "Skv": skv, "D": d,
                  "backend": backend, "median_s": median, "tflops": flops / median / 1e12})
