"""ControlNet nodes: ControlNetLoader, DiffControlNetLoader, ControlNetApply (old), ControlNetApplyAdvanced.

Applying never changes the loaded CONTROL_NET: each application is a copy carrying its hint, strength and percent
window, chained to the ControlNet already on the conditioning entry (`previous_controlnet`), so several ControlNets add
up. The sampler contract is in models/controlnet.py.
"""
from __future__ import annotations

from typing import Any

import torch

from ..models.controlnet import ControlNet, load_controlnet
from .loaders import device_dtype, model_cache, model_files, model_path


def _load(name: str, model: Any = None) -> ControlNet:
    path = model_path("controlnet", name)
    device, dtype = device_dtype()
    if model is not None:  # a difference ControlNet depends on the model it was combined with: do not cache
        return load_controlnet(path, model=model, device=device, dtype=dtype)
    return model_cache().get_custom(path, "controlnet", lambda: load_controlnet(path, device=device, dtype=dtype),
                                    device=device, dtype=dtype)


class ControlNetLoader:
    """Load a ControlNet or a control-LoRA from the controlnet folder."""
    CATEGORY = "loaders"
    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load_controlnet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"control_net_name": (model_files("controlnet"),)}}

    def load_controlnet(self, control_net_name: str) -> tuple[ControlNet]:
        return (_load(control_net_name),)


class DiffControlNetLoader:
    """Load a ControlNet, adding the given model's weights when the file stores only differences."""
    CATEGORY = "loaders"
    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load_controlnet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "control_net_name": (model_files("controlnet"),)}}

    def load_controlnet(self, model: Any, control_net_name: str) -> tuple[ControlNet]:
        return (_load(control_net_name, model),)


class ControlNetApply:
    """Apply a ControlNet with a hint image to a conditioning (older node; also guides the negative)."""
    CATEGORY = "conditioning/controlnet"
    DEPRECATED = True
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_controlnet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "conditioning": ("CONDITIONING",), "control_net": ("CONTROL_NET",), "image": ("IMAGE",),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
        }}

    def apply_controlnet(self, conditioning: list, control_net: ControlNet, image: torch.Tensor,
                         strength: float) -> tuple[list]:
        if strength == 0:
            return (conditioning,)
        hint = image.movedim(-1, 1)  # [B, C, H, W]
        out = []
        for tokens, extras in conditioning:
            extras = dict(extras)
            applied = control_net.copy().set_cond_hint(hint, strength)
            applied.set_previous_controlnet(extras.get("control"))
            extras["control"] = applied
            extras["control_apply_to_uncond"] = True
            out.append([tokens, extras])
        return (out,)


class ControlNetApplyAdvanced:
    """Apply a ControlNet to positive and negative conditioning over a window of the sampling steps."""
    CATEGORY = "conditioning/controlnet"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "apply_controlnet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "control_net": ("CONTROL_NET",),
                "image": ("IMAGE",),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
            },
            "optional": {"vae": ("VAE",)},
        }

    def apply_controlnet(self, positive: list, negative: list, control_net: ControlNet, image: torch.Tensor,
                         strength: float, start_percent: float, end_percent: float,
                         vae: Any = None) -> tuple[list, list]:
        if strength == 0:
            return (positive, negative)
        hint = image.movedim(-1, 1)
        applied: dict[int, ControlNet] = {}  # one application per previous ControlNet, shared by pos and neg
        out = []
        for conditioning in (positive, negative):
            entries = []
            for tokens, extras in conditioning:
                extras = dict(extras)
                previous = extras.get("control")
                if id(previous) not in applied:
                    c = control_net.copy().set_cond_hint(hint, strength, (start_percent, end_percent), vae)
                    applied[id(previous)] = c.set_previous_controlnet(previous)
                extras["control"] = applied[id(previous)]
                extras["control_apply_to_uncond"] = False
                entries.append([tokens, extras])
            out.append(entries)
        return out[0], out[1]


NODE_CLASS_MAPPINGS = {
    "ControlNetLoader": ControlNetLoader,
    "DiffControlNetLoader": DiffControlNetLoader,
    "ControlNetApply": ControlNetApply,
    "ControlNetApplyAdvanced": ControlNetApplyAdvanced,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "ControlNetLoader": "Load ControlNet Model",
    "DiffControlNetLoader": "Load ControlNet Model (diff)",
    "ControlNetApply": "Apply ControlNet (OLD)",
    "ControlNetApplyAdvanced": "Apply ControlNet",
}
