"""Conditioning nodes that only edit data: combine, average, concat, areas, masks, timestep ranges, zero-out.

CONDITIONING = list of [cond [B,T,D], extras dict]. Each node copies the extras dict before writing, so the
input (possibly cached and shared) is never modified. The keys written are the ones ComfyUI's sampler reads:
"area" ((h, w, y, x) in latent units, or ("percentage", h, w, y, x)), "strength", "set_area_to_bounds",
"mask", "mask_strength", "start_percent", "end_percent", "pooled_output".
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from .inputs import int_input

log = logging.getLogger(__name__)

Conditioning = list[list[Any]]


def set_values(conditioning: Conditioning, values: dict[str, Any]) -> Conditioning:
    """A copy of `conditioning` with `values` written into every entry's extras."""
    return [[cond, {**extras, **values}] for cond, extras in conditioning]


def _strength() -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})


class ConditioningCombine:
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "combine"
    CATEGORY = "conditioning"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning_1": ("CONDITIONING",), "conditioning_2": ("CONDITIONING",)}}

    def combine(self, conditioning_1: Conditioning, conditioning_2: Conditioning) -> tuple[Conditioning]:
        return (conditioning_1 + conditioning_2,)


def _first_entry(conditioning_from: Conditioning, node: str) -> list[Any]:
    """The entry of `conditioning_from` that Average/Concat use: the first (ComfyUI warns about the others)."""
    if len(conditioning_from) > 1:
        log.warning("%s: conditioning_from has %d entries; only the first is used", node, len(conditioning_from))
    return conditioning_from[0]


def _fit_tokens(cond: torch.Tensor, tokens: int) -> torch.Tensor:
    """Cut `cond` [B,T,D] to `tokens` tokens, or pad it with zero tokens up to that length."""
    cond = cond[:, :tokens]
    if cond.shape[1] < tokens:
        pad = torch.zeros((cond.shape[0], tokens - cond.shape[1], cond.shape[2]), dtype=cond.dtype,
                          device=cond.device)
        cond = torch.cat([cond, pad], dim=1)
    return cond


class ConditioningAverage:
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "addWeighted"
    CATEGORY = "conditioning"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "conditioning_to": ("CONDITIONING",),
            "conditioning_from": ("CONDITIONING",),
            "conditioning_to_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}),
        }}

    def addWeighted(self, conditioning_to: Conditioning, conditioning_from: Conditioning,
                    conditioning_to_strength: float) -> tuple[Conditioning]:
        """to·s + from·(1−s) per entry of `conditioning_to`; only the first entry of `conditioning_from` is used."""
        s = conditioning_to_strength
        first = _first_entry(conditioning_from, "ConditioningAverage")
        cond_from, pooled_from = first[0], first[1].get("pooled_output")
        out = []
        for cond_to, extras in conditioning_to:
            pooled_to = extras.get("pooled_output", pooled_from)
            mixed = torch.mul(cond_to, s) + torch.mul(_fit_tokens(cond_from, cond_to.shape[1]), 1.0 - s)
            extras = extras.copy()
            if pooled_from is not None and pooled_to is not None:
                extras["pooled_output"] = torch.mul(pooled_to, s) + torch.mul(pooled_from, 1.0 - s)
            elif pooled_from is not None:
                extras["pooled_output"] = pooled_from
            out.append([mixed, extras])
        return (out,)


class ConditioningConcat:
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "concat"
    CATEGORY = "conditioning"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning_to": ("CONDITIONING",), "conditioning_from": ("CONDITIONING",)}}

    def concat(self, conditioning_to: Conditioning, conditioning_from: Conditioning) -> tuple[Conditioning]:
        """Append the tokens of the first `conditioning_from` entry to every `conditioning_to` entry."""
        cond_from = _first_entry(conditioning_from, "ConditioningConcat")[0]
        return ([[torch.cat((cond, cond_from), 1), extras.copy()] for cond, extras in conditioning_to],)


class ConditioningSetArea:
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "conditioning"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "conditioning": ("CONDITIONING",),
            "width": int_input(64, 64, step=8),
            "height": int_input(64, 64, step=8),
            "x": int_input(0, 0, step=8),
            "y": int_input(0, 0, step=8),
            "strength": _strength(),
        }}

    def append(self, conditioning: Conditioning, width: int, height: int, x: int, y: int,
               strength: float) -> tuple[Conditioning]:
        area = (height // 8, width // 8, y // 8, x // 8)  # latent units, (h, w, y, x)
        return (set_values(conditioning, {"area": area, "strength": strength, "set_area_to_bounds": False}),)


class ConditioningSetAreaPercentage:
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "conditioning"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        def frac(default: float) -> tuple[str, dict[str, Any]]:
            return ("FLOAT", {"default": default, "min": 0, "max": 1.0, "step": 0.01})

        return {"required": {
            "conditioning": ("CONDITIONING",),
            "width": frac(1.0),
            "height": frac(1.0),
            "x": frac(0),
            "y": frac(0),
            "strength": _strength(),
        }}

    def append(self, conditioning: Conditioning, width: float, height: float, x: float, y: float,
               strength: float) -> tuple[Conditioning]:
        area = ("percentage", height, width, y, x)  # fractions of the latent, resolved by the sampler
        return (set_values(conditioning, {"area": area, "strength": strength, "set_area_to_bounds": False}),)


class ConditioningSetAreaStrength:
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "conditioning"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning": ("CONDITIONING",), "strength": _strength()}}

    def append(self, conditioning: Conditioning, strength: float) -> tuple[Conditioning]:
        return (set_values(conditioning, {"strength": strength}),)


class ConditioningSetMask:
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"
    CATEGORY = "conditioning"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "conditioning": ("CONDITIONING",),
            "mask": ("MASK",),
            "strength": _strength(),
            "set_cond_area": (["default", "mask bounds"],),
        }}

    def append(self, conditioning: Conditioning, mask: torch.Tensor, set_cond_area: str,
               strength: float) -> tuple[Conditioning]:
        if mask.ndim < 3:
            mask = mask.unsqueeze(0)  # [H,W] -> [1,H,W]
        values = {"mask": mask, "set_area_to_bounds": set_cond_area != "default", "mask_strength": strength}
        return (set_values(conditioning, values),)


class ConditioningZeroOut:
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "zero_out"
    CATEGORY = "advanced/conditioning"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"conditioning": ("CONDITIONING",)}}

    def zero_out(self, conditioning: Conditioning) -> tuple[Conditioning]:
        out = []
        for cond, extras in conditioning:
            extras = extras.copy()
            for key in ("pooled_output", "conditioning_lyrics"):
                if extras.get(key) is not None:
                    extras[key] = torch.zeros_like(extras[key])
            out.append([torch.zeros_like(cond), extras])
        return (out,)


class ConditioningSetTimestepRange:
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "set_range"
    CATEGORY = "advanced/conditioning"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "conditioning": ("CONDITIONING",),
            "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
            "end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
        }}

    def set_range(self, conditioning: Conditioning, start: float, end: float) -> tuple[Conditioning]:
        # fractions of the schedule; the sampler turns them into sigmas (timestep_start / timestep_end)
        return (set_values(conditioning, {"start_percent": start, "end_percent": end}),)


NODE_CLASS_MAPPINGS = {
    "ConditioningCombine": ConditioningCombine,
    "ConditioningAverage": ConditioningAverage,
    "ConditioningConcat": ConditioningConcat,
    "ConditioningSetArea": ConditioningSetArea,
    "ConditioningSetAreaPercentage": ConditioningSetAreaPercentage,
    "ConditioningSetAreaStrength": ConditioningSetAreaStrength,
    "ConditioningSetMask": ConditioningSetMask,
    "ConditioningZeroOut": ConditioningZeroOut,
    "ConditioningSetTimestepRange": ConditioningSetTimestepRange,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ConditioningCombine": "Conditioning (Combine)",
    "ConditioningConcat": "Conditioning (Concat)",
    "ConditioningSetArea": "Conditioning (Set Area)",
    "ConditioningSetAreaPercentage": "Conditioning (Set Area with Percentage)",
    "ConditioningSetMask": "Conditioning (Set Mask)",
}
