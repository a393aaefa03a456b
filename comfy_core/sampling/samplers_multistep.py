"""Multistep samplers: DPM-Solver++(3M) SDE, iPNDM, DEIS, RES multistep and gradient estimation.

Each sampler reuses the denoised predictions of earlier steps instead of spending extra model calls, so all of them
make exactly one model call per step. Conventions follow the k-diffusion sigma parameterisation used everywhere in
`comfy_core.sampling`: `x = x0 + sigma * eps`, `model(x, sigma * s_in, **extra_args)` returns the (CFG-combined)
denoised prediction, and the last sigma of a full schedule is 0.

Step scalars are computed on the host from one `sigmas.tolist()` so that no step waits on the device; tensors only
carry the latents.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .common import Callback, Denoiser, UncondCapture, report, s_in_like, weighted_sum
from .ext_base import ancestral_step, require_distinct_steps
from .noise import NoiseSampler, brownian_noise_sampler, default_noise_sampler

# ---------------------------------------------------------------------------------------------------------------------
# DPM-Solver++(3M) SDE


def sample_dpmpp_3m_sde(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                        callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
                        seed: int | None = None, eta: float = 1.0, s_noise: float = 1.0,
                        brownian_on_cpu: bool = True) -> torch.Tensor:
    """DPM-Solver++(3M) SDE: third-order multistep data-prediction solver with SDE noise (arXiv:2211.01095)."""
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    if noise_sampler is None:
        noise_sampler = brownian_noise_sampler(x, sigmas, seed, cpu=brownian_on_cpu)
    sig = sigmas.tolist()
    require_distinct_steps(sig, "dpmpp_3m_sde")
    s_in = s_in_like(x)
    lam = [-math.log(s) if s > 0 else math.inf for s in sig]  # half log-SNR of an EPS/V model
    hist: list[tuple[torch.Tensor, float]] = []  # (denoised, h) of the previous steps, newest first
    for i in range(len(sig) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sig[i + 1] == 0:
            x = denoised  # final denoising step
            continue
        h = lam[i + 1] - lam[i]
        h_eta = h * (eta + 1)
        alpha_t = sig[i + 1] * math.exp(lam[i + 1])
        x = (sig[i + 1] / sig[i] * math.exp(-h * eta)) * x + (alpha_t * -math.expm1(-h_eta)) * denoised
        phi_2 = math.expm1(-h_eta) / h_eta + 1
        if len(hist) >= 2:
            (d_1, h_1), (d_2, h_2) = hist[0], hist[1]
            r0, r1 = h_1 / h, h_2 / h
            d1_0 = (denoised - d_1) / r0
            d1_1 = (d_1 - d_2) / r1
            d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi_3 = phi_2 / h_eta - 0.5
            x = x + (alpha_t * phi_2) * d1 - (alpha_t * phi_3) * d2
        elif hist:
            d_1, h_1 = hist[0]
            x = x + (alpha_t * phi_2) * ((denoised - d_1) / (h_1 / h))
        if eta > 0 and s_noise > 0:
            scale = sig[i + 1] * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * scale
        hist = [(denoised, h)] + hist[:1]
    return x


def sample_dpmpp_3m_sde_gpu(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """DPM-Solver++(3M) SDE whose Brownian tree lives on x's device (arXiv:2211.01095)."""
    return sample_dpmpp_3m_sde(model, x, sigmas, brownian_on_cpu=False, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# iPNDM: Adams-Bashforth on the probability-flow ODE in sigma time


def _ipndm_fixed_weights(order: int, *_: float) -> list[float]:
    """Classic Adams-Bashforth weights (equal steps) for derivatives newest first."""
    table = {1: [1.0], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    return table[order]


def _ipndm_variable_weights(order: int, h0: float, h1: float = 0.0, h2: float = 0.0, h3: float = 0.0) -> list[float]:
    """Adams-Bashforth weights for variable steps (h0 = current step, h1.. = earlier steps), newest first.

    These are the iPNDM-v coefficients of Zhou et al.'s diff-solvers, expressed through step ratios.
    """
    if order == 1:
        return [1.0]
    q = h0 / h1
    w = [1 + q / 2, -q / 2]
    if order == 2:
        return w
    t1 = (1 - h0 / (3 * (h0 + h1)) * (h0 * (h0 + h1)) / (h1 * (h1 + h2))) / 2
    w = [w[0] + t1, w[1] - (1 + h1 / h2) * t1, t1 * h1 / h2]
    if order == 3:
        return w
    s01, s012 = h0 + h1, h0 + h1 + h2
    t2 = ((1 - h0 / (3 * s01)) / 2 + (1 - h0 / (2 * s01)) * h0 / (6 * s012)) \
        * (h0 * s01 * s012) / (h1 * (h1 + h2) * (h1 + h2 + h3))
    g = h1 * (h1 + h2) / (h2 * (h2 + h3))
    return [w[0] + t2, w[1] - (1 + h1 / h2 + g) * t2, w[2] + (h1 / h2 + g * (1 + h2 / h3)) * t2, -t2 * g * h1 / h2]


def _ipndm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None, callback: Callback | None,
           max_order: int, variable: bool) -> torch.Tensor:
    extra_args = {} if extra_args is None else extra_args
    sig = sigmas.tolist()
    if variable:  # the variable-step weights divide by earlier step sizes
        require_distinct_steps(sig, "ipndm_v")
    s_in = s_in_like(x)
    ds: list[torch.Tensor] = []  # derivatives of earlier steps, newest first
    for i in range(len(sig) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = (x - denoised) / sigmas[i]
        order = min(max_order, i + 1)
        dt = sig[i + 1] - sig[i]
        if sig[i + 1] == 0:
            x = denoised
        elif variable:
            steps = [sig[i + 1 - k] - sig[i - k] for k in range(order)]  # h0, h1, ...
            x = x + dt * weighted_sum(_ipndm_variable_weights(order, *steps), [d] + ds)
        else:
            x = x + dt * weighted_sum(_ipndm_fixed_weights(order), [d] + ds)
        ds = ([d] + ds)[: max_order - 1]
    return x


def sample_ipndm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                 callback: Callback | None = None, noise_sampler: NoiseSampler | None = None, seed: int | None = None,
                 max_order: int = 4) -> torch.Tensor:
    """Improved PNDM: Adams-Bashforth up to 4th order with equal-step weights (arXiv:2204.13902, 2202.09778)."""
    return _ipndm(model, x, sigmas, extra_args, callback, max_order, variable=False)


def sample_ipndm_v(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                   callback: Callback | None = None, noise_sampler: NoiseSampler | None = None, seed: int | None = None,
                   max_order: int = 4) -> torch.Tensor:
    """iPNDM with variable-step Adams-Bashforth weights (arXiv:2204.13902, 2202.09778)."""
    return _ipndm(model, x, sigmas, extra_args, callback, max_order, variable=True)


# ---------------------------------------------------------------------------------------------------------------------
# DEIS (time-AB, "tab" mode)

# DEIS maps sigmas to the time of an EDM-style VP SDE spanning sigma 0.002..80 with eps_s = 1e-3.
_DEIS_SIGMA_MIN, _DEIS_SIGMA_MAX, _DEIS_EPS_S, _DEIS_QUAD_POINTS = 0.002, 80.0, 1e-3, 10000


def _deis_vp_times(sigmas: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """sigma -> VP time t, plus (beta_0, beta_1) of the linear VP schedule (float64)."""
    smin = torch.tensor(_DEIS_SIGMA_MIN, dtype=torch.float32).double()
    smax = torch.tensor(_DEIS_SIGMA_MAX, dtype=torch.float32).double()
    beta_d = 2 * (torch.log(smin ** 2 + 1) / _DEIS_EPS_S - torch.log(smax ** 2 + 1)) / (_DEIS_EPS_S - 1)
    beta_min = torch.log(smax ** 2 + 1) - 0.5 * beta_d
    s = sigmas.detach().cpu().double()
    t = (torch.sqrt(beta_min ** 2 + 2 * beta_d * torch.log(s ** 2 + 1)) - beta_min) / beta_d
    return t, float(beta_min), float(beta_d + beta_min)


def deis_coefficients(sigmas: torch.Tensor, max_order: int = 3) -> list[list[float]]:
    """Per-step DEIS weights for [d_i, d_{i-1}, ...]: integral of dsigma/dt times the Lagrange basis in VP time.

    The integral uses the N-point rectangle rule of the reference implementation (linspace over [t_i, t_{i+1}]
    including both ends, times (t_{i+1} - t_i) / N), which ComfyUI's numbers depend on.
    """
    t, b0, b1 = _deis_vp_times(sigmas)
    coeffs: list[list[float]] = []
    for i in range(len(t) - 1):
        order = min(i + 1, max_order)
        if order == 1:
            coeffs.append([])
            continue
        taus = torch.linspace(float(t[i]), float(t[i + 1]), _DEIS_QUAD_POINTS, dtype=torch.float64)
        dtau = (t[i + 1] - t[i]) / _DEIS_QUAD_POINTS
        alpha_bar = torch.exp(-0.5 * taus ** 2 * (b1 - b0) - taus * b0)
        dlog_alpha = -(taus * (b1 - b0) + b0)
        dsigma_dt = -0.5 * dlog_alpha / torch.sqrt(alpha_bar * (1 - alpha_bar))
        nodes = [t[i - k] for k in range(order)]
        row = []
        for j in range(order):
            basis = torch.ones_like(taus)
            for k in range(order):
                if k != j:
                    basis = basis * (taus - nodes[k]) / (nodes[j] - nodes[k])
            row.append(float(torch.sum(dsigma_dt * basis) * dtau))
        coeffs.append(row)
    return coeffs


def sample_deis(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                callback: Callback | None = None, noise_sampler: NoiseSampler | None = None, seed: int | None = None,
                max_order: int = 3) -> torch.Tensor:
    """DEIS time-AB multistep sampler (arXiv:2204.13902)."""
    extra_args = {} if extra_args is None else extra_args
    sig = sigmas.tolist()
    require_distinct_steps(sig, "deis")
    s_in = s_in_like(x)
    coeffs = deis_coefficients(sigmas, max_order)
    ds: list[torch.Tensor] = []  # newest first
    for i in range(len(sig) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = (x - denoised) / sigmas[i]
        order = 1 if sig[i + 1] <= 0 else min(max_order, i + 1)
        if order == 1:
            x = x + (sig[i + 1] - sig[i]) * d
        else:
            x = x + weighted_sum(coeffs[i], [d] + ds)
        ds = ([d] + ds)[: max_order - 1]
    return x


# ---------------------------------------------------------------------------------------------------------------------
# RES multistep (+ ancestral, + CFG++)


def _phi_1(z: float) -> float:
    return math.expm1(z) / z


def _phi_2(z: float) -> float:
    return (_phi_1(z) - 1.0) / z


def _res_multistep(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None,
                   callback: Callback | None, noise_sampler, seed: int | None, eta: float, s_noise: float,
                   cfg_pp: bool) -> torch.Tensor:
    """Second-order exponential multistep step of RES in log-sigma time, with optional ancestral noise and CFG++."""
    extra_args = {} if extra_args is None else extra_args
    capture = UncondCapture()
    if cfg_pp:
        extra_args = capture.install(extra_args)
    if noise_sampler is None and eta > 0:
        noise_sampler = default_noise_sampler(x, seed)
    sig = sigmas.tolist()
    s_in = s_in_like(x)
    old_denoised, old_sigma_down = None, None
    for i in range(len(sig) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        guide = capture.get() if cfg_pp else denoised  # the prediction the solver integrates
        sigma_down, sigma_up = ancestral_step(sig[i], sig[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0 or old_denoised is None:
            if cfg_pp:  # Euler step of the unconditional ODE, restarted from the guided x0
                x = denoised + ((x - guide) / sigmas[i]) * sigma_down
            else:
                x = x + ((x - denoised) / sigmas[i]) * (sigma_down - sig[i])
        else:
            t, t_next = -math.log(sig[i]), -math.log(sigma_down)
            t_old, t_prev = -math.log(old_sigma_down), -math.log(sig[i - 1])
            h = t_next - t
            b1, b2 = _res_weights(h, t_prev - t_old)
            if cfg_pp:
                x = x + (denoised - guide)
            x = math.exp(-h) * x + h * (b1 * guide + b2 * old_denoised)
        if sig[i + 1] > 0 and sigma_up > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * (s_noise * sigma_up)
        old_denoised, old_sigma_down = guide, sigma_down
    return x


def _res_weights(h: float, h_old: float) -> tuple[float, float]:
    """RES second-order weights b1 = phi1(-h) - phi2(-h)/c2, b2 = phi2(-h)/c2 with c2 = h_old / h.

    A zero step leaves x unchanged (both 0, as ComfyUI's nan_to_num gives); a zero previous step falls back to
    the first-order exponential step instead of dividing by zero.
    """
    if h == 0:
        return 0.0, 0.0
    p1, p2 = _phi_1(-h), _phi_2(-h)
    if h_old == 0:
        return p1, 0.0
    c2 = h_old / h
    return p1 - p2 / c2, p2 / c2


def sample_res_multistep(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                         callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
                         seed: int | None = None, s_noise: float = 1.0) -> torch.Tensor:
    """RES second-order multistep exponential integrator (arXiv:2308.02157)."""
    return _res_multistep(model, x, sigmas, extra_args, callback, noise_sampler, seed, 0.0, s_noise, False)


def sample_res_multistep_cfg_pp(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                                extra_args: dict | None = None, callback: Callback | None = None,
                                noise_sampler: NoiseSampler | None = None, seed: int | None = None,
                                s_noise: float = 1.0) -> torch.Tensor:
    """RES multistep with CFG++ manifold-constrained guidance (arXiv:2308.02157, 2406.08070)."""
    return _res_multistep(model, x, sigmas, extra_args, callback, noise_sampler, seed, 0.0, s_noise, True)


def sample_res_multistep_ancestral(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                                   extra_args: dict | None = None, callback: Callback | None = None,
                                   noise_sampler: NoiseSampler | None = None, seed: int | None = None, eta: float = 1.0,
                                   s_noise: float = 1.0) -> torch.Tensor:
    """RES multistep with ancestral noise injection (arXiv:2308.02157)."""
    return _res_multistep(model, x, sigmas, extra_args, callback, noise_sampler, seed, eta, s_noise, False)


def sample_res_multistep_ancestral_cfg_pp(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                                          extra_args: dict | None = None, callback: Callback | None = None,
                                          noise_sampler: NoiseSampler | None = None, seed: int | None = None,
                                          eta: float = 1.0, s_noise: float = 1.0) -> torch.Tensor:
    """Ancestral RES multistep with CFG++ (arXiv:2308.02157, 2406.08070)."""
    return _res_multistep(model, x, sigmas, extra_args, callback, noise_sampler, seed, eta, s_noise, True)


# ---------------------------------------------------------------------------------------------------------------------
# Gradient estimation


def _gradient_estimation(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None,
                         callback: Callback | None, ge_gamma: float, cfg_pp: bool) -> torch.Tensor:
    extra_args = {} if extra_args is None else extra_args
    capture = UncondCapture()
    if cfg_pp:
        extra_args = capture.install(extra_args)
    sig = sigmas.tolist()
    s_in = s_in_like(x)
    old_d = None
    for i in range(len(sig) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - (capture.get() if cfg_pp else denoised)) / sigmas[i]
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        dt = sig[i + 1] - sig[i]
        if sig[i + 1] == 0:
            x = denoised
        else:
            x = denoised + d * sig[i + 1] if cfg_pp else x + d * dt
            if old_d is not None:  # extrapolate the derivative from the last two (Euler + gamma-momentum)
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


def sample_gradient_estimation(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                               extra_args: dict | None = None, callback: Callback | None = None,
                               noise_sampler: NoiseSampler | None = None, seed: int | None = None,
                               ge_gamma: float = 2.0) -> torch.Tensor:
    """Gradient-estimation sampler: Euler with a denoiser-error momentum term (arXiv:2306.04848)."""
    return _gradient_estimation(model, x, sigmas, extra_args, callback, ge_gamma, False)


def sample_gradient_estimation_cfg_pp(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                                      extra_args: dict | None = None, callback: Callback | None = None,
                                      noise_sampler: NoiseSampler | None = None, seed: int | None = None,
                                      ge_gamma: float = 2.0) -> torch.Tensor:
    """Gradient-estimation sampler with CFG++ (arXiv:2306.04848, 2406.08070)."""
    return _gradient_estimation(model, x, sigmas, extra_args, callback, ge_gamma, True)


SAMPLERS = {
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": sample_dpmpp_3m_sde_gpu,
    "ipndm": sample_ipndm,
    "ipndm_v": sample_ipndm_v,
    "deis": sample_deis,
    "res_multistep": sample_res_multistep,
    "res_multistep_cfg_pp": sample_res_multistep_cfg_pp,
    "res_multistep_ancestral": sample_res_multistep_ancestral,
    "res_multistep_ancestral_cfg_pp": sample_res_multistep_ancestral_cfg_pp,
    "gradient_estimation": sample_gradient_estimation,
    "gradient_estimation_cfg_pp": sample_gradient_estimation_cfg_pp,
}
