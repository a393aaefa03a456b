"""Latent nodes that need no model: empty latents, resizing, batching, compositing, noise masks.

LATENT = {"samples": [B,C,H/8,W/8], "batch_index"?: list[int], "noise_mask"?: [B|1,1,H,W]}. Pixel-unit inputs
(x, y, width, height, feather) are divided by 8, as in ComfyUI.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ..upscale import common_upscale, repeat_to_batch_size
from .inputs import CROP_METHODS, int_input

LATENT_UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]

Latent = dict[str, Any]


def _px(default: int, minimum: int, **extra: Any) -> tuple[str, dict[str, Any]]:
    """A pixel size or position, in steps of 8 (one latent pixel)."""
    return int_input(default, minimum, step=8, **extra)


class EmptyLatentImage:
    DESCRIPTION = "A batch of all-zero latents of the given pixel size, the starting point of text-to-image."
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The zero latent batch.",)
    FUNCTION = "generate"
    CATEGORY = "latent"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "width": _px(512, 16, tooltip="Image width in pixels (the latent is 8 times smaller)."),
            "height": _px(512, 16, tooltip="Image height in pixels (the latent is 8 times smaller)."),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096, "tooltip": "How many latents."}),
        }}

    def generate(self, width: int, height: int, batch_size: int = 1) -> tuple[Latent]:
        return ({"samples": torch.zeros([batch_size, 4, height // 8, width // 8])},)


class LatentUpscale:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"
    CATEGORY = "latent"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "samples": ("LATENT",),
            "upscale_method": (LATENT_UPSCALE_METHODS,),
            "width": _px(512, 0),
            "height": _px(512, 0),
            "crop": (CROP_METHODS,),
        }}

    def upscale(self, samples: Latent, upscale_method: str, width: int, height: int, crop: str) -> tuple[Latent]:
        if width == 0 and height == 0:
            return (samples,)
        lat = samples["samples"]
        if width == 0:  # keep the aspect ratio; sizes below 64 px are raised to 64
            height = max(64, height)
            width = max(64, round(lat.shape[-1] * height / lat.shape[-2]))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(lat.shape[-2] * width / lat.shape[-1]))
        else:
            width, height = max(64, width), max(64, height)
        return ({**samples, "samples": common_upscale(lat, width // 8, height // 8, upscale_method, crop)},)


class LatentUpscaleBy:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "upscale"
    CATEGORY = "latent"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "samples": ("LATENT",),
            "upscale_method": (LATENT_UPSCALE_METHODS,),
            "scale_by": ("FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01}),
        }}

    def upscale(self, samples: Latent, upscale_method: str, scale_by: float) -> tuple[Latent]:
        lat = samples["samples"]
        width, height = round(lat.shape[-1] * scale_by), round(lat.shape[-2] * scale_by)
        return ({**samples, "samples": common_upscale(lat, width, height, upscale_method, "disabled")},)


def _masks_for_batch(masks: torch.Tensor, batch: int) -> torch.Tensor:
    """Noise masks tiled up to the latent batch when there are fewer of them (more are left as they are)."""
    if masks.shape[0] < batch:
        masks = masks.repeat(math.ceil(batch / masks.shape[0]), 1, 1, 1)[:batch]
    return masks


class LatentFromBatch:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "frombatch"
    CATEGORY = "latent/batch"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "samples": ("LATENT",),
            "batch_index": ("INT", {"default": 0, "min": 0, "max": 63}),
            "length": ("INT", {"default": 1, "min": 1, "max": 64}),
        }}

    def frombatch(self, samples: Latent, batch_index: int, length: int) -> tuple[Latent]:
        lat = samples["samples"]
        start = min(lat.shape[0] - 1, batch_index)
        length = min(lat.shape[0] - start, length)
        out = samples.copy()
        out["samples"] = lat[start:start + length].clone()
        if "noise_mask" in samples:
            masks = samples["noise_mask"]
            if masks.shape[0] == 1:
                out["noise_mask"] = masks.clone()
            else:
                out["noise_mask"] = _masks_for_batch(masks, lat.shape[0])[start:start + length].clone()
        if "batch_index" in samples:  # keep the original noise indices of the picked items
            out["batch_index"] = samples["batch_index"][start:start + length]
        else:
            out["batch_index"] = list(range(start, start + length))
        return (out,)


class RepeatLatentBatch:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "repeat"
    CATEGORY = "latent/batch"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",), "amount": ("INT", {"default": 1, "min": 1, "max": 64})}}

    def repeat(self, samples: Latent, amount: int) -> tuple[Latent]:
        lat = samples["samples"]
        out = samples.copy()
        out["samples"] = lat.repeat((amount,) + (1,) * (lat.ndim - 1))
        masks = samples.get("noise_mask")
        if masks is not None and masks.shape[0] > 1:
            # ComfyUI repeats the masks as given (not tiled to the batch first); kept for identical output.
            out["noise_mask"] = masks.repeat((amount, 1, 1, 1))
        if "batch_index" in out:
            idx = out["batch_index"]
            offset = max(idx) - min(idx) + 1
            out["batch_index"] = idx + [x + i * offset for i in range(1, amount) for x in idx]
        return (out,)


def _feather_mask(source: torch.Tensor, target: torch.Tensor, x: int, y: int, feather: int) -> torch.Tensor:
    """A ramp of `feather` latent pixels on each edge of `source` that lies inside `target` (edges at the border
    of `target` stay sharp)."""
    mask = torch.ones_like(source)
    for t in range(feather):
        ramp = (1.0 / feather) * (t + 1)
        if y != 0:
            mask[:, :, t:t + 1, :] *= ramp
        if y + source.shape[2] < target.shape[2]:
            mask[:, :, mask.shape[2] - 1 - t:mask.shape[2] - t, :] *= ramp
        if x != 0:
            mask[:, :, :, t:t + 1] *= ramp
        if x + source.shape[3] < target.shape[3]:
            mask[:, :, :, mask.shape[3] - 1 - t:mask.shape[3] - t] *= ramp
    return mask


class LatentComposite:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "composite"
    CATEGORY = "latent"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "samples_to": ("LATENT",),
            "samples_from": ("LATENT",),
            "x": _px(0, 0),
            "y": _px(0, 0),
            "feather": _px(0, 0),
        }}

    def composite(self, samples_to: Latent, samples_from: Latent, x: int, y: int, feather: int = 0,
                  composite_method: str = "normal") -> tuple[Latent]:
        x, y, feather = x // 8, y // 8, feather // 8
        dst = samples_to["samples"]
        src = samples_from["samples"][:, :, :dst.shape[2] - y, :dst.shape[3] - x]  # the part that fits
        out_samples = dst.clone()
        region = (slice(None), slice(None), slice(y, y + src.shape[2]), slice(x, x + src.shape[3]))
        if feather == 0:
            out_samples[region] = src
        else:
            mask = _feather_mask(src, dst, x, y, feather)
            out_samples[region] = src * mask + out_samples[region] * (torch.ones_like(mask) - mask)
        return ({**samples_to, "samples": out_samples},)


def composite_masked(destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
                     mask: torch.Tensor | None = None, multiplier: int = 8,
                     resize_source: bool = False) -> torch.Tensor:
    """Paste `source` [B,C,h,w] into `destination` [B,C,H,W] (modified in place) at pixel (x, y) / multiplier,
    blended by `mask` (1 = source), clipped to the destination (ComfyUI's nodes_mask.composite)."""
    source = source.to(destination.device)
    if resize_source:
        source = F.interpolate(source, size=destination.shape[-2:], mode="bilinear")
    source = repeat_to_batch_size(source, destination.shape[0])
    x = max(-source.shape[-1] * multiplier, min(x, destination.shape[-1] * multiplier))
    y = max(-source.shape[-2] * multiplier, min(y, destination.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    right, bottom = left + source.shape[-1], top + source.shape[-2]
    if mask is None:
        mask = torch.ones_like(source)
    else:
        mask = mask.to(destination.device, copy=True).reshape(-1, 1, mask.shape[-2], mask.shape[-1])
        mask = F.interpolate(mask, size=source.shape[-2:], mode="bilinear")
        mask = repeat_to_batch_size(mask, source.shape[0])
    visible_w = destination.shape[-1] - left + min(0, x)
    visible_h = destination.shape[-2] - top + min(0, y)
    mask = mask[:, :, :visible_h, :visible_w]
    src_part = mask * source[..., :visible_h, :visible_w]
    dst_part = (torch.ones_like(mask) - mask) * destination[..., top:bottom, left:right]
    destination[..., top:bottom, left:right] = src_part + dst_part
    return destination


class LatentCompositeMasked:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "composite"
    CATEGORY = "latent"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_mask"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "destination": ("LATENT",),
                "source": ("LATENT",),
                "x": _px(0, 0),
                "y": _px(0, 0),
                "resize_source": ("BOOLEAN", {"default": False}),
            },
            "optional": {"mask": ("MASK",)},
        }

    def composite(self, destination: Latent, source: Latent, x: int, y: int, resize_source: bool,
                  mask: torch.Tensor | None = None) -> tuple[Latent]:
        pasted = composite_masked(destination["samples"].clone(), source["samples"], x, y, mask, 8, resize_source)
        return ({**destination, "samples": pasted},)


class SetLatentNoiseMask:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "set_mask"
    CATEGORY = "latent/inpaint"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",), "mask": ("MASK",)}}

    def set_mask(self, samples: Latent, mask: torch.Tensor) -> tuple[Latent]:
        return ({**samples, "noise_mask": mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))},)  # [B,1,H,W]


NODE_CLASS_MAPPINGS = {
    "EmptyLatentImage": EmptyLatentImage,
    "LatentUpscale": LatentUpscale,
    "LatentUpscaleBy": LatentUpscaleBy,
    "LatentFromBatch": LatentFromBatch,
    "RepeatLatentBatch": RepeatLatentBatch,
    "LatentComposite": LatentComposite,
    "LatentCompositeMasked": LatentCompositeMasked,
    "SetLatentNoiseMask": SetLatentNoiseMask,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "EmptyLatentImage": "Empty Latent Image",
    "LatentUpscale": "Upscale Latent",
    "LatentUpscaleBy": "Upscale Latent By",
    "LatentFromBatch": "Latent From Batch",
    "RepeatLatentBatch": "Repeat Latent Batch",
    "LatentComposite": "Latent Composite",
    "SetLatentNoiseMask": "Set Latent Noise Mask",
}
