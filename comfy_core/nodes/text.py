"""Text-encoding nodes: prompts -> CONDITIONING through a CLIP, and the clip-skip setting.

CONDITIONING from these nodes is [[cond [1, 77·chunks, D], {"pooled_output": pooled [1, P], ...extras}]]; the SDXL
nodes add the size/crop (base) or aesthetic-score (refiner) numbers the SDXL UNet embeds in its ADM input.
"""
from __future__ import annotations

from typing import Any

from ..models.text_encoders import CLIP
from .inputs import int_input


def _size(default: int) -> tuple[str, dict[str, int]]:
    return int_input(default, 0, step=None)


def prompt_text(tooltip: str | None = None) -> tuple[str, dict[str, Any]]:
    options: dict[str, Any] = {"multiline": True, "dynamicPrompts": True}
    if tooltip:
        options["tooltip"] = tooltip
    return ("STRING", options)


def require_clip(clip: Any, roles: tuple[str, ...], node: str) -> CLIP:
    if clip is None:
        raise RuntimeError("ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node your "
                           "checkpoint does not contain a valid clip or text encoder model.")
    missing = [r for r in roles if r not in clip.encoders]
    if missing:
        raise ValueError(f"{node} needs an SDXL CLIP (text encoders {list(roles)}); this CLIP has "
                         f"{list(clip.encoders)}")
    return clip


class CLIPTextEncode:
    DESCRIPTION = "Turns a text prompt into conditioning with a CLIP text encoder, to steer what the model draws."
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("The encoded prompt, ready for a sampler's positive or negative input.",)
    FUNCTION = "encode"
    CATEGORY = "conditioning"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "text": prompt_text("The prompt to encode."),
            "clip": ("CLIP", {"tooltip": "The CLIP text encoder to use."}),
        }}

    def encode(self, clip: CLIP, text: str) -> tuple[list]:
        clip = require_clip(clip, (), "CLIPTextEncode")
        return (clip.encode_conditioning(clip.tokenize(text)),)


class _SDXLTextEncode:
    """What ComfyUI reports for its two SDXL text-encode nodes (V3 schema nodes of comfy_extras.nodes_clip_sdxl)."""

    DESCRIPTION = ""
    INFO_V3 = True
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_clip_sdxl"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "advanced/conditioning"


class CLIPTextEncodeSDXL(_SDXLTextEncode):
    """SDXL base: separate prompts for bigG (text_g) and CLIP-L (text_l), plus the size/crop conditioning."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "clip": ("CLIP", {}),
            "width": _size(1024), "height": _size(1024),
            "crop_w": _size(0), "crop_h": _size(0),
            "target_width": _size(1024), "target_height": _size(1024),
            "text_g": prompt_text(), "text_l": prompt_text(),
        }}

    def encode(self, clip: CLIP, width: int, height: int, crop_w: int, crop_h: int, target_width: int,
               target_height: int, text_g: str, text_l: str) -> tuple[list]:
        clip = require_clip(clip, ("l", "g"), "CLIPTextEncodeSDXL")
        tokens = clip.tokenize(text_g)
        tokens["l"] = clip.tokenize(text_l)["l"]
        if len(tokens["l"]) != len(tokens["g"]):  # pad the shorter prompt with empty chunks
            empty = clip.tokenize("")
            while len(tokens["l"]) < len(tokens["g"]):
                tokens["l"] += empty["l"]
            while len(tokens["l"]) > len(tokens["g"]):
                tokens["g"] += empty["g"]
        extras = {"width": width, "height": height, "crop_w": crop_w, "crop_h": crop_h,
                  "target_width": target_width, "target_height": target_height}
        return (clip.encode_conditioning(tokens, extras),)


class CLIPTextEncodeSDXLRefiner(_SDXLTextEncode):
    """SDXL refiner: one prompt plus the aesthetic score and size the refiner UNet is conditioned on."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "ascore": ("FLOAT", {"default": 6.0, "min": 0.0, "max": 1000.0, "step": 0.01}),
            "width": _size(1024), "height": _size(1024),
            "text": prompt_text(),
            "clip": ("CLIP", {}),
        }}

    def encode(self, clip: CLIP, ascore: float, width: int, height: int, text: str) -> tuple[list]:
        clip = require_clip(clip, (), "CLIPTextEncodeSDXLRefiner")
        extras = {"aesthetic_score": ascore, "width": width, "height": height}
        return (clip.encode_conditioning(clip.tokenize(text), extras),)


class CLIPSetLastLayer:
    """Clip skip: take the text features from an earlier layer (-1 = last, -2 = penultimate, ...)."""

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "set_last_layer"
    CATEGORY = "conditioning"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "clip": ("CLIP",),
            "stop_at_clip_layer": ("INT", {"default": -1, "min": -24, "max": -1, "step": 1}),
        }}

    def set_last_layer(self, clip: CLIP, stop_at_clip_layer: int) -> tuple[CLIP]:
        clip = clip.clone()
        clip.clip_layer(stop_at_clip_layer)
        return (clip,)


NODE_CLASS_MAPPINGS = {
    "CLIPTextEncode": CLIPTextEncode,
    "CLIPTextEncodeSDXL": CLIPTextEncodeSDXL,
    "CLIPTextEncodeSDXLRefiner": CLIPTextEncodeSDXLRefiner,
    "CLIPSetLastLayer": CLIPSetLastLayer,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "CLIPTextEncode": "CLIP Text Encode (Prompt)",
    "CLIPSetLastLayer": "CLIP Set Last Layer",
}
