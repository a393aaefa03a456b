"""Stochastic exponential-integrator samplers: ER-SDE-Solver-3 and SEEDS-2/3 (SA-Solver is in `samplers_sa`).

Both families integrate the reverse SDE in half-log-SNR time lambda = log(alpha / sigma). For the discrete VP models
comfy-core runs (SD1.x, SD2.x, SDXL, eps or v prediction), in k-diffusion's VE sigma space alpha = 1 and
lambda = -log(sigma). Noise comes from ComfyUI's default generator-backed noise sampler seeded with the sampler seed,
so results match ComfyUI seed for seed. Step scalars are host floats (see `ext_base`).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .common import Callback, Denoiser, report, s_in_like
from .ext_base import require_distinct_steps
from .noise import NoiseSampler, default_noise_sampler


def _lam(sigma: float) -> float:
    """Half-log-SNR of a VE sigma (alpha = 1)."""
    return -math.log(sigma)


# ---------------------------------------------------------------------------------------------------------------------
# ER-SDE-Solver-3


def _er_noise_scaler(lam: torch.Tensor | float) -> Any:
    """The default ER-SDE noise scale function s(l) = l * (exp(l^0.3) + 10)."""
    if isinstance(lam, torch.Tensor):
        return lam * ((lam ** 0.3).exp() + 10.0)
    return lam * (math.exp(lam ** 0.3) + 10.0)


def _er_integrals(lam_s: float, lam_t: float, scaler: Callable, points: int = 200) -> tuple[float, float]:
    """Left Riemann sums (`points` nodes from lam_t up) of 1/s(l) and (l - lam_s)/s(l) over [lam_t, lam_s]."""
    step = (lam_s - lam_t) / points
    pos = lam_t + torch.arange(points, dtype=torch.float64) * step
    scaled = scaler(pos)
    return float(torch.sum(1 / scaled) * step), float(torch.sum((pos - lam_s) / scaled) * step)


def sample_er_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                  callback: Callback | None = None, noise_sampler: NoiseSampler | None = None, seed: int | None = None,
                  s_noise: float = 1.0, noise_scaler: Callable | None = None, max_stage: int = 3) -> torch.Tensor:
    """Extended reverse-time SDE solver, VP ER-SDE-Solver-3 (arXiv:2309.06169)."""
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, seed) if noise_sampler is None else noise_sampler
    scaler = _er_noise_scaler if noise_scaler is None else noise_scaler
    sig = sigmas.tolist()
    require_distinct_steps(sig, "er_sde")
    s_in = s_in_like(x)
    er = sig  # er_lambda = sigma / alpha = sigma for VE sigmas
    old_denoised = old_denoised_d = None
    for i in range(len(sig) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        stage = min(max_stage, i + 1)
        if sig[i + 1] == 0:
            x = denoised
            continue
        lam_s, lam_t = er[i], er[i + 1]
        r = float(scaler(lam_t)) / float(scaler(lam_s))
        x = r * x + (1 - r) * denoised  # stage 1: exponential Euler
        if stage >= 2:
            dt = lam_t - lam_s
            s1, s2 = _er_integrals(lam_s, lam_t, scaler)
            denoised_d = (denoised - old_denoised) / (lam_s - er[i - 1])
            x = x + (dt + s1 * float(scaler(lam_t))) * denoised_d
            if stage >= 3:
                denoised_u = (denoised_d - old_denoised_d) / ((lam_s - er[i - 2]) / 2)
                x = x + (dt ** 2 / 2 + s2 * float(scaler(lam_t))) * denoised_u
            old_denoised_d = denoised_d
        if s_noise > 0:
            std = math.sqrt(max(lam_t ** 2 - lam_s ** 2 * r ** 2, 0.0))
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * (s_noise * std)
        old_denoised = denoised
    return x


# ---------------------------------------------------------------------------------------------------------------------
# SEEDS


def _ei_phi_1(z: float) -> float:
    """z * phi_1(z) = e^z - 1."""
    return math.expm1(z)


def _ei_phi_2(z: float) -> float:
    """z * phi_2(z) = (e^z - 1 - z) / z."""
    return (math.expm1(z) - z) / z


class _CarriedNoise:
    """One Brownian path across the sub-steps of a SEEDS step: at each sub-step the noise so far decays by e^decay
    and a fresh draw tops the variance back up to one."""

    def __init__(self, noise_sampler, s_noise: float):
        self.noise_sampler, self.s_noise, self.value = noise_sampler, s_noise, None

    def advance(self, sigma_from: Any, sigma_to: Any, decay: float) -> torch.Tensor:
        fresh = math.sqrt(-math.expm1(2 * decay)) * self.noise_sampler(sigma_from, sigma_to)
        self.value = fresh if self.value is None else self.value * math.exp(decay) + fresh
        return self.value


def _seeds2_step(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, i: int, sig: list[float], s_in: torch.Tensor,
                 extra_args: dict, denoised: torch.Tensor, noise: _CarriedNoise | None, eta: float,
                 r: float) -> torch.Tensor:
    """SEEDS-2 step: exponential Euler to lambda_s + r h, then a step to lambda_t on a mix of both x0 estimates."""
    sigma_s, sigma_t = sig[i], sig[i + 1]
    lam_s = _lam(sigma_s)
    h = _lam(sigma_t) - lam_s
    h_eta = h * (eta + 1)
    sigma_1 = math.exp(-(lam_s + r * h))
    x_1 = (sigma_1 / sigma_s * math.exp(-r * h * eta)) * x - _ei_phi_1(-r * h_eta) * denoised
    if noise is not None:
        x_1 = x_1 + noise.advance(sigmas[i], sigma_1, -r * h * eta) * (sigma_1 * noise.s_noise)
    denoised_1 = model(x_1, sigma_1 * s_in, **extra_args)
    mixed = torch.lerp(denoised, denoised_1, 1 / (2 * r))
    x = (sigma_t / sigma_s * math.exp(-h * eta)) * x - _ei_phi_1(-h_eta) * mixed
    if noise is not None:
        x = x + noise.advance(sigma_1, sigmas[i + 1], (r - 1) * h * eta) * (sigma_t * noise.s_noise)
    return x


def _seeds3_step(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, i: int, sig: list[float], s_in: torch.Tensor,
                 extra_args: dict, denoised: torch.Tensor, noise: _CarriedNoise | None, eta: float, r_1: float,
                 r_2: float) -> torch.Tensor:
    """SEEDS-3 step: stages at lambda_s + r_1 h and lambda_s + r_2 h, phi_2 corrections on the stage estimates."""
    sigma_s, sigma_t = sig[i], sig[i + 1]
    lam_s = _lam(sigma_s)
    h = _lam(sigma_t) - lam_s
    h_eta = h * (eta + 1)
    sigma_1, sigma_2 = math.exp(-(lam_s + r_1 * h)), math.exp(-(lam_s + r_2 * h))
    x_1 = (sigma_1 / sigma_s * math.exp(-r_1 * h * eta)) * x - _ei_phi_1(-r_1 * h_eta) * denoised
    if noise is not None:
        x_1 = x_1 + noise.advance(sigmas[i], sigma_1, -r_1 * h * eta) * (sigma_1 * noise.s_noise)
    denoised_1 = model(x_1, sigma_1 * s_in, **extra_args)
    a_2 = r_2 / r_1 * _ei_phi_2(-r_2 * h_eta)
    a_1 = _ei_phi_1(-r_2 * h_eta) - a_2
    x_2 = (sigma_2 / sigma_s * math.exp(-r_2 * h * eta)) * x - (a_1 * denoised + a_2 * denoised_1)
    if noise is not None:
        x_2 = x_2 + noise.advance(sigma_1, sigma_2, (r_1 - r_2) * h * eta) * (sigma_2 * noise.s_noise)
    denoised_2 = model(x_2, sigma_2 * s_in, **extra_args)
    b_3 = _ei_phi_2(-h_eta) / r_2
    b_1 = _ei_phi_1(-h_eta) - b_3
    x = (sigma_t / sigma_s * math.exp(-h * eta)) * x - (b_1 * denoised + b_3 * denoised_2)
    if noise is not None:
        x = x + noise.advance(sigma_2, sigmas[i + 1], (r_2 - 1) * h * eta) * (sigma_t * noise.s_noise)
    return x


def _seeds(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None, callback: Callback | None,
           noise_sampler, seed: int | None, eta: float, s_noise: float, rs: tuple[float, ...]) -> torch.Tensor:
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, seed) if noise_sampler is None else noise_sampler
    sig = sigmas.tolist()
    if len(rs) > 1:  # SEEDS-3 divides by h through phi_2
        require_distinct_steps(sig, "seeds_3")
    s_in = s_in_like(x)
    for i in range(len(sig) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sig[i + 1] == 0:
            x = denoised
            continue
        noise = _CarriedNoise(noise_sampler, s_noise) if eta > 0 and s_noise > 0 else None
        step = _seeds2_step if len(rs) == 1 else _seeds3_step
        x = step(model, x, sigmas, i, sig, s_in, extra_args, denoised, noise, eta, *rs)
    return x


def sample_seeds_2(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                   callback: Callback | None = None, noise_sampler: NoiseSampler | None = None, seed: int | None = None,
                   eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5) -> torch.Tensor:
    """SEEDS-2: stochastic explicit exponential derivative-free solver, 2 stages (arXiv:2305.14267)."""
    return _seeds(model, x, sigmas, extra_args, callback, noise_sampler, seed, eta, s_noise, (r,))


def sample_seeds_3(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                   callback: Callback | None = None, noise_sampler: NoiseSampler | None = None, seed: int | None = None,
                   eta: float = 1.0, s_noise: float = 1.0, r_1: float = 1.0 / 3, r_2: float = 2.0 / 3) -> torch.Tensor:
    """SEEDS-3: stochastic explicit exponential derivative-free solver, 3 stages (arXiv:2305.14267)."""
    return _seeds(model, x, sigmas, extra_args, callback, noise_sampler, seed, eta, s_noise, (r_1, r_2))


SAMPLERS = {
    "er_sde": sample_er_sde,
    "seeds_2": sample_seeds_2,
    "seeds_3": sample_seeds_3,
}
