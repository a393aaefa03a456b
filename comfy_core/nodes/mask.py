"""Mask nodes: solid masks, inversion, and conversion between MASK [B,H,W] and IMAGE [B,H,W,C]."""
from __future__ import annotations

from typing import Any

import torch

from .inputs import int_input

_EXTRAS = "comfy_extras.nodes_mask"


class SolidMask:
    RETURN_TYPES = ("MASK",)
    FUNCTION = "solid"
    CATEGORY = "mask"
    RELATIVE_PYTHON_MODULE = _EXTRAS

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "value": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
            "width": int_input(512, 1),
            "height": int_input(512, 1),
        }}

    def solid(self, value: float, width: int, height: int) -> tuple[torch.Tensor]:
        return (torch.full((1, height, width), value, dtype=torch.float32),)


class InvertMask:
    RETURN_TYPES = ("MASK",)
    FUNCTION = "invert"
    CATEGORY = "mask"
    RELATIVE_PYTHON_MODULE = _EXTRAS

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"mask": ("MASK",)}}

    def invert(self, mask: torch.Tensor) -> tuple[torch.Tensor]:
        return (1.0 - mask,)


class MaskToImage:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "mask_to_image"
    CATEGORY = "mask"
    RELATIVE_PYTHON_MODULE = _EXTRAS

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"mask": ("MASK",)}}

    def mask_to_image(self, mask: torch.Tensor) -> tuple[torch.Tensor]:
        # [..,H,W] -> [B,H,W,1] -> grey RGB [B,H,W,3] (an expanded view, as in ComfyUI)
        return (mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1).expand(-1, -1, -1, 3),)


class ImageToMask:
    CHANNELS = ["red", "green", "blue", "alpha"]
    RETURN_TYPES = ("MASK",)
    FUNCTION = "image_to_mask"
    CATEGORY = "mask"
    RELATIVE_PYTHON_MODULE = _EXTRAS

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",), "channel": (list(cls.CHANNELS),)}}

    def image_to_mask(self, image: torch.Tensor, channel: str) -> tuple[torch.Tensor]:
        index = self.CHANNELS.index(channel)
        if index >= image.shape[-1]:
            raise ValueError(f"the image has {image.shape[-1]} channels, so it has no {channel} channel")
        return (image[:, :, :, index],)


NODE_CLASS_MAPPINGS = {
    "SolidMask": SolidMask,
    "InvertMask": InvertMask,
    "MaskToImage": MaskToImage,
    "ImageToMask": ImageToMask,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "MaskToImage": "Convert Mask to Image",
    "ImageToMask": "Convert Image to Mask",
}
