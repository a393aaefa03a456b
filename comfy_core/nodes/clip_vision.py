"""CLIP vision nodes: CLIPVisionLoader, CLIPVisionEncode, unCLIPConditioning, unCLIPCheckpointLoader.

CLIPVisionEncode deliberately lists `crop` as optional with default "center" (what ComfyUI did before the input
existed), so API workflows written without it still run; see spec/README.md.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..models.checkpoint import open_model_file
from ..models.clip_vision import ClipVisionModel, clip_vision_from_state_dict, find_vision_prefix, load_clip_vision
from .loaders import device_dtype, embedding_dirs, model_cache, model_files, model_path

log = logging.getLogger(__name__)


def _vision_from_checkpoint(path: Path, device: torch.device, dtype: torch.dtype) -> ClipVisionModel | None:
    sd = open_model_file(path)
    try:
        prefix = find_vision_prefix(sd)
        if prefix is None:
            return None
        return clip_vision_from_state_dict(sd, prefix, device=device, dtype=dtype)
    finally:
        sd.close()


class CLIPVisionLoader:
    """Load a CLIP image encoder (ViT-L, ViT-H or ViT-bigG vision tower with its projection)."""
    CATEGORY = "loaders"
    RETURN_TYPES = ("CLIP_VISION",)
    FUNCTION = "load_clip"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip_name": (model_files("clip_vision"),)}}

    def load_clip(self, clip_name: str) -> tuple[ClipVisionModel]:
        path = model_path("clip_vision", clip_name)
        device, dtype = device_dtype()
        model = model_cache().get_custom(path, "clip_vision",
                                         lambda: load_clip_vision(path, device=device, dtype=dtype),
                                         device=device, dtype=dtype)
        return (model,)


class CLIPVisionEncode:
    """Encode an image with a CLIP vision model into image embeddings and hidden states."""
    CATEGORY = "conditioning"
    RETURN_TYPES = ("CLIP_VISION_OUTPUT",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip_vision": ("CLIP_VISION",), "image": ("IMAGE",)},
                "optional": {"crop": (["center", "none"], {"default": "center"})}}

    def encode(self, clip_vision: ClipVisionModel, image: torch.Tensor, crop: str = "center") -> tuple[Any]:
        return (clip_vision.encode_image(image, crop=crop == "center"),)


class unCLIPConditioning:  # noqa: N801 - ComfyUI's class name
    """Attach a CLIP image embedding to the conditioning (unCLIP models, SDXL revision)."""
    CATEGORY = "conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_adm"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "conditioning": ("CONDITIONING",),
            "clip_vision_output": ("CLIP_VISION_OUTPUT",),
            "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
            "noise_augmentation": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
        }}

    def apply_adm(self, conditioning: list, clip_vision_output: Any, strength: float,
                  noise_augmentation: float) -> tuple[list]:
        if strength == 0:
            return (conditioning,)
        entry = {"clip_vision_output": clip_vision_output, "strength": strength,
                 "noise_augmentation": noise_augmentation}
        out = []
        for tokens, extras in conditioning:
            extras = dict(extras)
            extras["unclip_conditioning"] = list(extras.get("unclip_conditioning") or []) + [entry]
            out.append([tokens, extras])
        return (out,)


class unCLIPCheckpointLoader:  # noqa: N801 - ComfyUI's class name
    """Load an unCLIP checkpoint: its model, text encoder, VAE and the CLIP vision tower stored with it."""
    CATEGORY = "loaders"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE", "CLIP_VISION")
    FUNCTION = "load_checkpoint"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"ckpt_name": (model_files("checkpoints"),)}}

    def load_checkpoint(self, ckpt_name: str) -> tuple[Any, Any, Any, Any]:
        path = model_path("checkpoints", ckpt_name)
        device, dtype = device_dtype()
        cache = model_cache()
        model, clip, vae = cache.load_checkpoint(path, device=device, dtype=dtype, embedding_dirs=embedding_dirs())
        vision = cache.get_custom(path, "clip_vision", lambda: _vision_from_checkpoint(path, device, dtype),
                                  device=device, dtype=dtype)
        if vision is None:
            log.warning("%s has no CLIP vision tower; CLIP_VISION output is None", path)
        return model, clip, vae, vision


NODE_CLASS_MAPPINGS = {
    "CLIPVisionLoader": CLIPVisionLoader,
    "CLIPVisionEncode": CLIPVisionEncode,
    "unCLIPConditioning": unCLIPConditioning,
    "unCLIPCheckpointLoader": unCLIPCheckpointLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "CLIPVisionLoader": "Load CLIP Vision",
    "CLIPVisionEncode": "CLIP Vision Encode",
    "unCLIPConditioning": "unCLIPConditioning",
    "unCLIPCheckpointLoader": "unCLIPCheckpointLoader",
}
