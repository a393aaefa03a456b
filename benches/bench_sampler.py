"""Sampler per-step overhead: whole sampling runs with a trivial denoiser, so the time is the sampler's own work
(scalar schedule math, the latent updates, noise generation), not a UNet's.

- latent 1x4x64x64 float32 (a 512x512 SD image), 50 karras steps, seed 42, CPU;
- denoiser D(x, sigma) = 0.5 * x (one elementwise op, ~the cost of reading the latent once);
- us/step = median run time / steps (heun / dpmpp_sde evaluate the model twice per step: still per *step*);
- model_us_per_call is the trivial denoiser alone, for subtracting.

Writes benches/results/sampler_cpu.json. Run: pytest benches/bench_sampler.py
"""
from __future__ import annotations

import pytest
import torch

from comfy_core.models.model_sampling import ModelSampling
from comfy_core.sampling.samplers import get_sampler
from comfy_core.sampling.schedulers import ksampler_sigmas

STEPS = 50
SHAPE = (1, 4, 64, 64)
SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "heun", "lms", "ddpm", "dpmpp_2m_sde", "dpmpp_sde"]


def trivial_model(x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
    return x * 0.5


@pytest.fixture(scope="module")
def table(write_results):
    rows: dict = {"config": {"steps": STEPS, "shape": list(SHAPE), "scheduler": "karras", "dtype": "float32",
                             "threads": torch.get_num_threads(), "model": "0.5 * x"}}
    yield rows
    if len(rows) > 1 and all(v is not None for k, v in rows.items() if k != "config"):
        write_results("sampler_cpu", rows)  # nothing is written under --benchmark-disable


@pytest.fixture(scope="module")
def start() -> tuple[torch.Tensor, torch.Tensor]:
    sigmas = ksampler_sigmas(ModelSampling(), "karras", STEPS)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    return x, sigmas


def test_trivial_model_alone(benchmark, start, table):
    x, sigmas = start
    s_in = x.new_ones([1])
    benchmark.pedantic(lambda: trivial_model(x, sigmas[0] * s_in), rounds=2000, warmup_rounds=50)
    table["model_us_per_call"] = benchmark.stats.stats.median * 1e6 if benchmark.stats else None


@pytest.mark.parametrize("name", SAMPLERS)
def test_sampler_steps(benchmark, start, table, name):
    x, sigmas = start
    fn = get_sampler(name)
    out = benchmark.pedantic(lambda: fn(trivial_model, x, sigmas, seed=42), rounds=20, warmup_rounds=2)
    assert torch.isfinite(out).all()
    if benchmark.stats:
        per_step = benchmark.stats.stats.median / STEPS
        table[name] = {"us_per_step": per_step * 1e6, "steps_per_s": 1 / per_step}
    else:
        table[name] = None
