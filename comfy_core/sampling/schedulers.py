"""Noise schedules: steps -> a descending float32 sigma ladder ending in 0, as ComfyUI's KSampler builds them.

`calculate_sigmas(model_sampling, name, steps)` is the raw scheduler; `ksampler_sigmas` adds the KSampler's
`denoise` truncation and the extra step that some samplers drop ("discard penultimate").
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from comfy_core.models.model_sampling import ModelSampling

SCHEDULER_NAMES: tuple[str, ...] = (
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
)
"""All 9 scheduler names, in ComfyUI's order (the KSampler `scheduler` choice list)."""


def append_zero_sigma(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


# -- schedules defined by (n, sigma_min, sigma_max) --------------------------------------------------------------------
def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5: sigmas evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero_sigma((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Sigmas evenly spaced in log-sigma."""
    return append_zero_sigma(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def kl_optimal_sigmas(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Align Your Steps (Sabour et al. 2024) KL-optimal schedule: evenly spaced in arctan(sigma).

    With n = 1 the ramp is 0/0 and ComfyUI returns [nan, 0]; we keep that behaviour for parity.
    """
    ramp = torch.arange(n, dtype=torch.float).div_(n - 1)
    sigmas = ramp.new_zeros(n + 1)
    sigmas[:-1] = (ramp * math.atan(sigma_min) + (1 - ramp) * math.atan(sigma_max)).tan_()
    return sigmas


# -- schedules defined on the model's discrete timesteps ---------------------------------------------------------------
def simple_sigmas(ms: ModelSampling, steps: int) -> torch.Tensor:
    """Every (1000/steps)-th training sigma, from the top."""
    stride = len(ms.sigmas) / steps
    return torch.tensor([float(ms.sigmas[-(1 + int(i * stride))]) for i in range(steps)] + [0.0])


def normal_sigmas(ms: ModelSampling, steps: int, sgm: bool = False) -> torch.Tensor:
    """Timesteps evenly spaced from t(sigma_max) to t(sigma_min); `sgm` (SGM uniform) drops the last instead."""
    start, end = ms.timestep(ms.sigma_max), ms.timestep(ms.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(ms.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(ms.sigma(t)) for t in timesteps]
    return torch.tensor(sigs + ([0.0] if append_zero else []))


def ddim_uniform_sigmas(ms: ModelSampling, steps: int) -> torch.Tensor:
    """DDIM's uniform timestep skipping (Song et al. 2021): every (1000 // steps)-th sigma starting at index 1."""
    x = 1
    if math.isclose(float(ms.sigmas[x]), 0, abs_tol=0.00001):
        steps += 1
        sigs: list[float] = []
    else:
        sigs = [0.0]
    stride = max(len(ms.sigmas) // steps, 1)
    while x < len(ms.sigmas):
        sigs.append(float(ms.sigmas[x]))
        x += stride
    return torch.tensor(sigs[::-1])


def beta_sigmas(ms: ModelSampling, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Lee et al. (2024) "Beta sampling is all you need": timesteps at Beta(alpha, beta) quantiles, minus repeats."""
    total = len(ms.sigmas) - 1
    ts = np.rint(beta_ppf(1 - np.linspace(0, 1, steps, endpoint=False), alpha, beta) * total)
    sigs, last = [], -1.0
    for t in ts:
        if t != last:
            sigs.append(float(ms.sigmas[int(t)]))
        last = t
    return torch.tensor(sigs + [0.0])


def linear_quadratic_sigmas(ms: ModelSampling, steps: int, threshold_noise: float = 0.025,
                            linear_steps: int | None = None) -> torch.Tensor:
    """Genmo Mochi's schedule: linear in the first half up to `threshold_noise`, then quadratic; scaled by sigma_max."""
    if steps == 1:
        schedule = [1.0, 0.0]
    else:
        linear_steps = steps // 2 if linear_steps is None else linear_steps
        linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = step_diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * step_diff / (quadratic_steps**2)
        const = quadratic_coef * (linear_steps**2)
        quadratic = [quadratic_coef * (i**2) + linear_coef * i + const for i in range(linear_steps, steps)]
        schedule = [1.0 - s for s in linear + quadratic + [1.0]]
    return torch.tensor(schedule, dtype=torch.float32) * ms.sigma_max.cpu()


# -- inverse regularized incomplete beta (replaces scipy.stats.beta.ppf) ----------------------------------------------
def _betainc_cf(x: np.ndarray, a: float, b: float, iters: int = 300) -> np.ndarray:
    """Continued fraction of I_x(a, b) (modified Lentz), valid for x < (a + 1) / (a + b + 2)."""
    tiny = 1e-300
    c = np.ones_like(x)
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
    h = d.copy()
    for m in range(1, iters + 1):
        for coef in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                     -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + coef * d
            d = 1.0 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1.0 + coef / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            delta = c * d
            h = h * delta
        if np.all(np.abs(delta - 1.0) < 4e-16):
            break
    return h


def betainc(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """Regularized incomplete beta function I_x(a, b) in float64."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    lbeta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    inner = (x > 0) & (x < 1)
    xs = np.where(inner, x, 0.5)
    log_front = a * np.log(xs) + b * np.log1p(-xs) - lbeta
    direct = xs < (a + 1.0) / (a + b + 2.0)
    lower = np.exp(log_front) * _betainc_cf(np.where(direct, xs, 0.0), a, b) / a
    upper = 1.0 - np.exp(log_front) * _betainc_cf(np.where(direct, 0.0, 1.0 - xs), b, a) / b
    out = np.where(direct, lower, upper)
    return np.where(x <= 0, 0.0, np.where(x >= 1, 1.0, out))


def _beta_ppf_newton(p: np.ndarray, a: float, b: float, iters: int) -> np.ndarray:
    """Solve I_x(a, b) = p for p in (0, 1) by Newton steps kept inside a shrinking bisection bracket."""
    lo, hi = np.zeros_like(p), np.ones_like(p)
    x = np.clip(p, 1e-3, 1 - 1e-3)  # any start inside (0, 1) works with the bracket safeguard
    lbeta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    for _ in range(iters):
        f = betainc(x, a, b) - p
        lo, hi = np.where(f < 0, x, lo), np.where(f > 0, x, hi)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # x may round to 0 or 1 at extreme p
            pdf = np.exp((a - 1) * np.log(x) + (b - 1) * np.log1p(-x) - lbeta)
            newton = x - f / pdf
        x_new = np.where((newton > lo) & (newton < hi), newton, (lo + hi) / 2)
        done = np.all((np.abs(x_new - x) <= 1e-15 * x) | (f == 0))
        x = x_new
        if done:
            break
    return x


def beta_ppf(p: np.ndarray, a: float, b: float, iters: int = 100) -> np.ndarray:
    """Quantile function of Beta(a, b) in float64 (what ComfyUI takes from scipy.stats.beta.ppf).

    For a == b the distribution is symmetric: solve in the lower half and reflect, which makes the median exactly
    0.5 (the beta scheduler rounds ppf · 999, so 499.5 must not come out as 499.4999...).
    """
    p_in = np.asarray(p, dtype=np.float64)
    inner = (p_in > 0) & (p_in < 1)
    upper = inner & (p_in > 0.5) if a == b else np.zeros_like(inner)
    q = np.where(inner, np.where(upper, 1.0 - p_in, p_in), 0.5)  # the ends are answered exactly below
    x = _beta_ppf_newton(q, a, b, iters)
    if a == b:
        x = np.where(q == 0.5, 0.5, np.where(upper, 1.0 - x, x))
    return np.where(p_in <= 0, 0.0, np.where(p_in >= 1, 1.0, x))


# -- dispatch --------------------------------------------------------------------------------------------------------
_BY_MODEL: dict[str, Callable[[ModelSampling, int], torch.Tensor]] = {
    "simple": simple_sigmas,
    "sgm_uniform": lambda ms, steps: normal_sigmas(ms, steps, sgm=True),
    "ddim_uniform": ddim_uniform_sigmas,
    "beta": beta_sigmas,
    "normal": normal_sigmas,
    "linear_quadratic": linear_quadratic_sigmas,
}
_BY_RANGE: dict[str, Callable[[int, float, float], torch.Tensor]] = {
    "karras": get_sigmas_karras,
    "exponential": get_sigmas_exponential,
    "kl_optimal": kl_optimal_sigmas,
}


def calculate_sigmas(model_sampling: ModelSampling, scheduler: str, steps: int) -> torch.Tensor:
    """`steps + 1` float32 sigmas (the last one 0) for a scheduler name."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if scheduler in _BY_RANGE:
        return _BY_RANGE[scheduler](steps, float(model_sampling.sigma_min), float(model_sampling.sigma_max))
    if scheduler in _BY_MODEL:
        return _BY_MODEL[scheduler](model_sampling, steps)
    raise ValueError(f"unknown scheduler {scheduler!r}; expected one of: {', '.join(SCHEDULER_NAMES)}")


def ksampler_sigmas(model_sampling: ModelSampling, scheduler: str, steps: int, denoise: float | None = 1.0,
                    discard_penultimate: bool = False) -> torch.Tensor:
    """The sigmas ComfyUI's KSampler uses: for denoise < 1 build int(steps / denoise) steps and keep the last
    steps + 1; denoise <= 0 gives an empty schedule. `discard_penultimate` (dpm_2, dpm_2_ancestral, uni_pc,
    uni_pc_bh2) builds one extra step and drops the second-to-last sigma."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    def build(n: int) -> torch.Tensor:
        if discard_penultimate:
            sigmas = calculate_sigmas(model_sampling, scheduler, n + 1)
            return torch.cat([sigmas[:-2], sigmas[-1:]])
        return calculate_sigmas(model_sampling, scheduler, n)

    if denoise is None or denoise > 0.9999:
        return build(steps)
    if denoise <= 0.0:
        return torch.zeros([0])
    return build(int(steps / denoise))[-(steps + 1):]
