"""LATENT_OPERATION values (ComfyUI's latent operations) and their use as a guidance hook.

An operation is a callable `op(latent=x, **kwargs) -> x'` on [B,C,H,W] latents. LatentApplyOperation runs one on a
LATENT; LatentApplyOperationCFG runs it at every sampling step on the guidance direction cond − uncond:

    cond' = op(cond − uncond) + uncond,   denoised = uncond + cfg · (cond' − uncond)

ComfyUI does this in a pre-CFG hook; comfy-core's guidance has post-CFG hooks only, so one hook placed first among
them recomputes the combine from the cond/uncond predictions it is handed, applying every operation of the model (in
the order the nodes added them) first. The numbers are ComfyUI's; a custom CFG function (sampler_cfg_function) set on
the same model is not applied on top of the operations.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import NodeExecutionError
from ..sampling.common import with_pre_cfg_function


LatentOperation = Callable[..., torch.Tensor]


def _pixel_norm(latent: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-pixel length over channels, kept as a channel axis: [B,C,H,W] -> [B,1,H,W], plus `eps`."""
    return (torch.linalg.vector_norm(latent, dim=1) + eps)[:, None]


class ReinhardTonemap:
    """Reinhard tone mapping of per-pixel latent magnitudes: m -> m / (1 + m/top) with top = (mean + 5·std)·multiplier
    of the magnitudes of each latent; directions are kept."""

    def __init__(self, multiplier: float):
        self.multiplier = multiplier

    def __repr__(self) -> str:
        return f"ReinhardTonemap(multiplier={self.multiplier})"

    def __call__(self, latent: torch.Tensor, **_: Any) -> torch.Tensor:
        magnitude = _pixel_norm(latent, 1e-10)  # [B,1,H,W]
        direction = latent / magnitude
        mean = torch.mean(magnitude, dim=(1, 2, 3), keepdim=True)
        std = torch.std(magnitude, dim=(1, 2, 3), keepdim=True)
        top = (std * 5 + mean) * self.multiplier
        magnitude = magnitude * (1.0 / top)
        return direction * (magnitude / (magnitude + 1.0) * top)


def gaussian_grid_kernel(kernel_size: int, sigma: float, device: torch.device | None = None) -> torch.Tensor:
    """ComfyUI's post-processing blur kernel [k,k]: exp(-d²/2σ²) with d the distance on a grid spanning -1..1 (not
    pixel units), normalised to sum 1."""
    axis = torch.linspace(-1, 1, kernel_size, device=device)
    x, y = torch.meshgrid(axis, axis, indexing="ij")
    d = torch.sqrt(x * x + y * y)
    g = torch.exp(-(d * d) / (2.0 * sigma * sigma))
    return g / g.sum()


class LatentSharpen:
    """Unsharp masking of the latent's per-pixel directions (magnitudes kept), with ComfyUI's kernel: the gaussian
    scaled by -10·alpha, its centre raised so the kernel sums to 1, over a reflect-padded border."""

    def __init__(self, radius: int, sigma: float, alpha: float):
        self.radius, self.sigma, self.alpha = radius, sigma, alpha

    def __repr__(self) -> str:
        return f"LatentSharpen(radius={self.radius}, sigma={self.sigma}, alpha={self.alpha})"

    def __call__(self, latent: torch.Tensor, **_: Any) -> torch.Tensor:
        r = self.radius
        if r >= latent.shape[-2] or r >= latent.shape[-1]:
            raise NodeExecutionError(f"LatentOperationSharpen: a radius of {r} needs a latent larger than {r} "
                                     f"pixels on each side; got {latent.shape[-1]}x{latent.shape[-2]}")
        luminance = _pixel_norm(latent, 1e-6)  # [B,1,H,W]
        direction = latent / luminance
        channels = latent.shape[1]
        size = 2 * r + 1
        kernel = gaussian_grid_kernel(size, self.sigma, device=latent.device) * (self.alpha * -10)
        kernel[r, r] = kernel[r, r] - kernel.sum() + 1.0
        padded = F.pad(direction, (r, r, r, r), "reflect")
        weight = kernel.repeat(channels, 1, 1).unsqueeze(1)  # [C,1,k,k], one filter per channel
        # ComfyUI's call (zero padding on top of the reflect padding, then the border cut off), for equal numbers
        sharpened = F.conv2d(padded, weight, padding=size // 2, groups=channels)[:, :, r:-r, r:-r]
        return luminance * sharpened


def cfg_operation_hook(operation: LatentOperation) -> Callable[[dict[str, Any]], list[torch.Tensor]]:
    """A pre-CFG hook applying `operation` to the guidance direction cond − uncond (ComfyUI's
    LatentApplyOperationCFG); at cfg 1 uncond is zeros, so it acts on cond itself."""
    def pre_cfg(args: dict[str, Any]) -> list[torch.Tensor]:
        cond, uncond = args["conds_out"]
        return [operation(latent=cond - uncond) + uncond, uncond]
    return pre_cfg


def with_cfg_operation(model_options: Mapping[str, Any], operation: LatentOperation) -> dict[str, Any]:
    """A copy of `model_options` whose guidance applies `operation` after the operations already there."""
    return with_pre_cfg_function(model_options, cfg_operation_hook(operation))
