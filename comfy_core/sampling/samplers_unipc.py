"""UniPC: unified predictor-corrector multistep solver in data-prediction form (Zhao et al. 2023, arXiv:2302.04867).

Configured as ComfyUI runs it: multistep, order min(3, steps - 1), lower orders over the first and last steps, the
B(h) variants "bh1" (B(h) = h, `uni_pc`) and "bh2" (B(h) = e^h - 1, `uni_pc_bh2`), a corrector after every step but
the last (re-using the model call that starts the next step, so one call per step), and a schedule that ends at
sigma 0.001 instead of 0.

Like ComfyUI, the solver runs in VP space (x_vp = x / sqrt(1 + sigma^2)) with alpha, sigma_vp and lambda computed
in float32 from the VE sigma. That matters at the last timestep: 1 - alpha^2 = 1e-6 loses ~5 % in float32, which
moves the final lambda and sigma_vp, and ComfyUI's numbers carry that; `_vp_table` reproduces it.
"""
from __future__ import annotations

import math

import torch

from .common import Callback, Denoiser, report, s_in_like, weighted_sum
from .ext_base import require_distinct_steps
from .noise import NoiseSampler

_FINAL_SIGMA = 0.001  # UniPC stops here instead of at sigma 0 (its lambda would be infinite)


def _vp_table(sig: list[float]) -> tuple[list[float], list[float], list[float]]:
    """(alpha, sigma_vp, lambda) per VE sigma, computed in float32 the way ComfyUI's UniPC does."""
    s = torch.tensor(sig, dtype=torch.float32)
    log_alpha = 0.5 * torch.log(1 / (s * s + 1))
    alpha = torch.exp(log_alpha)
    one_minus = 1.0 - torch.exp(2.0 * log_alpha)
    sigma_vp = torch.sqrt(one_minus)
    lam = log_alpha - 0.5 * torch.log(one_minus)
    return alpha.tolist(), sigma_vp.tolist(), lam.tolist()


class _DataPrediction:
    """x0 prediction of a VP state at one timestep, through the VE denoiser (as ComfyUI's eps round trip)."""

    def __init__(self, model: Denoiser, s_in: torch.Tensor, extra_args: dict):
        self.model, self.s_in, self.extra_args = model, s_in, extra_args

    def __call__(self, x_vp: torch.Tensor, sigma: float, alpha: float, sigma_vp: float) -> torch.Tensor:
        x_ve = x_vp * math.sqrt(sigma * sigma + 1.0)
        eps = (x_ve - self.model(x_ve, sigma * self.s_in, **self.extra_args)) / sigma
        return (x_vp - sigma_vp * eps) / alpha


def unipc_coefficients(rks: list[float], h: float, variant: str) -> tuple[float, list[float] | None, list[float]]:
    """(B(h), predictor rhos, corrector rhos) for nodes at relative lambdas `rks` (the last one is 1).

    The rhos solve R rho = b with R[k] = rks^k and b_k = k! * h*phi_{k+1}(-h) / B(h), the order conditions of
    UniPC's B(h) family; orders 1 (corrector) and 2 (predictor) use the fixed 0.5 the paper recommends.
    """
    hh = -h
    h_phi_k = math.expm1(hh) / hh - 1
    if variant == "bh1":
        b_h = hh
    elif variant == "bh2":
        b_h = math.expm1(hh)
    else:
        raise ValueError(f"unknown UniPC variant {variant!r} (expected 'bh1' or 'bh2')")
    order = len(rks)
    b, factorial = [], 1
    for k in range(1, order + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r = torch.tensor([[rk ** k for rk in rks] for k in range(order)], dtype=torch.float64)
    bt = torch.tensor(b, dtype=torch.float64)
    rhos_p = None
    if order >= 2:
        rhos_p = [0.5] if order == 2 else torch.linalg.solve(r[:-1, :-1], bt[:-1]).tolist()
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(r, bt).tolist()
    return b_h, rhos_p, rhos_c


def _unipc_update(predict: _DataPrediction, x: torch.Tensor, history: list[tuple[int, torch.Tensor]], k: int,
                  vp: tuple[list[float], list[float], list[float]], sig: list[float], order: int, variant: str,
                  use_corrector: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """VP step from the newest history point to timestep k with `order` points; returns (x_k, x0 prediction at x_k)."""
    alpha, sigma_vp, lam = vp
    j0, d_0 = history[-1]
    h = lam[k] - lam[j0]
    rks, d1s = [], []
    for j, d_j in reversed(history[-order:-1]):  # newest first
        rk = (lam[j] - lam[j0]) / h
        rks.append(rk)
        d1s.append((d_j - d_0) / rk)
    b_h, rhos_p, rhos_c = unipc_coefficients(rks + [1.0], h, variant)
    # exponential Euler (DPM-Solver++ 1) in VP space
    x_base = (sigma_vp[k] / sigma_vp[j0]) * x - (alpha[k] * math.expm1(-h)) * d_0
    x_t = x_base
    if d1s:
        x_t = x_base - (alpha[k] * b_h) * weighted_sum(rhos_p, d1s)
    if not use_corrector:
        return x_t, None
    d_t = predict(x_t, sig[k], alpha[k], sigma_vp[k])
    corr = rhos_c[-1] * (d_t - d_0)
    if d1s:
        corr = corr + weighted_sum(rhos_c[:-1], d1s)
    return x_base - (alpha[k] * b_h) * corr, d_t


def _uni_pc(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None, callback: Callback | None,
            variant: str) -> torch.Tensor:
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    sig = sigmas.tolist()
    if sig[-1] < _FINAL_SIGMA:
        sig[-1] = _FINAL_SIGMA
    require_distinct_steps(sig, "uni_pc" if variant == "bh1" else "uni_pc_bh2")
    vp = _vp_table(sig)
    steps = len(sig) - 1
    order = min(3, steps - 1)
    predict = _DataPrediction(model, s_in_like(x), extra_args)
    x = x / math.sqrt(1.0 + sig[0] ** 2)  # VE -> VP
    d = predict(x, sig[0], vp[0][0], vp[1][0])
    _report(callback, x, 0, sigmas, vp, d)
    history = [(0, d)]
    # ComfyUI's loop makes no update at all when there is a single step (order 0); x is then only rescaled.
    for k in range(1, steps + 1 if order > 0 else 1):
        step_order = min(k, order, steps + 1 - k)
        x, d = _unipc_update(predict, x, history, k, vp, sig, step_order, variant, k < steps)
        if d is not None:
            history = (history + [(k, d)])[-order:]
            _report(callback, x, k, sigmas, vp, d)
    return x / vp[0][-1]  # VP -> VE at the last timestep


def _report(callback: Callback | None, x_vp: torch.Tensor, k: int, sigmas: torch.Tensor, vp: tuple,
            denoised: torch.Tensor) -> None:
    if callback is not None:  # report x in k-diffusion's VE space like every other sampler
        report(callback, x_vp / vp[0][k], k, sigmas[k], sigmas[k], denoised)


def sample_uni_pc(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                  callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
                  seed: int | None = None) -> torch.Tensor:
    """UniPC with B(h) = h ("bh1"), multistep order 3 (arXiv:2302.04867)."""
    return _uni_pc(model, x, sigmas, extra_args, callback, "bh1")


def sample_uni_pc_bh2(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                      callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
                      seed: int | None = None) -> torch.Tensor:
    """UniPC with B(h) = e^h - 1 ("bh2"), multistep order 3 (arXiv:2302.04867)."""
    return _uni_pc(model, x, sigmas, extra_args, callback, "bh2")


SAMPLERS = {
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
}
