"""Small host-side helpers shared by the extended samplers (multistep, stochastic, SA-Solver, UniPC).

Step scalars are plain Python floats computed from one `sigmas.tolist()`, so a sampler never waits on the device
inside its loop; only the latents are tensors.
"""
from __future__ import annotations

import math


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

