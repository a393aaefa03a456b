"""Fused CFG + sampler step against the unfused torch step, on a 2×4×128×128 latent (SDXL 1024², batch 2).

Bytes per call (the memory floor of a step): elements × itemsize × (tensors read + tensors written), with
Euler: x, cond, uncond -> x_next, denoised (5); Euler-a: + noise (6); DPM++ 2M: + old_denoised (6). GB/s = bytes /
median time. "triton" = the fused kernel (CUDA only), "torch" = the same math as separate torch ops (the fallback),
"kdiff" = the op sequence of a k-diffusion/ComfyUI loop (CFG combine, to_d, update) in the latent's dtype.
Writes benches/results/sampler_step_<device>.json.

Run: pytest benches/bench_sampler_step.py
"""
from __future__ import annotations

import pytest
import torch

from comfy_core.kernels import sampler_step as S
from comfy_core.kernels._triton import triton_available
from kernel_timing import ON_CUDA, device_slug, time_per_call

SHAPE = (2, 4, 128, 128)
DTYPES = [torch.float16, torch.float32] if ON_CUDA else [torch.float32]
BACKENDS = ["triton", "torch", "kdiff"] if ON_CUDA else ["torch", "kdiff"]
STEPS = {"euler": 5, "euler_a": 6, "dpmpp_2m": 6}  # tensors read + written per call


def kdiff_step(step: str, t: dict[str, torch.Tensor]) -> torch.Tensor:
    """The unfused sequence a k-diffusion loop runs (CFG in the sampler wrapper, then the update), no fp32 upcast."""
    den = t["uncond"] + (t["cond"] - t["uncond"]) * 7.5
    if step == "dpmpp_2m":
        ratio, expm1_neg_h, c_den, c_old = S.dpmpp_2m_coefficients(6.0, 3.0, 9.0)
        return ratio * t["x"] - expm1_neg_h * (c_den * den - c_old * t["old"])
    d = (t["x"] - den) / 6.0
    x = t["x"] + d * (3.0 - 6.0)
    return x + t["noise"] * 1.0 * 2.0 if step == "euler_a" else x


def fused_step(step: str, t: dict[str, torch.Tensor], backend: str) -> S.StepResult:
    if step == "euler":
        return S.cfg_euler_step(t["x"], t["cond"], t["uncond"], 7.5, 6.0, 3.0, backend=backend)
    if step == "euler_a":
        return S.cfg_euler_ancestral_step(t["x"], t["cond"], t["uncond"], 7.5, 6.0, 3.0, 2.0, t["noise"],
                                          backend=backend)
    return S.cfg_dpmpp_2m_step(t["x"], t["cond"], t["uncond"], 7.5, 6.0, 3.0, t["old"], 9.0, backend=backend)


@pytest.fixture(scope="module")
def table(write_results):
    rows: list[dict] = []
    yield rows
    if rows:
        write_results(f"sampler_step_{device_slug()}", {"torch": torch.__version__, "shape": list(SHAPE),
                                                        "bytes_formula": "numel*itemsize*(reads+writes)",
                                                        "rows": rows})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("step", list(STEPS))
def test_sampler_step(benchmark, table, step, dtype, backend):
    if backend == "triton" and not triton_available():
        pytest.skip("triton is not installed")
    device = "cuda" if ON_CUDA else "cpu"
    gen = torch.Generator(device=device).manual_seed(0)
    t = {n: torch.randn(SHAPE, device=device, dtype=dtype, generator=gen)
         for n in ("x", "cond", "uncond", "noise", "old")}
    if backend == "kdiff":
        fn = lambda: kdiff_step(step, t)  # noqa: E731
    else:
        fn = lambda: fused_step(step, t, backend)  # noqa: E731
        assert S.resolve_step_backend(t["x"], t["cond"], backend=backend) == backend
    median = time_per_call(benchmark, fn)
    nbytes = t["x"].numel() * t["x"].element_size() * STEPS[step]
    benchmark.extra_info.update(gb_per_s=nbytes / median / 1e9)
    table.append({"step": step, "dtype": str(dtype), "backend": backend, "median_s": median, "bytes": nbytes,
                  "gb_per_s": nbytes / median / 1e9})
