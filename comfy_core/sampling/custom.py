"""The values of ComfyUI's custom-sampling sockets, engine side: SAMPLER (a sampler function with bound options,
ComfyUI's `KSAMPLER`) and NOISE (`Noise_RandomNoise` / `Noise_EmptyNoise`), plus the two samplers that exist only
as custom-sampling nodes (LCM with upscaling, the alternative Euler CFG++).

Method and attribute names follow ComfyUI's (`generate_noise`, `seed`, `sampler_function`, `extra_options`), so
custom nodes that build or read these objects keep working.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from ..upscale import common_upscale
from .common import Callback, Denoiser, UncondCapture, report, s_in_like, to_d
from .noise import NoiseSampler, cpu_generator, prepare_noise
from .samplers import RANDOM_INPAINT_NOISE_SAMPLERS, SamplerFn, get_sampler


@dataclass(frozen=True)
class SamplerObject:
    """A SAMPLER socket value: `sampler_function` called with `extra_options` as keyword arguments.

    `random_inpaint_noise` (ComfyUI's inpaint_options "random", set for ddim) re-noises the kept region of an
    inpainting run with separate seed + 1 noise instead of the initial noise."""

    sampler_function: SamplerFn
    extra_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    random_inpaint_noise: bool = False
    name: str = ""

    def __call__(self, model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict[str, Any],
                 callback: Callback | None, seed: int | None) -> torch.Tensor:
        return self.sampler_function(model, x, sigmas, extra_args=extra_args, callback=callback, seed=seed,
                                     **self.extra_options)


def sampler_object(name: str, options: Mapping[str, Any] | None = None) -> SamplerObject:
    """The registered sampler `name` with `options` bound (ComfyUI's `sampler_object` / `ksampler`);
    an unknown name raises ValueError."""
    return SamplerObject(get_sampler(name), MappingProxyType(dict(options or {})),
                         name in RANDOM_INPAINT_NOISE_SAMPLERS, name)


def custom_sampler(fn: SamplerFn, options: Mapping[str, Any] | None = None, name: str = "") -> SamplerObject:
    """A sampler function that is not in the registry (ComfyUI's `KSAMPLER(fn, extra_options)`)."""
    return SamplerObject(fn, MappingProxyType(dict(options or {})), False, name or fn.__name__)


# -- NOISE -------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RandomNoise:
    """Seeded initial noise, identical to the KSampler's (`prepare_noise`, honouring the latent's batch_index)."""

    seed: int

    def generate_noise(self, latent: Mapping[str, Any]) -> torch.Tensor:
        return prepare_noise(latent["samples"], self.seed, latent.get("batch_index"))


@dataclass(frozen=True)
class EmptyNoise:
    """No initial noise: zeros shaped like the latent (its seed 0 still seeds the sampler's own noise)."""

    seed: int = 0

    def generate_noise(self, latent: Mapping[str, Any]) -> torch.Tensor:
        samples = latent["samples"]
        return torch.zeros(samples.shape, dtype=samples.dtype, layout=samples.layout, device="cpu")


# -- samplers only reachable through custom-sampling nodes ----------------------------------------------------------
@torch.no_grad()
def sample_lcm_upscale(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                       extra_args: dict[str, Any] | None = None, callback: Callback | None = None,
                       noise_sampler: NoiseSampler | None = None, seed: int | None = None,
                       total_upscale: float = 2.0, upscale_method: str = "bislerp",
                       upscale_steps: int | None = None) -> torch.Tensor:
    """LCM (Luo et al. 2023) that grows the latent to `total_upscale` times its size over the first steps:
    each step jumps to the x0 prediction, resizes it, and re-noises it to the next sigma.

    ComfyUI draws the re-noising from torch's global RNG; here it comes from a generator seeded with `seed`."""
    extra_args = extra_args or {}
    if upscale_steps is None:
        upscale_steps = max(len(sigmas) // 2 + 1, 2)
    else:
        upscale_steps = min(upscale_steps + 1, len(sigmas) + 1)
    upscales = np.linspace(1.0, total_upscale, upscale_steps)[1:]
    height, width = x.shape[-2:]
    generator = cpu_generator(0 if seed is None else seed)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in_like(x), **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if i < len(upscales):
            x = common_upscale(x, round(width * upscales[i]), round(height * upscales[i]), upscale_method, "disabled")
        if sigmas[i + 1] > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            x = x + sigmas[i + 1] * noise
    return x


@torch.no_grad()
def sample_euler_pp(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                    extra_args: dict[str, Any] | None = None, callback: Callback | None = None,
                    noise_sampler: NoiseSampler | None = None, seed: int | None = None) -> torch.Tensor:
    """SamplerEulerCFG++ "alternative": Euler whose derivative uses the unconditional noise estimate
    d = (uncond_x0 − x0 + x − x0) / sigma … i.e. to_d(x − x0 + uncond_x0, sigma, x0) (CFG++, Chung et al. 2024)."""
    capture = UncondCapture()
    extra_args = capture.install(extra_args)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in_like(x), **extra_args)
        d = to_d(x - denoised + capture.get(), sigmas[i], denoised)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x
