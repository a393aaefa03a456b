"""VAE nodes: images <-> latents, whole or in overlapping tiles, and inpainting encodes."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from .. import context
from ..errors import NodeExecutionError
from .inputs import int_input

_INVALID_VAE = ("ERROR: VAE is invalid: None\n\nIf the VAE is from a checkpoint loader node your checkpoint does not "
                "contain a valid VAE model.")


def check_vae(vae: Any) -> None:
    if vae is None:
        raise NodeExecutionError(_INVALID_VAE)


def _progress():
    """Progress events, for the tiled paths (ComfyUI's tiled VAE ops drive a progress bar)."""
    ctx = context.current_or_none()
    return ctx.progress if ctx is not None else None


def interrupt_check():
    """For whole-image encode/decode: ComfyUI sends no progress events there, but an interrupt still stops us."""
    ctx = context.current_or_none()
    return (lambda value, total: ctx.check_interrupted()) if ctx is not None else None


class VAEDecode:
    DESCRIPTION = "Turn latents into images with a VAE."
    CATEGORY = "latent"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("The image the latent decodes to.",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT", {"tooltip": "Latent to decode."}),
                             "vae": ("VAE", {"tooltip": "VAE to decode with."})}}

    def decode(self, vae: Any, samples: dict[str, Any]) -> tuple[torch.Tensor]:
        check_vae(vae)
        latent = samples["samples"]
        if latent.ndim == 5:  # video-style [B, C, T, h, w]: fold frames into the batch
            latent = latent.movedim(2, 1).reshape(-1, latent.shape[1], *latent.shape[-2:])
        return (vae.decode(latent, interrupt_check()),)


class VAEEncode:
    CATEGORY = "latent"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",)}}

    def encode(self, vae: Any, pixels: torch.Tensor) -> tuple[dict[str, torch.Tensor]]:
        check_vae(vae)
        return ({"samples": vae.encode(pixels[:, :, :, :3], interrupt_check())},)


def _temporal_inputs(verb: str) -> dict[str, Any]:
    """The tiled nodes' video-chunk inputs (accepted for ComfyUI compatibility; image VAEs ignore them)."""
    return {
        "temporal_size": int_input(64, 8, 4096, step=4, tooltip=f"Video VAEs only: frames per {verb} chunk."),
        "temporal_overlap": int_input(8, 4, 4096, step=4,
                                      tooltip="Video VAEs only: frames shared by neighbouring chunks."),
    }


class VAEDecodeTiled:
    CATEGORY = "_for_testing"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "samples": ("LATENT",), "vae": ("VAE",),
            "tile_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 32}),
            "overlap": ("INT", {"default": 64, "min": 0, "max": 4096, "step": 32}),
            **_temporal_inputs("decoded"),
        }}

    def decode(self, vae: Any, samples: dict[str, Any], tile_size: int, overlap: int = 64,
               temporal_size: int = 64, temporal_overlap: int = 8) -> tuple[torch.Tensor]:
        check_vae(vae)
        if tile_size < overlap * 4:  # ComfyUI keeps the overlap at most a quarter of the tile
            overlap = tile_size // 4
        r = vae.downscale_ratio
        return (vae.decode_tiled(samples["samples"], tile=tile_size // r, overlap=overlap // r, progress=_progress()),)


class VAEEncodeTiled:
    CATEGORY = "_for_testing"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "pixels": ("IMAGE",), "vae": ("VAE",),
            "tile_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 64}),
            "overlap": ("INT", {"default": 64, "min": 0, "max": 4096, "step": 32}),
            **_temporal_inputs("encoded"),
        }}

    def encode(self, vae: Any, pixels: torch.Tensor, tile_size: int, overlap: int,
               temporal_size: int = 64, temporal_overlap: int = 8) -> tuple[dict[str, torch.Tensor]]:
        check_vae(vae)
        return ({"samples": vae.encode_tiled(pixels[:, :, :, :3], tile=tile_size, overlap=overlap,
                                             progress=_progress())},)


def grow_mask(mask: torch.Tensor, by: int) -> torch.Tensor:
    """Dilate a rounded [B,1,H,W] mask by a `by`x`by` box (sum > 0 -> 1)."""
    if by == 0:
        return mask
    kernel = torch.ones((1, 1, by, by))
    padding = math.ceil((by - 1) / 2)
    return torch.clamp(F.conv2d(mask.round(), kernel, padding=padding), 0, 1)


def inpaint_pixels(pixels: torch.Tensor, mask: torch.Tensor, ratio: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels, mask) for an inpaint encode: the mask [B,1,H,W] resized to the image, both center-cropped to
    multiples of `ratio`, and the pixels [B,H,W,C] made mid-grey where the rounded mask is 1 (a copy)."""
    h, w = (pixels.shape[1] // ratio) * ratio, (pixels.shape[2] // ratio) * ratio
    mask = F.interpolate(mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).float(),
                         size=(pixels.shape[1], pixels.shape[2]), mode="bilinear")
    pixels = pixels.clone()
    if (pixels.shape[1], pixels.shape[2]) != (h, w):
        oy, ox = (pixels.shape[1] % ratio) // 2, (pixels.shape[2] % ratio) // 2
        pixels = pixels[:, oy:oy + h, ox:ox + w, :]
        mask = mask[:, :, oy:oy + h, ox:ox + w]
    keep = (1.0 - mask.round()).squeeze(1)  # [B, H, W]
    for c in range(3):
        pixels[:, :, :, c] -= 0.5
        pixels[:, :, :, c] *= keep
        pixels[:, :, :, c] += 0.5
    return pixels, mask


class VAEEncodeForInpaint:
    CATEGORY = "latent/inpaint"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"pixels": ("IMAGE",), "vae": ("VAE",), "mask": ("MASK",),
                             "grow_mask_by": ("INT", {"default": 6, "min": 0, "max": 64, "step": 1})}}

    def encode(self, vae: Any, pixels: torch.Tensor, mask: torch.Tensor, grow_mask_by: int = 6):
        """Masked pixels become mid-grey before encoding; the grown mask becomes the latent's noise_mask."""
        check_vae(vae)
        pixels, mask = inpaint_pixels(pixels, mask, vae.downscale_ratio)
        h, w = pixels.shape[1], pixels.shape[2]
        grown = grow_mask(mask, grow_mask_by)
        latent = vae.encode(pixels, interrupt_check())
        return ({"samples": latent, "noise_mask": grown[:, :, :h, :w].round()},)


NODE_CLASS_MAPPINGS = {
    "VAEDecode": VAEDecode,
    "VAEEncode": VAEEncode,
    "VAEEncodeForInpaint": VAEEncodeForInpaint,
    "VAEDecodeTiled": VAEDecodeTiled,
    "VAEEncodeTiled": VAEEncodeTiled,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "VAEDecode": "VAE Decode",
    "VAEEncode": "VAE Encode",
    "VAEEncodeForInpaint": "VAE Encode (for Inpainting)",
    "VAEDecodeTiled": "VAE Decode (Tiled)",
    "VAEEncodeTiled": "VAE Encode (Tiled)",
}
