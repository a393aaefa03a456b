"""Small host-side helpers shared by the extended samplers (multistep, stochastic, UniPC).

Step scalars are plain Python floats computed from one `sigmas.tolist()`, so a sampler never waits on the device
inside its loop; only the latents are tensors.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .common import Callback, UncondCapture  # noqa: F401  (Callback re-exported for the sampler modules)
from .noise import BrownianTreeNoiseSampler, NoiseSampler, default_noise_sampler


def s_in_like(x: torch.Tensor) -> torch.Tensor:
    """A ones vector of x's batch size: `sigma * s_in` is the per-row sigma batch the model expects."""
    return x.new_ones([x.shape[0]])


def require_distinct_steps(sig: list[float], sampler: str) -> None:
    """Reject a schedule with a zero-length step: these solvers divide by step sizes in lambda or sigma.

    (ComfyUI returns NaNs or fails inside a linear solve there; a clear error is better.)
    """
    for i in range(len(sig) - 1):
        if sig[i] == sig[i + 1]:
            raise ValueError(f"sampler {sampler!r} needs distinct consecutive sigmas; sigmas[{i}] == sigmas[{i + 1}]"
                             f" == {sig[i]}")


def ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral step: deterministic target and fresh-noise std.

    The host-float twin of `common.get_ancestral_step` (which works on 0-dim tensors).
    """
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2))
    return math.sqrt(sigma_to ** 2 - sigma_up ** 2), sigma_up


def make_default_noise_sampler(x: torch.Tensor, seed: int | None) -> NoiseSampler:
    """ComfyUI's default generator-backed noise sampler for x's shape (see `noise.default_noise_sampler`)."""
    return default_noise_sampler(x, seed)


def make_brownian_noise_sampler(x: torch.Tensor, sigmas: torch.Tensor, seed: int | None,
                                cpu: bool = True) -> NoiseSampler:
    """Brownian-tree noise over [smallest positive sigma, largest sigma], as ComfyUI's SDE samplers build it."""
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    return BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed, cpu=cpu)


def cfg_pp_model(model: Callable[..., torch.Tensor], extra_args: dict) -> tuple[dict, Callable[[], torch.Tensor]]:
    """Arrange for the model to expose the unconditional prediction of its latest call (CFG++ samplers).

    Returns the extra_args to call the model with (a post-CFG hook installed, cfg-1 shortcut disabled) and a getter
    for the uncond denoised prediction of the latest call.
    """
    capture = UncondCapture()
    return capture.install(extra_args), capture.get
