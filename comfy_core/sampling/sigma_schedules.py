"""Sigma schedules of ComfyUI's custom-sampling scheduler nodes, beyond the KSampler's named schedulers
(`schedulers.py`): k-diffusion's polyexponential / VP, the Laplace schedule, SD-Turbo's timesteps, the tabled
schedules (Align Your Steps, GITS, OptimalSteps) with their log-linear interpolation, LTX-Video's shifted schedule,
and the SIGMAS editing operations (split, flip, extend). All return float32 CPU tensors, as ComfyUI's nodes do.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from comfy_core.models.model_sampling import ModelSampling

from .schedulers import append_zero_sigma

# Align Your Steps (Sabour et al. 2024), NVIDIA's published 10-step noise levels
AYS_NOISE_LEVELS: dict[str, list[float]] = {
    "SD1": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092, 0.9642583904,
            0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
    "SDXL": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141, 0.5550693289,
             0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582],
    "SVD": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}

# OptimalSteps (Pei et al. 2025) searched schedules of flow models
OPTIMAL_STEPS_NOISE_LEVELS: dict[str, list[float]] = {
    "FLUX": [0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512, 0.2808, 0.001],
    "Wan": [1.0, 0.997, 0.995, 0.993, 0.991, 0.989, 0.987, 0.985, 0.98, 0.975, 0.973, 0.968, 0.96, 0.946, 0.927,
            0.902, 0.864, 0.776, 0.539, 0.208, 0.001],
    "Chroma": [0.992, 0.99, 0.988, 0.985, 0.982, 0.978, 0.973, 0.968, 0.961, 0.953, 0.943, 0.931, 0.917, 0.9, 0.881,
               0.858, 0.832, 0.802, 0.769, 0.731, 0.69, 0.646, 0.599, 0.55, 0.501, 0.451, 0.402, 0.355, 0.311, 0.27,
               0.232, 0.199, 0.169, 0.143, 0.12, 0.101, 0.084, 0.07, 0.058, 0.048, 0.001],
}


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """k-diffusion: log sigma polynomial (degree rho) in the step index, from sigma_max to sigma_min, then 0."""
    ramp = torch.linspace(1, 0, n) ** rho
    return append_zero_sigma(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def get_sigmas_vp(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> torch.Tensor:
    """k-diffusion: the continuous VP SDE schedule (Song et al. 2021) sigma(t) = sqrt(exp(beta_d t²/2 + beta_min t) − 1)
    for t from 1 to eps_s, then 0."""
    t = torch.linspace(1, eps_s, n)
    return append_zero_sigma(torch.sqrt(torch.special.expm1(beta_d * t**2 / 2 + beta_min * t)))


def get_sigmas_laplace(n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5) -> torch.Tensor:
    """Laplace schedule (Hang et al. 2024): log sigma at Laplace(mu, beta) quantiles, clamped to [sigma_min, sigma_max].
    As in ComfyUI there is no trailing 0: the run ends at the last (smallest) sigma."""
    epsilon = 1e-5  # keeps the log finite at the ends
    x = torch.linspace(0, 1, n)
    lmb = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + epsilon)
    return torch.clamp(torch.exp(lmb), min=sigma_min, max=sigma_max)


def sd_turbo_sigmas(ms: ModelSampling, steps: int, denoise: float) -> torch.Tensor:
    """SD-Turbo's schedule: `steps` of the timesteps 999, 899, ..., 99, skipping the first 10 − int(10·denoise)."""
    start = 10 - int(10 * denoise)
    timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start:start + steps]
    return append_zero_sigma(ms.sigma(timesteps).cpu())


def loglinear_interp(levels: Sequence[float], num_steps: int) -> np.ndarray:
    """A decreasing sequence resampled to `num_steps` points, linearly in log space over a uniform grid (float64)."""
    xs = np.linspace(0, 1, len(levels))
    ys = np.log(np.asarray(levels, dtype=np.float64)[::-1])
    new_ys = np.interp(np.linspace(0, 1, num_steps), xs, ys)
    return np.exp(new_ys)[::-1].copy()


def tabled_sigmas(levels: Sequence[float], steps: int, denoise: float, interpolate: bool = True) -> torch.Tensor:
    """The AYS / GITS / OptimalSteps node rule: the table (log-linearly resampled to steps + 1 points unless it has
    that many, or `interpolate` is False), its last round(steps·denoise) + 1 values, the final one set to 0."""
    if denoise <= 0.0:
        return torch.zeros([0])
    total_steps = round(steps * denoise) if denoise < 1.0 else steps
    sigmas: Sequence[float] | np.ndarray = list(levels)
    if interpolate and steps + 1 != len(sigmas):
        sigmas = loglinear_interp(sigmas, steps + 1)
    kept = [float(s) for s in sigmas[-(total_steps + 1):]]
    kept[-1] = 0.0
    return torch.tensor(kept, dtype=torch.float32)


def ltxv_sigmas(steps: int, max_shift: float, base_shift: float, stretch: bool, terminal: float,
                tokens: int = 4096) -> torch.Tensor:
    """LTX-Video's schedule: uniform t in [1, 0] time-shifted by a shift linear in the token count (base_shift at
    1024 tokens, max_shift at 4096), optionally stretched so that the last non-zero sigma equals `terminal`."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1)
    slope = (max_shift - base_shift) / (4096 - 1024)
    shift = tokens * slope + (base_shift - slope * 1024)  # ComfyUI's order of operations (same float rounding)
    sigmas = torch.where(sigmas != 0, math.exp(shift) / (math.exp(shift) + (1 / sigmas - 1)), 0)
    if stretch:
        nonzero = sigmas != 0
        one_minus = 1.0 - sigmas[nonzero]
        scale = one_minus[-1] / (1.0 - terminal)
        sigmas[nonzero] = 1.0 - (one_minus / scale)
    return sigmas


# -- SIGMAS operations -------------------------------------------------------------------------------------------------
def split_at_step(sigmas: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas[:step + 1], sigmas[step:]): the two halves share the sigma at `step`."""
    return sigmas[:step + 1], sigmas[step:]


def split_by_denoise(sigmas: torch.Tensor, denoise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The last round(steps·denoise) steps become the low half. As in ComfyUI, a split of 0 steps leaves the high
    half empty too (sigmas[:-0])."""
    steps = max(sigmas.shape[-1] - 1, 0)
    low_steps = round(steps * denoise)
    return sigmas[:-low_steps], sigmas[-(low_steps + 1):]


def flip_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Reversed (ascending, for unsampling); a leading 0 becomes 0.0001 so the first step has a noise level."""
    if len(sigmas) == 0:
        return sigmas
    flipped = sigmas.flip(0)
    if flipped[0] == 0:
        flipped[0] = 0.0001
    return flipped


_SPACINGS = {
    "linear": lambda x: x,
    "cosine": lambda x: torch.sin(x * math.pi / 2),
    "sine": lambda x: 1 - torch.cos(x * math.pi / 2),
}


def extend_intermediate(sigmas: torch.Tensor, steps: int, start_at_sigma: float, end_at_sigma: float,
                        spacing: str) -> torch.Tensor:
    """Insert steps − 1 extra sigmas into every interval whose upper sigma lies in [end_at_sigma, start_at_sigma]
    (start < 0 means no upper bound), spaced linearly or on a quarter cosine / sine."""
    if spacing not in _SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of: {', '.join(_SPACINGS)}")
    if start_at_sigma < 0:
        start_at_sigma = float("inf")
    fractions = _SPACINGS[spacing](torch.linspace(0, 1, steps + 1)[1:-1])
    extended: list = []
    for i in range(len(sigmas) - 1):
        current, following = sigmas[i], sigmas[i + 1]
        extended.append(current)
        if end_at_sigma <= current <= start_at_sigma:
            extended.extend((fractions * (following - current) + current).tolist())
    if len(sigmas) > 0:
        extended.append(sigmas[-1])
    return torch.tensor([float(s) for s in extended], dtype=torch.float32)
