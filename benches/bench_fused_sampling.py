"""Whole euler / dpmpp_2m runs with the CFG combine fused into the sampler update, against the unfused paths.

A trivial guided model stands in for the UNet, so the time is the sampler's own work: cond = 0.5·x, uncond = 0.25·x
(two elementwise ops, one read of the latent each), cfg 7.5, karras sigmas, float32.

- "fused": the model offers `predict_guided`; the sampler's `cfg_*_step` combines and updates (one Triton pass on
  CUDA, the torch reference on CPU);
- "unfused": the same sampler, the model combines (uncond + cfg·(cond − uncond)) and the step gets uncond=None;
- "kdiff": the pre-integration loop (k-diffusion's ops on the combined prediction, 0-dim tensor scalars).

- "fused_callback": "fused" with a (no-op) callback, so the step also returns the combined prediction
  (write_denoised=True; free on CPU, one extra write per element in the Triton kernel).

Shapes: 1×4×64×64 (SD 512², per-step overhead dominates) and 2×4×128×128 (SDXL 1024², batch 2). us/step = median
run time / steps (and the min, steadier on a shared machine). Writes benches/results/fused_sampling_<device>.json.
Run: pytest benches/bench_fused_sampling.py
"""
from __future__ import annotations

from typing import Any

import pytest
import torch

from comfy_core.models.model_sampling import ModelSampling
from comfy_core.sampling.common import GuidedPrediction, host_sigmas, to_d
from comfy_core.sampling.samplers import get_sampler
from comfy_core.sampling.schedulers import ksampler_sigmas
from kernel_timing import ON_CUDA, device_slug, sync

STEPS = 20
CFG = 7.5
SHAPES = {"sd15_512": (1, 4, 64, 64), "sdxl_1024_b2": (2, 4, 128, 128)}
SAMPLERS = ["euler", "dpmpp_2m"]
PATHS = ["fused", "fused_callback", "unfused", "kdiff"]


class TrivialGuided:
    """cond = 0.5·x, uncond = 0.25·x; `fused=False` hides predict_guided (the samplers then call the model whole)."""

    def __init__(self, fused: bool) -> None:
        if not fused:
            self.predict_guided = None

    def predict_guided(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> GuidedPrediction:
        return GuidedPrediction(x * 0.5, x * 0.25, CFG)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        cond, uncond = x * 0.5, x * 0.25
        return uncond + (cond - uncond) * CFG


def kdiff_euler(model, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    sig, s_in = host_sigmas(sigmas), x.new_ones([x.shape[0]])
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in)
        x = x + to_d(x, sig[i], denoised) * (sig[i + 1] - sig[i])
    return x


def kdiff_dpmpp_2m(model, x: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    sig, s_in = host_sigmas(sigmas), x.new_ones([x.shape[0]])
    t_fn = lambda s: s.log().neg()  # noqa: E731
    old = None
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in)
        t, t_next = t_fn(sig[i]), t_fn(sig[i + 1])
        h = t_next - t
        if old is None or sig[i + 1] == 0:
            d = denoised
        else:
            r = (t - t_fn(sig[i - 1])) / h
            d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old
        x = (t_next.neg().exp() / t.neg().exp()) * x - (-h).expm1() * d
        old = denoised
    return x


KDIFF = {"euler": kdiff_euler, "dpmpp_2m": kdiff_dpmpp_2m}


@pytest.fixture(scope="module")
def table(write_results):
    # one intra-op thread: on a small shared CPU box OpenMP spin-waits make 2-thread timings swing 100x
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows: list[dict] = []
    yield rows
    torch.set_num_threads(threads)
    if rows:
        write_results(f"fused_sampling_{device_slug()}", {
            "config": {"steps": STEPS, "cfg": CFG, "scheduler": "karras", "dtype": "float32",
                       "threads": 1, "model": "cond 0.5*x, uncond 0.25*x"},
            "rows": rows})


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_full_run(benchmark, table, shape, name, path):
    device = "cuda" if ON_CUDA else "cpu"
    sigmas = ksampler_sigmas(ModelSampling(), "karras", STEPS).to(device)
    x = torch.randn(SHAPES[shape], generator=torch.Generator().manual_seed(0)).to(device) * sigmas[0]
    model = TrivialGuided(fused=path.startswith("fused"))
    sampler = get_sampler(name)
    callback = (lambda info: None) if path == "fused_callback" else None

    def run() -> torch.Tensor:
        out = KDIFF[name](model, x, sigmas) if path == "kdiff" else sampler(model, x, sigmas, callback=callback)
        sync()
        return out

    reference = kdiff_euler if name == "euler" else kdiff_dpmpp_2m
    torch.testing.assert_close(run(), reference(TrivialGuided(False), x, sigmas), rtol=1e-5, atol=1e-5)
    benchmark.pedantic(run, rounds=20 if shape == "sd15_512" else 8, warmup_rounds=1)
    if benchmark.stats:
        stats = benchmark.stats.stats
        table.append({"shape": shape, "sampler": name, "path": path, "us_per_step": stats.median / STEPS * 1e6,
                      "us_per_step_min": stats.min / STEPS * 1e6})
