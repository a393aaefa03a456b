"""Sampler per-step overhead: whole sampling runs with a trivial denoiser, so the time is the sampler's own work
(scalar schedule math, the latent updates, noise generation), not a UNet's.

- latent 1x4x64x64 float32 (a 512x512 SD image), 50 karras steps, seed 42, CPU;
- denoiser D(x, sigma) = 0.5 * x (one elementwise op, ~the cost of reading the latent once);
- us/step = median run time / steps (heun / dpmpp_sde evaluate the model twice per step: still per *step*);
- model_us_per_call is the trivial denoiser alone, for subtracting.

Writes benches/results/sampler_cpu.json.

Then whole KSampler runs (`sample_latent`: CFG 7 over random 77-token conditioning, so every UNet call is batch 2)
with real UNets of random weights built in-process, 8×8 latent (a 64×64 image), normal scheduler, CPU float32:
the tiny test UNet (tests/fixtures_models.py "sd1") and a full-size SD1.5 UNet (model_channels 320, mult 1,2,4,4,
2 res blocks, attention at levels 0..2, context 768, 8 heads). steps/s per sampler, plus the UNet calls per run
(heun: 2 per step but the last). Writes benches/results/sampler_unet_cpu.json. The machine is shared with other
engineers' test runs: timings are noisy.

Run: pytest benches/bench_sampler.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from comfy_core.models.detect import ModelSpec
from comfy_core.models.diffusion import DiffusionModel
from comfy_core.models.model_sampling import ModelSampling
from comfy_core.models.unet import UNetConfig, UNetModel
from comfy_core.sampling.ksampler import sample_latent

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
import fixtures_models  # noqa: E402  (tiny UNet config and the random-weight recipe of the test checkpoints)
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


# -- real UNets ------------------------------------------------------------------------------------------------------

UNET_SAMPLERS = ["euler", "euler_ancestral", "heun", "dpmpp_2m", "dpmpp_2m_sde", "uni_pc"]
UNET_STEPS = {"tiny": 10, "sd15": 3}
SD15_UNET = UNetConfig(model_channels=320, channel_mult=(1, 2, 4, 4), num_res_blocks=(2, 2, 2, 2),
                       transformer_depth=(1, 1, 1, 1, 1, 1, 0, 0),
                       transformer_depth_output=(1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0), transformer_depth_middle=1,
                       context_dim=768, num_heads=8, num_head_channels=-1)


def random_model(config: UNetConfig, seed: int = 0) -> DiffusionModel:
    """A MODEL around a UNet of `config` with deterministic random weights (tests/fixtures_models.randomize)."""
    with torch.device("meta"):
        unet = UNetModel(config)
    weights = fixtures_models.randomize({k: v.shape for k, v in unet.state_dict().items()}, seed)
    unet.load_state_dict(weights, assign=True)
    return DiffusionModel(unet.eval(), ModelSpec("sd1", config))


@pytest.fixture(scope="module")
def unet_table(write_results):
    rows: dict = {"config": {"latent": [1, 4, 8, 8], "cfg": 7.0, "unet_batch": 2, "scheduler": "normal",
                             "steps": UNET_STEPS, "dtype": "float32", "threads": torch.get_num_threads(),
                             "note": "shared 2-core machine: other engineers' tests ran concurrently"}}
    yield rows
    if all(v is not None for k, v in rows.items() if k != "config"):
        write_results("sampler_unet_cpu", rows)


@pytest.fixture(scope="module", params=list(UNET_STEPS))
def unet_model(request):
    config = fixtures_models.TINY_UNETS["sd1"] if request.param == "tiny" else SD15_UNET
    model = random_model(config)
    yield request.param, model
    del model


@pytest.mark.parametrize("name", UNET_SAMPLERS)
def test_ksampler_steps_with_unet(benchmark, unet_model, unet_table, name):
    size, model = unet_model
    steps = UNET_STEPS[size]
    g = torch.Generator().manual_seed(1)
    width = model.spec.unet.context_dim
    positive = [[torch.randn(1, 77, width, generator=g), {}]]
    negative = [[torch.randn(1, 77, width, generator=g), {}]]
    calls = []
    apply_model = model.apply_model
    model.apply_model = lambda *a, **kw: calls.append(1) or apply_model(*a, **kw)

    def run():
        calls.clear()
        return sample_latent(model, {"samples": torch.zeros(1, 4, 8, 8)}, positive, negative, seed=42, steps=steps,
                             cfg=7.0, sampler_name=name, scheduler="normal")

    try:
        if size == "tiny":
            out = benchmark.pedantic(run, rounds=5, warmup_rounds=1)
        else:
            out = benchmark.pedantic(run, rounds=2, iterations=1)
    finally:
        del model.apply_model
    assert torch.isfinite(out["samples"]).all()
    if benchmark.stats:
        median, best = benchmark.stats.stats.median, benchmark.stats.stats.min
        unet_table[f"{size}/{name}"] = {
            "steps": steps, "steps_per_s": steps / median, "steps_per_s_best": steps / best,
            "s_per_step": median / steps, "unet_calls": len(calls), "s_per_unet_call": median / len(calls),
            "s_per_unet_call_best": best / len(calls)}
    else:
        unet_table[f"{size}/{name}"] = None
