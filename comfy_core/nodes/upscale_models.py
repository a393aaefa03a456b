"""Upscale-model nodes (ComfyUI's comfy_extras.nodes_upscale_model): load an ESRGAN-family file, upscale with it.

The model is loaded once per (file, device) through the engine's ModelCache and runs in float32 where it was loaded.
Upscaling is tiled like ComfyUI (512-pixel tiles, 32 overlap, feathered blend); a CUDA out-of-memory error halves the
tile and starts over, down to 128. Each tile reports progress, which is also an interrupt point.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from .. import context
from ..models.tiling import tiled_scale, tiled_scale_steps
from ..models.upscale_layouts import UpscaleModel, load_upscale_model
from .loaders import device_dtype, model_cache, model_files, model_path

log = logging.getLogger(__name__)

TILE = 512
OVERLAP = 32
MIN_TILE = 128
MODULE = "comfy_extras.nodes_upscale_model"


class UpscaleModelLoader:
    INFO_V3 = True
    CATEGORY = "loaders"
    RETURN_TYPES = ("UPSCALE_MODEL",)
    FUNCTION = "load_model"
    RELATIVE_PYTHON_MODULE = MODULE

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model_name": ("COMBO", {"multiselect": False,
                                                       "options": model_files("upscale_models")})}}

    def load_model(self, model_name: str) -> tuple[UpscaleModel]:
        path = model_path("upscale_models", model_name)
        device = device_dtype()[0]

        def load() -> UpscaleModel:
            return load_upscale_model(path, device=device, dtype=torch.float32)

        model = model_cache().get_custom(path, "upscale_model", load, device=device, dtype=torch.float32)
        log.debug("loaded %r", model)
        return (model,)


def _check_image(model: UpscaleModel, image: torch.Tensor) -> None:
    if image.ndim != 4:
        raise ValueError(f"expected an IMAGE [B,H,W,C], got a tensor of shape {list(image.shape)}")
    if image.shape[-1] != model.input_channels:
        raise ValueError(f"the upscale model takes {model.input_channels}-channel images; this image has "
                         f"{image.shape[-1]} channels")


def _tile_counter(total: int) -> Callable[[], None]:
    """A per-tile callback reporting (tiles done, total) through the node context: progress and interrupt point."""
    ctx = context.current_or_none()
    done = 0

    def on_tile() -> None:
        nonlocal done
        done += 1
        if ctx is not None:
            ctx.progress(done, total)

    return on_tile


def upscale_image(model: UpscaleModel, image: torch.Tensor, tile: int = TILE, overlap: int = OVERLAP) -> torch.Tensor:
    """[B,H,W,C] in 0..1 -> [B,H·s,W·s,C] clamped to 0..1 (float32, CPU); halves the tile on CUDA out-of-memory."""
    _check_image(model, image)
    pixels = image.movedim(-1, -3).to(model.device, torch.float32)  # [B,H,W,C] -> [B,C,H,W]
    while True:
        steps = pixels.shape[0] * tiled_scale_steps(pixels.shape[3], pixels.shape[2], tile, tile, overlap)
        try:
            out = tiled_scale(pixels, model, tile_x=tile, tile_y=tile, overlap=overlap, upscale_amount=model.scale,
                              out_channels=model.output_channels, on_tile=_tile_counter(steps))
            break
        except torch.OutOfMemoryError:
            tile //= 2
            if tile < MIN_TILE:
                raise
            log.warning("upscale: out of memory; retrying with %d-pixel tiles", tile)
            torch.cuda.empty_cache()
    return out.movedim(-3, -1).clamp(0.0, 1.0)  # [B,C,H,W] -> [B,H,W,C]


class ImageUpscaleWithModel:
    INFO_V3 = True
    CATEGORY = "image/upscaling"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    RELATIVE_PYTHON_MODULE = MODULE

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"upscale_model": ("UPSCALE_MODEL", {}), "image": ("IMAGE", {})}}

    def upscale(self, upscale_model: UpscaleModel, image: torch.Tensor) -> tuple[torch.Tensor]:
        return (upscale_image(upscale_model, image),)


NODE_CLASS_MAPPINGS = {
    "UpscaleModelLoader": UpscaleModelLoader,
    "ImageUpscaleWithModel": ImageUpscaleWithModel,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "UpscaleModelLoader": "Load Upscale Model",
    "ImageUpscaleWithModel": "Upscale Image (using Model)",
}
