"""ControlNet preprocessors from comfyui_controlnet_aux, with that pack's node names, inputs and category.

HEDPreprocessor and FakeScribblePreprocessor need `ControlNetHED.pth` in the annotators folder
(`EngineConfig.annotators_dir`, default <models_dir>/annotators); ScribblePreprocessor needs no weights. Outputs are
IMAGE batches at the detection size (short side = resolution), as the current pack returns them.
"""
from __future__ import annotations

from typing import Any

import torch

from .. import context, preprocessors
from ..models.hed import HEDNetwork, find_hed_file, hed_detect, load_hed
from .inputs import int_input
from .loaders import device_dtype, model_cache

CATEGORY = "ControlNet Preprocessors/Line Extractors"
MODULE = "custom_nodes.comfyui_controlnet_aux"  # what ComfyUI reports for these nodes


def _resolution() -> tuple[str, dict[str, int]]:
    return int_input(512, 64, step=64)


def _safe() -> tuple[list[str], dict[str, str]]:
    return (["enable", "disable"], {"default": "enable"})


def _hed_network() -> HEDNetwork:
    path = find_hed_file(context.current().folders)
    device, _ = device_dtype()
    return model_cache().get_custom(path, "hed", lambda: load_hed(path, device), device=device, dtype=torch.float32)


def _progress(value: int, total: int) -> None:
    context.current().progress(value, total)


class HEDPreprocessor:
    """Soft edge map (HED) of an image, for soft-edge ControlNets."""
    CATEGORY = CATEGORY
    RELATIVE_PYTHON_MODULE = MODULE
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "execute"
    SCRIBBLE = False  # HED edges as they are

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",)}, "optional": {"safe": _safe(), "resolution": _resolution()}}

    def execute(self, image: torch.Tensor, resolution: int = 512, safe: str = "enable", **_: Any) -> tuple:
        net = _hed_network()
        out = preprocessors.common_annotator_call(
            lambda px, res: hed_detect(net, px, res, safe=safe == "enable", scribble=self.SCRIBBLE), image,
            resolution, _progress)
        return (out,)


class FakeScribblePreprocessor(HEDPreprocessor):
    """Thick binary scribble lines derived from the HED edge map (scribble_hed)."""

    SCRIBBLE = True


class ScribblePreprocessor:
    """Binary scribble map of a drawing: dark strokes stay black, everything else turns white."""
    CATEGORY = CATEGORY
    RELATIVE_PYTHON_MODULE = MODULE
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "execute"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",)}, "optional": {"resolution": _resolution()}}

    def execute(self, image: torch.Tensor, resolution: int = 512, **_: Any) -> tuple:
        return (preprocessors.common_annotator_call(preprocessors.scribble_detector, image, resolution, _progress),)


NODE_CLASS_MAPPINGS = {
    "HEDPreprocessor": HEDPreprocessor,
    "FakeScribblePreprocessor": FakeScribblePreprocessor,
    "ScribblePreprocessor": ScribblePreprocessor,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "HEDPreprocessor": "HED Soft-Edge Lines",
    "FakeScribblePreprocessor": "Fake Scribble Lines (aka scribble_hed)",
    "ScribblePreprocessor": "Scribble Lines",
}
