"""DPM-Solver++ samplers (Lu et al. 2022, arXiv:2211.01095): 2S ancestral, SDE, 2M, 2M SDE, and their CFG++ forms.

Time variable t = -log(sigma) (= half-logSNR lambda for VE-space discrete models). All per-step scalars are host
0-dim tensors (see `common`); `alpha_t = sigma_t · exp(lambda_t)` is 1 up to rounding for these models and is kept
where ComfyUI computes it so the floats agree.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from comfy_core.kernels.sampler_step import cfg_dpmpp_2m_step
from comfy_core.sampling.common import (
    Callback, Denoiser, SamplerFn, UncondCapture, get_ancestral_step, guided_prediction, host_sigmas, report, s_in_like,
    to_d,
)
from comfy_core.sampling.common import sigma_from_t as _sigma
from comfy_core.sampling.common import t_from_sigma as _t
from comfy_core.sampling.noise import NoiseSampler, brownian_noise_sampler, default_noise_sampler


def _dpmpp_2s_step(model: Denoiser, x: torch.Tensor, sigma: torch.Tensor, sigma_down: torch.Tensor,
                   denoised: torch.Tensor, s_in: torch.Tensor, extra_args: dict[str, Any],
                   shift: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
    """DPM-Solver++(2S) from sigma to sigma_down through the midpoint in t (one more model call).

    CFG++ passes `shift`, the guidance offset added to x before each of the two exponential updates; it is read
    again after the midpoint call, as ComfyUI v0.3.64 does (its uncond hook state then holds the midpoint call's).
    """
    t, t_next = _t(sigma), _t(sigma_down)
    h = t_next - t
    s = t + 0.5 * h
    x_2 = (_sigma(s) / _sigma(t)) * (x if shift is None else x + shift()) - (-h * 0.5).expm1() * denoised
    denoised_2 = model(x_2, _sigma(s) * s_in, **extra_args)
    return (_sigma(t_next) / _sigma(t)) * (x if shift is None else x + shift()) - (-h).expm1() * denoised_2


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                              extra_args: dict[str, Any] | None = None, callback: Callback | None = None,
                              noise_sampler: NoiseSampler | None = None, seed: int | None = None, eta: float = 1.0,
                              s_noise: float = 1.0) -> torch.Tensor:
    """Ancestral sampling with DPM-Solver++(2S) single-step second-order steps."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x, seed=seed)
    sig, s_in = host_sigmas(sigmas), s_in_like(x)
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sig[i], sig[i + 1], eta=eta)
        report(callback, x, i, sig[i], sig[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sig[i], denoised) * (sigma_down - sig[i])
        else:
            x = _dpmpp_2s_step(model, x, sig[i], sigma_down, denoised, s_in, extra_args)
        if sig[i + 1] > 0:
            x = x + noise_sampler(sig[i], sig[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral_cfg_pp(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                                     extra_args: dict[str, Any] | None = None, callback: Callback | None = None,
                                     noise_sampler: NoiseSampler | None = None, seed: int | None = None,
                                     eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver++(2S) ancestral with CFG++ (Chung et al. 2024): x is shifted by the guidance (denoised - uncond)
    before each exponential step, and the final Euler step follows the uncond direction."""
    capture = UncondCapture()
    extra_args = capture.install(extra_args)
    noise_sampler = noise_sampler or default_noise_sampler(x, seed=seed)
    sig, s_in = host_sigmas(sigmas), s_in_like(x)
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in, **extra_args)
        uncond = capture.get()
        sigma_down, sigma_up = get_ancestral_step(sig[i], sig[i + 1], eta=eta)
        report(callback, x, i, sig[i], sig[i], denoised)
        if sigma_down == 0:
            x = denoised + to_d(x, sig[i], uncond) * sigma_down
        else:  # shift = denoised - the latest call's uncond (x is moved by the guidance before each update)
            x = _dpmpp_2s_step(model, x, sig[i], sigma_down, denoised, s_in, extra_args,
                               shift=lambda: denoised - capture.get())
        if sig[i + 1] > 0:
            x = x + noise_sampler(sig[i], sig[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                     extra_args: dict[str, Any] | None = None, callback: Callback | None = None,
                     noise_sampler: NoiseSampler | None = None, seed: int | None = None, eta: float = 1.0,
                     s_noise: float = 1.0, r: float = 0.5, cpu_tree: bool = True) -> torch.Tensor:
    """DPM-Solver++ (stochastic, 2 evaluations per step at lambda_s + r·h and lambda_t) with Brownian-tree noise."""
    if len(sigmas) <= 1:
        return x
    extra_args = extra_args or {}
    sig, s_in = host_sigmas(sigmas), s_in_like(x)
    noise_sampler = noise_sampler or brownian_noise_sampler(x, sig, seed, cpu_tree)
    fac = 1 / (2 * r)
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in, **extra_args)
        report(callback, x, i, sig[i], sig[i], denoised)
        if sig[i + 1] == 0:
            x = denoised
            continue
        lambda_s, lambda_t = _t(sig[i]), _t(sig[i + 1])
        h = lambda_t - lambda_s
        lambda_s_1 = lambda_s + r * h
        sigma_s_1 = _sigma(lambda_s_1)
        alpha_s = sig[i] * lambda_s.exp()
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sig[i + 1] * lambda_t.exp()
        # step 1: to lambda_s_1, partly ancestral
        sd, su = get_ancestral_step(lambda_s.neg().exp(), lambda_s_1.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        x_2 = (alpha_s_1 / alpha_s) * (-h_).exp() * x - alpha_s_1 * (-h_).expm1() * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + alpha_s_1 * noise_sampler(sig[i], sigma_s_1) * s_noise * su
        denoised_2 = model(x_2, sigma_s_1 * s_in, **extra_args)
        # step 2: to lambda_t with the r-weighted combination of both predictions
        sd, su = get_ancestral_step(lambda_s.neg().exp(), lambda_t.neg().exp(), eta)
        h_ = sd.log().neg() - lambda_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (alpha_t / alpha_s) * (-h_).exp() * x - alpha_t * (-h_).expm1() * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + alpha_t * noise_sampler(sig[i], sig[i + 1]) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_sde_gpu(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """`dpmpp_sde` with the Brownian tree on x's device (faster on GPU, not bit-identical to the CPU tree there)."""
    return sample_dpmpp_sde(model, x, sigmas, cpu_tree=False, **kwargs)


@torch.no_grad()
def sample_dpmpp_2m(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                    extra_args: dict[str, Any] | None = None, callback: Callback | None = None,
                    noise_sampler: NoiseSampler | None = None, seed: int | None = None) -> torch.Tensor:
    """DPM-Solver++(2M): second-order multistep using the previous step's denoised prediction (CFG fused in)."""
    extra_args = extra_args or {}
    sig, s_in = host_sigmas(sigmas), s_in_like(x)
    sig_f = sig.tolist()
    old_denoised = None
    for i in range(len(sig) - 1):
        p = guided_prediction(model, x, sig[i] * s_in, extra_args)
        step = cfg_dpmpp_2m_step(x, p.cond, p.uncond, p.cfg, sig_f[i], sig_f[i + 1], old_denoised,
                                 sig_f[i - 1] if i > 0 else None)
        report(callback, x, i, sig[i], sig[i], step.denoised)
        x, old_denoised = step.x, step.denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_cfg_pp(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                           extra_args: dict[str, Any] | None = None, callback: Callback | None = None,
                           noise_sampler: NoiseSampler | None = None, seed: int | None = None) -> torch.Tensor:
    """DPM-Solver++(2M) with CFG++ (Chung et al. 2024): the exponential decay acts on the uncond prediction."""
    capture = UncondCapture()
    extra_args = capture.install(extra_args)
    sig, s_in = host_sigmas(sigmas), s_in_like(x)
    old_uncond = None
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in, **extra_args)
        uncond = capture.get()
        report(callback, x, i, sig[i], sig[i], denoised)
        t, t_next = _t(sig[i]), _t(sig[i + 1])
        h = t_next - t
        decay = torch.exp(-h)
        if old_uncond is None or sig[i + 1] == 0:
            denoised_mix = -decay * uncond
        else:
            r = (t - _t(sig[i - 1])) / h
            denoised_mix = -decay * uncond - torch.expm1(-h) * (1 / (2 * r)) * (denoised - old_uncond)
        x = denoised + denoised_mix + decay * x
        old_uncond = uncond
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                        extra_args: dict[str, Any] | None = None, callback: Callback | None = None,
                        noise_sampler: NoiseSampler | None = None, seed: int | None = None, eta: float = 1.0,
                        s_noise: float = 1.0, solver_type: str = "midpoint", cpu_tree: bool = True) -> torch.Tensor:
    """DPM-Solver++(2M) SDE with Brownian-tree noise; `solver_type` "midpoint" or "heun" for the 2nd-order term."""
    if len(sigmas) <= 1:
        return x
    if solver_type not in ("heun", "midpoint"):
        raise ValueError(f"solver_type must be 'heun' or 'midpoint', got {solver_type!r}")
    extra_args = extra_args or {}
    sig, s_in = host_sigmas(sigmas), s_in_like(x)
    noise_sampler = noise_sampler or brownian_noise_sampler(x, sig, seed, cpu_tree)
    old_denoised, h, h_last = None, None, None
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in, **extra_args)
        report(callback, x, i, sig[i], sig[i], denoised)
        if sig[i + 1] == 0:
            x = denoised
        else:
            lambda_s, lambda_t = _t(sig[i]), _t(sig[i + 1])
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sig[i + 1] * lambda_t.exp()
            phi_1 = (-h_eta).expm1().neg()
            x = sig[i + 1] / sig[i] * (-h * eta).exp() * x + alpha_t * phi_1 * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + alpha_t * (phi_1 / (-h_eta) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * alpha_t * phi_1 * (1 / r) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                noise_scale = sig[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
                x = x + noise_sampler(sig[i], sig[i + 1]) * noise_scale
        old_denoised, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde_gpu(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """`dpmpp_2m_sde` with the Brownian tree on x's device."""
    return sample_dpmpp_2m_sde(model, x, sigmas, cpu_tree=False, **kwargs)


@torch.no_grad()
def sample_dpmpp_2m_sde_heun(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """`dpmpp_2m_sde` with the Heun-type second-order correction."""
    kwargs.setdefault("solver_type", "heun")
    return sample_dpmpp_2m_sde(model, x, sigmas, **kwargs)


@torch.no_grad()
def sample_dpmpp_2m_sde_heun_gpu(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor,
                                 **kwargs: Any) -> torch.Tensor:
    """`dpmpp_2m_sde_heun` with the Brownian tree on x's device."""
    kwargs.setdefault("solver_type", "heun")
    return sample_dpmpp_2m_sde(model, x, sigmas, cpu_tree=False, **kwargs)


SAMPLERS: dict[str, SamplerFn] = {
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_2s_ancestral_cfg_pp": sample_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_sde_gpu": sample_dpmpp_sde_gpu,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_cfg_pp": sample_dpmpp_2m_cfg_pp,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": sample_dpmpp_2m_sde_gpu,
    "dpmpp_2m_sde_heun": sample_dpmpp_2m_sde_heun,
    "dpmpp_2m_sde_heun_gpu": sample_dpmpp_2m_sde_heun_gpu,
}
