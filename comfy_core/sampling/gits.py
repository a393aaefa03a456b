"""GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion Sampling"): time schedules searched
for SD1.5, tabled per guidance-like coefficient (0.80 … 1.50 in steps of 0.05) and step count (2 … 20); longer runs
log-linearly resample the 20-step row. The numbers are the published tables, as ComfyUI ships them."""
from __future__ import annotations

import torch

from .gits_table import GITS_NOISE_LEVELS
from .sigma_schedules import tabled_sigmas


def gits_sigmas(coeff: float, steps: int, denoise: float) -> torch.Tensor:
    """The GITSScheduler node's schedule: the table row of `steps` (interpolated past 20 steps), its last
    round(steps·denoise) + 1 values, the final one set to 0."""
    key = round(coeff, 2)
    if key not in GITS_NOISE_LEVELS:
        raise ValueError(f"GITS has tables for coeff 0.80 to 1.50 in steps of 0.05, not {coeff}")
    if steps < 2:
        raise ValueError(f"GITS needs at least 2 steps, got {steps}")
    rows = GITS_NOISE_LEVELS[key]
    if steps <= len(rows) + 1:
        return tabled_sigmas(rows[steps - 2], steps, denoise, interpolate=False)
    return tabled_sigmas(rows[-1], steps, denoise)
