"""The sampler registry (ComfyUI's 42 names) and the Karras-family samplers (Euler, Heun, DPM-2, LMS, DDPM, LCM).

Contract shared by every sampler, in k-diffusion's style:

    sample_x(model, x, sigmas, *, extra_args=None, callback=None, noise_sampler=None, seed=None, **options) -> x

* `model(x, sigma_batch, **extra_args)` returns the CFG-combined denoised prediction x0 (see `common.Denoiser`).
  `extra_args` goes to the model untouched (typically `{"model_options": {...}}` plus conds); samplers never mutate it.
* `x` is the already noise-scaled start (`ModelSampling.noise_scaling`), `sigmas` a 1-D descending schedule ending in
  0 (or not, for partial denoising). The result is in the same space; the caller applies `inverse_noise_scaling`.
* `seed` seeds the sampler's own noise (ancestral: `default_noise_sampler`; SDE: `BrownianTreeNoiseSampler`), the
  KSampler passes its seed as ComfyUI does. `noise_sampler` overrides that choice.
* `callback({"x", "i", "sigma", "sigma_hat", "denoised"})` after each model evaluation of a step.
* Fused guidance: euler, euler_ancestral and dpmpp_2m evaluate the model through `common.guided_prediction`, which
  uses the denoiser's optional `predict_guided` (cond/uncond/cfg before the combine) and otherwise `model(...)`; the
  update is always `comfy_core.kernels.sampler_step.cfg_*_step` (one Triton pass on CUDA, ComfyUI's float ops on CPU).
* CFG++ samplers (`*_cfg_pp`) need the unconditional prediction: they add a hook to
  `extra_args["model_options"]["sampler_post_cfg_function"]` and set `"disable_cfg1_optimization"` (ComfyUI's keys).
  The guidance code must run those hooks after the CFG combine as `denoised = fn(args)` with
  `args = {"denoised", "cond_denoised", "uncond_denoised", "cond_scale", "sigma", "input", "model_options", ...}`
  and must evaluate the uncond batch even at cfg 1 when the disable flag is set. See `common.with_post_cfg_function`.
* `ddim` is Euler; ComfyUI's only difference is the inpainting noise (`noise.inpaint_random_noise`, seed + 1), which
  the KSampler applies for names in `RANDOM_INPAINT_NOISE_SAMPLERS`.

Registry: `SAMPLERS` maps names to functions. It is built on first use from this module, `dpmpp.py`,
`dpm_solver.py` and every `comfy_core/sampling/samplers_*.py` module, each of which exports
`SAMPLERS: dict[str, SamplerFn]` (part B's multistep / UniPC / SA-Solver families land there).
"""
from __future__ import annotations

import functools
import importlib
import logging
import pkgutil
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from comfy_core.kernels.sampler_step import cfg_euler_ancestral_step, cfg_euler_step
from comfy_core.sampling import dpm_solver, dpmpp
from comfy_core.sampling.common import (  # noqa: F401  (re-exported helpers)
    DISABLE_CFG1_OPTIMIZATION, POST_CFG_FUNCTIONS, Callback, Denoiser, GuidedPrediction, SamplerFn, UncondCapture,
    ancestral_schedule, append_dims, get_ancestral_step, guided_prediction, host_sigmas, renoise, report, s_in_like,
    to_d, with_post_cfg_function,
)
from comfy_core.sampling.noise import (  # noqa: F401
    BrownianTreeNoiseSampler, NoiseSampler, default_noise_sampler,
)
from comfy_core.sampling.schedulers import SCHEDULER_NAMES  # noqa: F401

log = logging.getLogger(__name__)

KSAMPLER_NAMES: tuple[str, ...] = (
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
)
"""All 42 sampler names, in ComfyUI's order (the KSampler `sampler_name` choice list)."""

SAMPLER_NAMES = KSAMPLER_NAMES
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})
RANDOM_INPAINT_NOISE_SAMPLERS = frozenset({"ddim"})


# ---------------------------------------------------------------------------------------------------------------------
# Karras et al. (2022) "Elucidating the Design Space of Diffusion-Based Generative Models" family
# ---------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Churn:
    """Karras et al. (2022) Algorithm 2's stochastic churn: settings plus its noise (None when s_churn <= 0)."""

    s_churn: float
    s_tmin: float
    s_tmax: float
    s_noise: float
    noise: NoiseSampler | None

    @classmethod
    def make(cls, x: torch.Tensor, s_churn: float, s_tmin: float, s_tmax: float, s_noise: float,
             noise_sampler: NoiseSampler | None, seed: int | None) -> _Churn:
        # ComfyUI draws churn noise from torch's global RNG; we draw it from a seeded generator instead (reproducible).
        noise = (noise_sampler or default_noise_sampler(x, seed=seed)) if s_churn > 0 else None
        return cls(s_churn, s_tmin, s_tmax, s_noise, noise)

    def __call__(self, x: torch.Tensor, sig: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Lines 4-6: raise sigma_i to sigma_hat = sigma_i (1 + gamma) by adding fresh noise -> (sigma_hat, x)."""
        if self.s_churn <= 0:
            return sig[i], x
        gamma = min(self.s_churn / (len(sig) - 1), 2**0.5 - 1) if self.s_tmin <= sig[i] <= self.s_tmax else 0.0
        sigma_hat = sig[i] * (gamma + 1)
        if gamma > 0:
            assert self.noise is not None
            x = x + self.noise(sig[i], sigma_hat) * self.s_noise * (sigma_hat**2 - sig[i] ** 2) ** 0.5
        return sigma_hat, x


def _churned_derivative(model: Denoiser, x: torch.Tensor, sig: torch.Tensor, i: int, s_in: torch.Tensor,
                        extra_args: dict[str, Any], churn: _Churn,
                        callback: Callback | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Algorithm 2 lines 4-7 of step i: churn, evaluate D at sigma_hat, report -> (x, sigma_hat, d = dx/dsigma)."""
    sigma_hat, x = churn(x, sig, i)
    denoised = model(x, sigma_hat * s_in, **extra_args)
    d = to_d(x, sigma_hat, denoised)
    report(callback, x, i, sig[i], sigma_hat, denoised)
    return x, sigma_hat, d


@torch.no_grad()
def sample_euler(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict[str, Any] | None = None,
                 callback: Callback | None = None, noise_sampler: NoiseSampler | None = None, seed: int | None = None,
                 s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                 s_noise: float = 1.0) -> torch.Tensor:
    """Karras et al. (2022) Algorithm 2 with Euler steps; the CFG combine is fused into the update."""
    extra_args = extra_args or {}
    sig, s_in = host_sigmas(sigmas), s_in_like(x)
    sig_f = sig.tolist()
    churn = _Churn.make(x, s_churn, s_tmin, s_tmax, s_noise, noise_sampler, seed)
    for i in range(len(sig) - 1):
        sigma_hat, x = churn(x, sig, i)
        p = guided_prediction(model, x, sigma_hat * s_in, extra_args)
        step = cfg_euler_step(x, p.cond, p.uncond, p.cfg, float(sigma_hat), sig_f[i + 1],
                              write_denoised=callback is not None)
        report(callback, x, i, sig[i], sigma_hat, step.denoised)
        x = step.x
    return x


@torch.no_grad()
def sample_euler_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                           extra_args: dict[str, Any] | None = None, callback: Callback | None = None,
                           noise_sampler: NoiseSampler | None = None, seed: int | None = None, eta: float = 1.0,
                           s_noise: float = 1.0) -> torch.Tensor:
    """Ancestral sampling with Euler steps (Ho et al. 2020 / Karras et al. 2022 in VE form), CFG fused in."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x, seed=seed)
    sig, s_in = host_sigmas(sigmas), s_in_like(x)
    downs, ups = ancestral_schedule(sig, eta)
    sig_f, downs_f, ups_f = sig.tolist(), downs.tolist(), ups.tolist()
    for i, down in enumerate(downs_f):
        p = guided_prediction(model, x, sig[i] * s_in, extra_args)
        noise = noise_sampler(sig[i], sig[i + 1]) if down != 0 else None  # the last step draws none, as ComfyUI
        step = cfg_euler_ancestral_step(x, p.cond, p.uncond, p.cfg, sig_f[i], down, ups_f[i], noise,
                                        s_noise=s_noise, write_denoised=callback is not None)
        report(callback, x, i, sig[i], sig[i], step.denoised)
        x = step.x
    return x


@torch.no_grad()
def sample_euler_ancestral_cfg_pp(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                                  extra_args: dict[str, Any] | None = None, callback: Callback | None = None,
                                  noise_sampler: NoiseSampler | None = None, seed: int | None = None,
                                  eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """Euler ancestral with CFG++ (Chung et al. 2024): step along the *unconditional* noise direction."""
    capture = UncondCapture()
    extra_args = capture.install(extra_args)
    noise_sampler = noise_sampler or default_noise_sampler(x, seed=seed)
    sig, s_in = host_sigmas(sigmas), s_in_like(x)
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in, **extra_args)
        report(callback, x, i, sig[i], sig[i], denoised)
        if sig[i + 1] == 0:
            x = denoised
            continue
        # alpha_t = sigma_t * exp(half-logSNR_t), 1 up to rounding for VE models (kept for ComfyUI's exact floats)
        alpha_s = sig[i] * sig[i].log().neg().exp()
        alpha_t = sig[i + 1] * sig[i + 1].log().neg().exp()
        d = to_d(x, sig[i], alpha_s * capture.get())
        sigma_down, sigma_up = get_ancestral_step(sig[i] / alpha_s, sig[i + 1] / alpha_t, eta=eta)
        x = alpha_t * denoised + (alpha_t * sigma_down) * d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise_sampler(sig[i], sig[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_euler_cfg_pp(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                        extra_args: dict[str, Any] | None = None, callback: Callback | None = None,
                        noise_sampler: NoiseSampler | None = None, seed: int | None = None) -> torch.Tensor:
    """Euler with CFG++ (Chung et al. 2024): the deterministic (eta = 0) case of the ancestral variant."""
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, extra_args=extra_args, callback=callback,
                                         noise_sampler=noise_sampler, seed=seed, eta=0.0, s_noise=0.0)


@torch.no_grad()
def sample_heun(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict[str, Any] | None = None,
                callback: Callback | None = None, noise_sampler: NoiseSampler | None = None, seed: int | None = None,
                s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                s_noise: float = 1.0) -> torch.Tensor:
    """Karras et al. (2022) Algorithm 2 with Heun (trapezoidal) steps; Euler for the final step to sigma 0."""
    extra_args = extra_args or {}
    sig, s_in = host_sigmas(sigmas), s_in_like(x)
    churn = _Churn.make(x, s_churn, s_tmin, s_tmax, s_noise, noise_sampler, seed)
    for i in range(len(sig) - 1):
        x, sigma_hat, d = _churned_derivative(model, x, sig, i, s_in, extra_args, churn, callback)
        dt = sig[i + 1] - sigma_hat
        if sig[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sig[i + 1], model(x_2, sig[i + 1] * s_in, **extra_args))
            x = x + ((d + d_2) / 2) * dt
    return x


@torch.no_grad()
def sample_heunpp2(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                   extra_args: dict[str, Any] | None = None, callback: Callback | None = None,
                   noise_sampler: NoiseSampler | None = None, seed: int | None = None, s_churn: float = 0.0,
                   s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0) -> torch.Tensor:
    """Heun++ (Carzit's sd-webui-samplers-scheduler): a 3-evaluation weighted Heun step, Heun near the end."""
    extra_args = extra_args or {}
    sig, s_in = host_sigmas(sigmas), s_in_like(x)
    churn = _Churn.make(x, s_churn, s_tmin, s_tmax, s_noise, noise_sampler, seed)
    s_end = sig[-1]
    for i in range(len(sig) - 1):
        x, sigma_hat, d = _churned_derivative(model, x, sig, i, s_in, extra_args, churn, callback)
        dt = sig[i + 1] - sigma_hat
        if sig[i + 1] == s_end:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sig[i + 1], model(x_2, sig[i + 1] * s_in, **extra_args))
        if sig[i + 2] == s_end:
            w2 = sig[i + 1] / (2 * sig[0])
            x = x + (d * (1 - w2) + d_2 * w2) * dt
        else:
            x_3 = x_2 + d_2 * (sig[i + 2] - sig[i + 1])
            d_3 = to_d(x_3, sig[i + 2], model(x_3, sig[i + 2] * s_in, **extra_args))
            w = 3 * sig[0]
            w2, w3 = sig[i + 1] / w, sig[i + 2] / w
            w1 = 1 - w2 - w3
            x = x + (w1 * d + w2 * d_2 + w3 * d_3) * dt
    return x


@torch.no_grad()
def sample_dpm_2(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict[str, Any] | None = None,
                 callback: Callback | None = None, noise_sampler: NoiseSampler | None = None, seed: int | None = None,
                 s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                 s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver-2 (Lu et al. 2022) in Karras's Algorithm 2: midpoint in log-sigma."""
    extra_args = extra_args or {}
    sig, s_in = host_sigmas(sigmas), s_in_like(x)
    churn = _Churn.make(x, s_churn, s_tmin, s_tmax, s_noise, noise_sampler, seed)
    for i in range(len(sig) - 1):
        x, sigma_hat, d = _churned_derivative(model, x, sig, i, s_in, extra_args, churn, callback)
        if sig[i + 1] == 0:
            x = x + d * (sig[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sig[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
            x = x + d_2 * (sig[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                           extra_args: dict[str, Any] | None = None, callback: Callback | None = None,
                           noise_sampler: NoiseSampler | None = None, seed: int | None = None, eta: float = 1.0,
                           s_noise: float = 1.0) -> torch.Tensor:
    """Ancestral sampling with DPM-Solver-2 steps (Lu et al. 2022; Karras et al. 2022)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x, seed=seed)
    sig, s_in = host_sigmas(sigmas), s_in_like(x)
    downs, ups = ancestral_schedule(sig, eta)
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in, **extra_args)
        sigma_down = downs[i]
        report(callback, x, i, sig[i], sig[i], denoised)
        d = to_d(x, sig[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sig[i])
        else:
            sigma_mid = sig[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sig[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
            x = x + d_2 * (sigma_down - sig[i])
            x = x + noise_sampler(sig[i], sig[i + 1]) * s_noise * ups[i]
    return x


@functools.cache
def _gauss_legendre_4() -> tuple[np.ndarray, np.ndarray]:
    """4-point Gauss-Legendre rule on [-1, 1]: exact for polynomials of degree <= 7, i.e. LMS order <= 8."""
    nodes, weights = np.polynomial.legendre.leggauss(4)
    nodes.flags.writeable = weights.flags.writeable = False
    return nodes, weights


def _lms_coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    """∫_{t_i}^{t_{i+1}} of the j-th Lagrange basis polynomial on t_i, ..., t_{i-order+1} (exact Gauss-Legendre)."""
    nodes, weights = _gauss_legendre_4()
    a, b = float(t[i]), float(t[i + 1])
    tau = (b - a) / 2 * nodes + (a + b) / 2
    basis = np.ones_like(tau)
    for k in range(order):
        if k != j:
            basis *= (tau - t[i - k]) / (t[i - j] - t[i - k])
    return float((b - a) / 2 * np.dot(weights, basis))


@torch.no_grad()
def sample_lms(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict[str, Any] | None = None,
               callback: Callback | None = None, noise_sampler: NoiseSampler | None = None, seed: int | None = None,
               order: int = 4) -> torch.Tensor:
    """Linear multistep (Adams–Bashforth on the Karras ODE in sigma, k-diffusion's LMS), up to `order` past slopes."""
    if not 1 <= order <= 8:
        raise ValueError(f"lms order must be between 1 and 8, got {order}")
    extra_args = extra_args or {}
    sig, s_in = host_sigmas(sigmas), s_in_like(x)
    t = sig.double().numpy()
    ds: list[torch.Tensor] = []
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in, **extra_args)
        ds.append(to_d(x, sig[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        report(callback, x, i, sig[i], sig[i], denoised)
        if sig[i + 1] == 0:
            x = denoised
        else:
            cur_order = min(i + 1, order)
            coeffs = [_lms_coefficient(cur_order, t, i, j) for j in range(cur_order)]
            x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


def _ddpm_step(x: torch.Tensor, sigma: torch.Tensor, sigma_prev: torch.Tensor, eps: torch.Tensor,
               noise_sampler: NoiseSampler) -> torch.Tensor:
    """Ho et al. (2020) eq. 11 posterior mean plus sigma_t·z, in the VP (scaled) space; t -> t_prev."""
    alpha_cumprod = 1 / ((sigma * sigma) + 1)
    alpha_cumprod_prev = 1 / ((sigma_prev * sigma_prev) + 1)
    alpha = alpha_cumprod / alpha_cumprod_prev
    mu = (1.0 / alpha).sqrt() * (x - (1 - alpha) * eps / (1 - alpha_cumprod).sqrt())
    if sigma_prev > 0:
        mu = mu + ((1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)).sqrt() * noise_sampler(
            sigma, sigma_prev)
    return mu


@torch.no_grad()
def sample_ddpm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict[str, Any] | None = None,
                callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
                seed: int | None = None) -> torch.Tensor:
    """DDPM ancestral sampling (Ho et al. 2020) on the given sigma ladder."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x, seed=seed)
    sig, s_in = host_sigmas(sigmas), s_in_like(x)
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in, **extra_args)
        report(callback, x, i, sig[i], sig[i], denoised)
        x_vp = x / torch.sqrt(1.0 + sig[i] ** 2.0)  # VE -> VP scaling
        x = _ddpm_step(x_vp, sig[i], sig[i + 1], (x - denoised) / sig[i], noise_sampler)
        if sig[i + 1] != 0:
            x = x * torch.sqrt(1.0 + sig[i + 1] ** 2.0)
    return x


@torch.no_grad()
def sample_lcm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict[str, Any] | None = None,
               callback: Callback | None = None, noise_sampler: NoiseSampler | None = None, seed: int | None = None,
               s_noise: float = 1.0) -> torch.Tensor:
    """Latent Consistency Model multistep sampling (Luo et al. 2023): jump to x0, re-noise to the next sigma."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x, seed=seed)
    sig, s_in = host_sigmas(sigmas), s_in_like(x)
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in, **extra_args)
        report(callback, x, i, sig[i], sig[i], denoised)
        x = denoised
        if sig[i + 1] > 0:
            noise = noise_sampler(sig[i], sig[i + 1])
            if s_noise != 1.0:
                noise = noise * s_noise
            x = renoise(model, sig[i + 1], noise, x)
    return x


@torch.no_grad()
def sample_ddim(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict[str, Any] | None = None,
                callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
                seed: int | None = None) -> torch.Tensor:
    """DDIM (Song et al. 2021, eta = 0) is the Euler step of the probability-flow ODE in VE form."""
    return sample_euler(model, x, sigmas, extra_args=extra_args, callback=callback, noise_sampler=noise_sampler,
                        seed=seed)


_OWN_SAMPLERS: dict[str, SamplerFn] = {
    "euler": sample_euler,
    "euler_cfg_pp": sample_euler_cfg_pp,
    "euler_ancestral": sample_euler_ancestral,
    "euler_ancestral_cfg_pp": sample_euler_ancestral_cfg_pp,
    "heun": sample_heun,
    "heunpp2": sample_heunpp2,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    "ddim": sample_ddim,
}


# ---------------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------------
def _extension_modules() -> list[str]:
    """`comfy_core.sampling.samplers_*` modules present in the package (other sampler families register there)."""
    package = importlib.import_module("comfy_core.sampling")
    return sorted(f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                  if m.name.startswith("samplers_"))


@functools.cache
def _registry() -> Mapping[str, SamplerFn]:
    """Build the name -> sampler mapping once; later modules may not silently replace an existing name."""
    table: dict[str, SamplerFn] = {}
    sources: list[tuple[str, Mapping[str, SamplerFn]]] = [
        (__name__, _OWN_SAMPLERS), (dpmpp.__name__, dpmpp.SAMPLERS), (dpm_solver.__name__, dpm_solver.SAMPLERS)]
    for name in _extension_modules():
        module = importlib.import_module(name)  # a broken module must fail loudly, not vanish from the list
        sources.append((name, getattr(module, "SAMPLERS", {})))
    for origin, mapping in sources:
        for key, fn in mapping.items():
            if key not in KSAMPLER_NAMES:
                log.warning("sampler %r from %s is not a ComfyUI sampler name; registering it anyway", key, origin)
            if key in table and table[key] is not fn:
                raise RuntimeError(f"sampler {key!r} is defined twice (second time in {origin})")
            table[key] = fn
    missing = [n for n in KSAMPLER_NAMES if n not in table]
    if missing:
        log.debug("samplers not implemented yet: %s", ", ".join(missing))
    return MappingProxyType(table)


def __getattr__(name: str) -> Any:
    # `SAMPLERS` is built lazily so that sampler modules importing helpers from here never see a half-built registry.
    if name == "SAMPLERS":
        return _registry()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_sampler(name: str) -> SamplerFn:
    """The sampler function for a ComfyUI sampler name; unknown or not-yet-implemented names raise ValueError."""
    table = _registry()
    if name not in table:
        if name in KSAMPLER_NAMES:
            raise ValueError(f"sampler {name!r} is not implemented in this build")
        raise ValueError(f"unknown sampler {name!r}; expected one of: {', '.join(KSAMPLER_NAMES)}")
    return table[name]
