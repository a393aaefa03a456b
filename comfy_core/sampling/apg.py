"""Adaptive Projected Guidance (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High Guidance
Scales in Diffusion Models"), ComfyUI's APG node, as a pre-CFG hook (`model_options["sampler_pre_cfg_function"]`,
run by `guidance.CFGDenoiser` on the [cond, uncond] predictions before the combine).
"""
from __future__ import annotations

from typing import Any

import torch


def project(v0: torch.Tensor, v1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """v0's components parallel and orthogonal to v1, per batch row over (C, H, W)."""
    v1 = torch.nn.functional.normalize(v1, dim=[-1, -2, -3])
    parallel = (v0 * v1).sum(dim=[-1, -2, -3], keepdim=True) * v1
    return parallel, v0 - parallel


class APGHook:
    """Adaptive Projected Guidance (Sadat et al. 2024) as a pre-CFG hook: the guidance cond − uncond is averaged
    with momentum over steps, clipped to an L2 norm of `norm_threshold`, and its part parallel to cond is scaled by
    `eta`; cond is rewritten so that the usual CFG combine applies that guidance. State (the running average) is
    reset whenever sigma goes up, i.e. at the start of a new sampling run."""

    def __init__(self, eta: float, norm_threshold: float, momentum: float) -> None:
        self.eta, self.norm_threshold, self.momentum = eta, norm_threshold, momentum
        self.running_avg: torch.Tensor | None = None
        self.prev_sigma: float | None = None

    def __call__(self, args: dict[str, Any]) -> list[torch.Tensor]:
        conds_out = args["conds_out"]
        if len(conds_out) == 1:
            return conds_out
        cond, uncond = conds_out[0], conds_out[1]
        sigma, cond_scale = float(args["sigma"][0]), args["cond_scale"]
        if self.prev_sigma is not None and sigma > self.prev_sigma:
            self.running_avg = None
        self.prev_sigma = sigma
        guidance = cond - uncond
        if self.momentum != 0:
            self.running_avg = guidance if self.running_avg is None else self.momentum * self.running_avg + guidance
            guidance = self.running_avg
        if self.norm_threshold > 0:
            norm = guidance.norm(p=2, dim=[-1, -2, -3], keepdim=True)
            guidance = guidance * torch.minimum(torch.ones_like(norm), self.norm_threshold / norm)
        parallel, orthogonal = project(guidance, cond)
        modified = orthogonal + self.eta * parallel
        return [(uncond + modified) + (cond - uncond) / cond_scale, uncond, *conds_out[2:]]
