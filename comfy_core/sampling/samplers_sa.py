"""SA-Solver: stochastic Adams predictor-corrector in half-log-SNR time (Xue et al. 2023, arXiv:2309.05019).

The predictor extrapolates the last few x0 predictions with a Lagrange polynomial in lambda = -log(sigma) and
integrates it exactly against the SDE's exponential kernel; the corrector re-does the previous step once the new
prediction is known. Noise strength tau is 1 between 20 % and 80 % of the model's timestep range and 0 elsewhere
(ComfyUI's defaults), so the solver is an ODE solver at both ends of the schedule.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .common import Callback, Denoiser, report, s_in_like, weighted_sum
from .ext_base import require_distinct_steps
from .noise import NoiseSampler, default_noise_sampler

TauFn = Callable[[float], float]


def tau_interval(start_sigma: float, end_sigma: float, eta: float = 1.0) -> TauFn:
    """tau(sigma) = eta inside [end_sigma, start_sigma], else 0 (eta <= 0 makes the solver an ODE solver)."""
    def tau(sigma: float) -> float:
        return eta if eta > 0 and start_sigma >= sigma >= end_sigma else 0.0
    return tau


def _default_tau(model: Denoiser) -> TauFn:
    model_sampling = getattr(model, "model_sampling", None)
    if model_sampling is None:  # every model comfy-core runs shares the SD noise schedule
        from comfy_core.models.model_sampling import ModelSampling
        model_sampling = ModelSampling()
    return tau_interval(model_sampling.percent_to_sigma(0.2), model_sampling.percent_to_sigma(0.8))


def _exp_moments(lam_s: float, lam_t: float, n: int, tau: float) -> list[float]:
    """J_p = c e^{-c lam_t} * integral_{lam_s}^{lam_t} e^{c l} l^p dl for p < n, with c = 1 + tau^2.

    Integration by parts gives J_p = (lam_t^p - lam_s^p e^{-c h}) - (p / c) J_{p-1}.
    """
    c = 1 + tau ** 2
    decay = math.exp(-c * (lam_t - lam_s))
    moments: list[float] = []
    for p in range(n):
        term = lam_t ** p - lam_s ** p * decay
        moments.append(term - (p / c) * moments[-1] if p else term)
    return moments


def adams_weights(sigma_t: float, nodes: list[float], lam_s: float, lam_t: float, tau: float) -> list[float]:
    """Weights b_j of the x0 predictions at lambda `nodes` for a step lam_s -> lam_t ending at sigma_t (eqs. 15/18).

    b_j = alpha_t * c * integral e^{-c (lam_t - l)} L_j(l) dl, with L_j the Lagrange basis on the nodes: solve
    sum_j nodes_j^p b_j = alpha_t J_p for p < len(nodes) (alpha_t = sigma_t e^{lam_t} = 1 for VE sigmas).
    """
    n = len(nodes)
    moments = torch.tensor(_exp_moments(lam_s, lam_t, n, tau), dtype=torch.float64)
    vander_t = torch.tensor([[node ** p for node in nodes] for p in range(n)], dtype=torch.float64)
    weights = torch.linalg.solve(vander_t, moments) * (sigma_t * math.exp(lam_t))
    return weights.tolist()


def sample_sa_solver(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, extra_args: dict | None = None,
                     callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
                     seed: int | None = None, tau_func: TauFn | None = None, s_noise: float = 1.0,
                     predictor_order: int = 3, corrector_order: int = 4, use_pece: bool = False) -> torch.Tensor:
    """Stochastic Adams predictor-corrector (arXiv:2309.05019); `use_pece` re-evaluates the corrected state."""
    if len(sigmas) <= 1:
        return x
    extra_args = {} if extra_args is None else extra_args
    noise_sampler = default_noise_sampler(x, seed) if noise_sampler is None else noise_sampler
    tau_func = _default_tau(model) if tau_func is None else tau_func
    sig = sigmas.tolist()
    require_distinct_steps(sig, "sa_solver")
    lam = [-math.log(s) if s > 0 else math.inf for s in sig]
    s_in = s_in_like(x)
    n_steps = len(sig) - 1
    to_zero = sig[-1] == 0  # lower the orders near the end, where the step sizes in lambda blow up
    state = {"x_pred": x, "x": x, "h": 0.0, "tau": 0.0, "noise": None}
    preds: list[torch.Tensor] = []  # x0 predictions, oldest first
    for i in range(n_steps):
        denoised = model(state["x_pred"], sigmas[i] * s_in, **extra_args)
        report(callback, state["x_pred"], i, sigmas[i], sigmas[i], denoised)
        preds = (preds + [denoised])[-max(predictor_order, corrector_order):]
        p_order = min(predictor_order, len(preds))
        c_order = 0 if i == 0 or (sig[i + 1] == 0 and not use_pece) else min(corrector_order, len(preds))
        if to_zero:
            p_order, c_order = min(p_order, n_steps - 1 - i), min(c_order, n_steps - i)
        if c_order == 0:
            state["x"] = state["x_pred"]
        else:
            _correct(state, preds, sig, lam, i, c_order, s_noise)
            if use_pece:
                preds[-1] = model(state["x"], sigmas[i] * s_in, **extra_args)
        if sig[i + 1] == 0:
            state["x_pred"] = preds[-1]
        else:
            _predict(state, preds, sigmas, sig, lam, i, p_order, tau_func(sig[i + 1]), noise_sampler, s_noise)
    return state["x_pred"]


def _correct(state: dict, preds: list[torch.Tensor], sig: list[float], lam: list[float], i: int, order: int,
             s_noise: float) -> None:
    """Redo the step sig[i-1] -> sig[i] with the new prediction included (the previous step's tau and noise)."""
    tau, h = state["tau"], state["h"]
    weights = adams_weights(sig[i], lam[i - order + 1:i + 1], lam[i - 1], lam[i], tau)
    x = (sig[i] / sig[i - 1] * math.exp(-(tau ** 2) * h)) * state["x"] + weighted_sum(weights, preds[-order:])
    if tau > 0 and s_noise > 0:
        x = x + state["noise"]
    state["x"] = x


def _predict(state: dict, preds: list[torch.Tensor], sigmas: torch.Tensor, sig: list[float], lam: list[float], i: int,
             order: int, tau: float, noise_sampler, s_noise: float) -> None:
    """Adams-Bashforth-type step sig[i] -> sig[i+1] through the last `order` predictions, plus SDE noise."""
    weights = adams_weights(sig[i + 1], lam[i - order + 1:i + 1], lam[i], lam[i + 1], tau)
    h = lam[i + 1] - lam[i]
    x_pred = (sig[i + 1] / sig[i] * math.exp(-(tau ** 2) * h)) * state["x"] + weighted_sum(weights, preds[-order:])
    if tau > 0 and s_noise > 0:
        std = sig[i + 1] * math.sqrt(-math.expm1(-2 * tau ** 2 * h)) * s_noise
        state["noise"] = noise_sampler(sigmas[i], sigmas[i + 1]) * std
        x_pred = x_pred + state["noise"]
    state.update(x_pred=x_pred, h=h, tau=tau)


def sample_sa_solver_pece(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """SA-Solver in PECE mode: predict, evaluate, correct, evaluate (arXiv:2309.05019)."""
    return sample_sa_solver(model, x, sigmas, use_pece=True, **kwargs)


SAMPLERS = {
    "sa_solver": sample_sa_solver,
    "sa_solver_pece": sample_sa_solver_pece,
}
