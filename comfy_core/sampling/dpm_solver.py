"""DPM-Solver (Lu et al. 2022, arXiv:2206.00927): fixed-step "fast" (orders 3,...,3,2,1) and adaptive (12/23).

Works in t = -log(sigma) on the noise prediction eps = (x - D(x)) / sigma. Only the schedule's ends matter: the
KSampler wrappers take sigma_max = sigmas[0] and sigma_min = the last non-zero sigma.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from comfy_core.sampling.common import Callback, Denoiser, SamplerFn, get_ancestral_step, s_in_like
from comfy_core.sampling.common import sigma_from_t as _sigma
from comfy_core.sampling.common import t_from_sigma as _t
from comfy_core.sampling.noise import NoiseSampler, default_noise_sampler


@dataclass
class _EpsEvaluator:
    """eps(x, t) with a per-step cache keyed by stage name, so stages shared by the low/high order pair run once."""

    model: Denoiser
    extra_args: dict[str, Any]
    cache: dict[str, torch.Tensor] = field(default_factory=dict)

    def __call__(self, key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if key not in self.cache:
            sigma = _sigma(t)
            self.cache[key] = (x - self.model(x, sigma * s_in_like(x), **self.extra_args)) / sigma
        return self.cache[key]


def _dpm_solver_1(ev: _EpsEvaluator, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
    h = t_next - t
    return x - _sigma(t_next) * h.expm1() * ev("eps", x, t)


def _dpm_solver_2(ev: _EpsEvaluator, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
                  r1: float = 1 / 2) -> torch.Tensor:
    h = t_next - t
    eps = ev("eps", x, t)
    s1 = t + r1 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    eps_r1 = ev("eps_r1", u1, s1)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)


def _dpm_solver_3(ev: _EpsEvaluator, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
                  r1: float = 1 / 3, r2: float = 2 / 3) -> torch.Tensor:
    h = t_next - t
    eps = ev("eps", x, t)
    s1, s2 = t + r1 * h, t + r2 * h
    u1 = x - _sigma(s1) * (r1 * h).expm1() * eps
    eps_r1 = ev("eps_r1", u1, s1)
    u2 = (x - _sigma(s2) * (r2 * h).expm1() * eps
          - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
    eps_r2 = ev("eps_r2", u2, s2)
    return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


_STEPS = {1: _dpm_solver_1, 2: _dpm_solver_2, 3: _dpm_solver_3}


def _ancestral_target(t: torch.Tensor, t_next: torch.Tensor, t_end: torch.Tensor,
                      eta: float) -> tuple[torch.Tensor, torch.Tensor | float]:
    """With eta > 0 step deterministically to a lower t' and re-inject noise of std su."""
    if not eta:
        return t_next, 0.0
    sd, _ = get_ancestral_step(_sigma(t), _sigma(t_next), eta)
    t_next_ = torch.minimum(t_end, _t(sd))
    return t_next_, (_sigma(t_next) ** 2 - _sigma(t_next_) ** 2) ** 0.5


def _range(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_min, sigma_max) as the KSampler passes them: the last non-zero sigma and the first sigma."""
    sig = sigmas.detach().cpu()
    sigma_min = sig[-2] if sig[-1] == 0 else sig[-1]
    if sigma_min <= 0 or sig[0] <= 0:
        raise ValueError("dpm_fast / dpm_adaptive need positive sigma_min and sigma_max")
    return sigma_min, sig[0]


@torch.no_grad()
def sample_dpm_fast(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                    extra_args: dict[str, Any] | None = None, callback: Callback | None = None,
                    noise_sampler: NoiseSampler | None = None, seed: int | None = None, eta: float = 0.0,
                    s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver-fast: nfe = len(sigmas) - 1 model evaluations over uniform-in-t steps of order 3 (then 2, 1)."""
    if len(sigmas) <= 1:
        return x
    sigma_min, sigma_max = _range(sigmas)
    nfe = len(sigmas) - 1
    noise_sampler = noise_sampler or default_noise_sampler(x, seed=seed)
    ev = _EpsEvaluator(model, extra_args or {})
    t_start, t_end = _t(sigma_max), _t(sigma_min)
    m = math.floor(nfe / 3) + 1
    ts = torch.linspace(float(t_start), float(t_end), m + 1)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        ev.cache = {}
        t, t_next = ts[i], ts[i + 1]
        t_next_, su = _ancestral_target(t, t_next, t_end, eta)
        eps = ev("eps", x, t)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": _sigma(t), "sigma_hat": _sigma(t), "denoised": x - _sigma(t) * eps})
        x = _STEPS[order](ev, x, t, t_next_)
        if eta:
            x = x + su * s_noise * noise_sampler(_sigma(t), _sigma(t_next))
    return x


@dataclass
class _PIDStepSize:
    """PID controller on the local error for adaptive step sizes (Söderlind 2003; DPM-Solver's adaptive variant)."""

    h: float
    b1: float
    b2: float
    b3: float
    accept_safety: float = 0.81
    eps: float = 1e-8
    errs: list[float] = field(default_factory=list)

    @classmethod
    def create(cls, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float,
               accept_safety: float) -> "_PIDStepSize":
        return cls(h, (pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order, dcoeff / order,
                   accept_safety)

    def propose_step(self, error: torch.Tensor) -> bool:
        inv_error = 1 / (float(error) + self.eps)  # the algorithm needs this scalar on the host
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)  # soft limiter
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2], self.errs[1] = self.errs[1], self.errs[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                        extra_args: dict[str, Any] | None = None, callback: Callback | None = None,
                        noise_sampler: NoiseSampler | None = None, seed: int | None = None, order: int = 3,
                        rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05, pcoeff: float = 0.0,
                        icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81, eta: float = 0.0,
                        s_noise: float = 1.0) -> torch.Tensor:
    """DPM-Solver-12 / -23 with embedded error estimate and PID step-size control between sigma_max and sigma_min."""
    if len(sigmas) <= 1:
        return x
    if order not in (2, 3):
        raise ValueError("order should be 2 or 3")
    sigma_min, sigma_max = _range(sigmas)
    noise_sampler = noise_sampler or default_noise_sampler(x, seed=seed)
    ev = _EpsEvaluator(model, extra_args or {})
    s, t_end = _t(sigma_max), _t(sigma_min)
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    pid = _PIDStepSize.create(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    x_prev, steps = x, 0
    while s < t_end - 1e-5:
        ev.cache = {}
        t = torch.minimum(t_end, s + pid.h)
        t_, su = _ancestral_target(s, t, t_end, eta)
        eps = ev("eps", x, s)
        denoised = x - _sigma(s) * eps
        if order == 2:
            x_low, x_high = _dpm_solver_1(ev, x, s, t_), _dpm_solver_2(ev, x, s, t_)
        else:
            x_low, x_high = _dpm_solver_2(ev, x, s, t_, r1=1 / 3), _dpm_solver_3(ev, x, s, t_)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high + su * s_noise * noise_sampler(_sigma(s), _sigma(t)) if eta else x_high
            s = t
        steps += 1
        if callback is not None:
            callback({"x": x, "i": steps - 1, "sigma": _sigma(s), "sigma_hat": _sigma(s), "denoised": denoised,
                      "error": error, "h": pid.h})
    return x


SAMPLERS: dict[str, SamplerFn] = {
    "dpm_fast": sample_dpm_fast,
    "dpm_adaptive": sample_dpm_adaptive,
}
