"""Model merging nodes (ComfyUI's comfy_extras/nodes_model_merging*.py and nodes_attention_multiply.py): weight
merges, differences and scales as patches on clones (models/merging.py), and saving checkpoints / CLIP / VAE / UNet
files with every patch applied (models/saving.py)."""
from __future__ import annotations

import json
from typing import Any

import torch

from .. import context
from ..models import merging, saving

_MERGING = "comfy_extras.nodes_model_merging"
_SPECIFIC = "comfy_extras.nodes_model_merging_model_specific"


def _unit(default: float = 1.0) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": default, "min": 0.0, "max": 1.0, "step": 0.01})


def _multiplier() -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})


class _ModelMerge:
    CATEGORY = "advanced/model_merging"
    RELATIVE_PYTHON_MODULE = _MERGING
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "merge"


class ModelMergeSimple(_ModelMerge):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",), "ratio": _unit()}}

    def merge(self, model1: Any, model2: Any, ratio: float) -> tuple[Any]:
        return (merging.merge_models(model1, model2, lambda _: (1.0 - ratio, ratio)),)


class ModelMergeSubtract(_ModelMerge):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",), "multiplier": _multiplier()}}

    def merge(self, model1: Any, model2: Any, multiplier: float) -> tuple[Any]:
        return (merging.merge_models(model1, model2, lambda _: (-multiplier, multiplier)),)


class ModelMergeAdd(_ModelMerge):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",)}}

    def merge(self, model1: Any, model2: Any) -> tuple[Any]:
        return (merging.merge_models(model1, model2, lambda _: (1.0, 1.0)),)


class ModelMergeBlocks(_ModelMerge):
    """Ratios by UNet key prefix; the longest matching prefix wins, keys matching none take the first ratio."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model1": ("MODEL",), "model2": ("MODEL",), **{b: _unit() for b in cls.blocks()}}}

    @classmethod
    def blocks(cls) -> list[str]:
        return ["input", "middle", "out"]

    def merge(self, model1: Any, model2: Any, **ratios: float) -> tuple[Any]:
        table = [(b, float(ratios[b])) for b in self.blocks() if b in ratios]  # the schema's order, not the call's
        return (merging.merge_models(model1, model2, merging.block_strengths(table)),)


def _unet_blocks(inputs: int, dot: str) -> list[str]:
    """ModelMergeSD1/SD2/SDXL block names: time/label embeddings, each input/middle/output block, out."""
    return (["time_embed.", "label_emb."] + [f"input_blocks.{i}{dot}" for i in range(inputs)]
            + [f"middle_block.{i}{dot}" for i in range(3)] + [f"output_blocks.{i}{dot}" for i in range(inputs)]
            + ["out."])


class ModelMergeSD1(ModelMergeBlocks):
    CATEGORY = "advanced/model_merging/model_specific"
    RELATIVE_PYTHON_MODULE = _SPECIFIC

    @classmethod
    def blocks(cls) -> list[str]:
        return _unet_blocks(12, ".")


class ModelMergeSD2(ModelMergeSD1):
    pass


class ModelMergeSDXL(ModelMergeSD1):
    @classmethod
    def blocks(cls) -> list[str]:
        return _unet_blocks(9, "")


class _CLIPMerge:
    CATEGORY = "advanced/model_merging"
    RELATIVE_PYTHON_MODULE = _MERGING
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "merge"


class CLIPMergeSimple(_CLIPMerge):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip1": ("CLIP",), "clip2": ("CLIP",), "ratio": _unit()}}

    def merge(self, clip1: Any, clip2: Any, ratio: float) -> tuple[Any]:
        return (merging.merge_clips(clip1, clip2, lambda _: (1.0 - ratio, ratio)),)


class CLIPMergeSubtract(_CLIPMerge):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip1": ("CLIP",), "clip2": ("CLIP",), "multiplier": _multiplier()}}

    def merge(self, clip1: Any, clip2: Any, multiplier: float) -> tuple[Any]:
        return (merging.merge_clips(clip1, clip2, lambda _: (-multiplier, multiplier)),)


class CLIPMergeAdd(_CLIPMerge):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip1": ("CLIP",), "clip2": ("CLIP",)}}

    def merge(self, clip1: Any, clip2: Any) -> tuple[Any]:
        return (merging.merge_clips(clip1, clip2, lambda _: (1.0, 1.0)),)


# --- attention multiply (V3 nodes in ComfyUI) ----------------------------------------------------------------------
def _factor() -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})


class _AttentionMultiply:
    INFO_V3 = True
    EXPERIMENTAL = True
    CATEGORY = "_for_testing/attention_experiments"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_attention_multiply"
    FUNCTION = "patch"
    SOCKET = "MODEL"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        name = cls.SOCKET.lower()
        return {"required": {name: (cls.SOCKET, {}), "q": _factor(), "k": _factor(), "v": _factor(),
                             "out": _factor()}}


class UNetSelfAttentionMultiply(_AttentionMultiply):
    RETURN_TYPES = ("MODEL",)
    ATTN = "attn1"

    def patch(self, model: Any, q: float, k: float, v: float, out: float) -> tuple[Any]:
        return (merging.unet_attention_multiply(model, self.ATTN, q, k, v, out),)


class UNetCrossAttentionMultiply(UNetSelfAttentionMultiply):
    ATTN = "attn2"


class CLIPAttentionMultiply(_AttentionMultiply):
    RETURN_TYPES = ("CLIP",)
    SOCKET = "CLIP"

    def patch(self, clip: Any, q: float, k: float, v: float, out: float) -> tuple[Any]:
        return (merging.clip_attention_multiply(clip, q, k, v, out),)


# --- saving --------------------------------------------------------------------------------------------------------
def _hidden() -> dict[str, str]:
    return {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def _workflow_metadata(prompt: Any, extra_pnginfo: dict[str, Any] | None) -> dict[str, str]:
    """`prompt` and every extra_pnginfo entry as JSON strings, unless the engine is set not to save metadata."""
    if not context.current().config.save_metadata:
        return {}
    meta = {"prompt": json.dumps(prompt) if prompt is not None else ""}
    for key, value in (extra_pnginfo or {}).items():
        meta[key] = json.dumps(value)
    return meta


def _target(filename_prefix: str):
    """(folder, file name with the next counter, base name, counter) under the output folder."""
    target = context.current().storage.save_image_path(filename_prefix)
    name = f"{target.filename}_{target.counter:05}_.safetensors"
    return target.full_folder / name, target


def save_checkpoint(model: Any, clip: Any, vae: Any, filename_prefix: str, prompt: Any,
                    extra_pnginfo: dict[str, Any] | None) -> None:
    """ComfyUI's save_checkpoint: the LDM-layout file, modelspec fields, then the workflow metadata."""
    path, target = _target(filename_prefix)
    meta = saving.checkpoint_metadata(model, f"{target.filename} {target.counter}")
    meta.update(_workflow_metadata(prompt, extra_pnginfo))
    sd = saving.unet_state_dict(model)
    extra_dtype = torch.float16 if model.dtype == torch.float16 else None  # ComfyUI: fp16 model -> fp16 CLIP/VAE
    if clip is not None:
        sd.update(saving.clip_checkpoint_state_dict(clip, extra_dtype))
    if vae is not None:
        sd.update(saving.vae_state_dict(vae, saving.VAE_PREFIX, extra_dtype))
    saving.write_safetensors(path, sd, meta)


class _Save:
    CATEGORY = "advanced/model_merging"
    RELATIVE_PYTHON_MODULE = _MERGING
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True


class CheckpointSave(_Save):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",), "vae": ("VAE",),
                             "filename_prefix": ("STRING", {"default": "checkpoints/ComfyUI"})},
                "hidden": _hidden()}

    def save(self, model: Any, clip: Any, vae: Any, filename_prefix: str, prompt: Any = None,
             extra_pnginfo: dict[str, Any] | None = None) -> dict[str, Any]:
        save_checkpoint(model, clip, vae, filename_prefix, prompt, extra_pnginfo)
        return {}


class ModelSave(_Save):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "filename_prefix": ("STRING", {"default": "diffusion_models/ComfyUI"})},
                "hidden": _hidden()}

    def save(self, model: Any, filename_prefix: str, prompt: Any = None,
             extra_pnginfo: dict[str, Any] | None = None) -> dict[str, Any]:
        save_checkpoint(model, None, None, filename_prefix, prompt, extra_pnginfo)
        return {}


_CLIP_FILE_SUFFIX = {"l": "_clip_l", "g": "_clip_g", "h": "_clip_h"}  # ComfyUI's one file per encoder


class CLIPSave(_Save):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip": ("CLIP",), "filename_prefix": ("STRING", {"default": "clip/ComfyUI"})},
                "hidden": _hidden()}

    def save(self, clip: Any, filename_prefix: str, prompt: Any = None,
             extra_pnginfo: dict[str, Any] | None = None) -> dict[str, Any]:
        meta = _workflow_metadata(prompt, extra_pnginfo)
        if meta:
            meta = {"format": "pt", **meta}
        modules = clip.modules()
        for role, sd in saving.clip_role_state_dicts(clip).items():
            path, _ = _target(filename_prefix + _CLIP_FILE_SUFFIX.get(role, ""))
            saving.write_safetensors(path, saving.hf_text_state_dict(modules[role], sd), meta)
        return {}


class VAESave(_Save):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"vae": ("VAE",), "filename_prefix": ("STRING", {"default": "vae/ComfyUI_vae"})},
                "hidden": _hidden()}

    def save(self, vae: Any, filename_prefix: str, prompt: Any = None,
             extra_pnginfo: dict[str, Any] | None = None) -> dict[str, Any]:
        path, _ = _target(filename_prefix)
        saving.write_safetensors(path, saving.vae_state_dict(vae), _workflow_metadata(prompt, extra_pnginfo))
        return {}


NODE_CLASS_MAPPINGS = {
    "ModelMergeSimple": ModelMergeSimple,
    "ModelMergeBlocks": ModelMergeBlocks,
    "ModelMergeSubtract": ModelMergeSubtract,
    "ModelMergeAdd": ModelMergeAdd,
    "CheckpointSave": CheckpointSave,
    "CLIPMergeSimple": CLIPMergeSimple,
    "CLIPMergeSubtract": CLIPMergeSubtract,
    "CLIPMergeAdd": CLIPMergeAdd,
    "CLIPSave": CLIPSave,
    "VAESave": VAESave,
    "ModelSave": ModelSave,
    "ModelMergeSD1": ModelMergeSD1,
    "ModelMergeSD2": ModelMergeSD2,
    "ModelMergeSDXL": ModelMergeSDXL,
    "UNetSelfAttentionMultiply": UNetSelfAttentionMultiply,
    "UNetCrossAttentionMultiply": UNetCrossAttentionMultiply,
    "CLIPAttentionMultiply": CLIPAttentionMultiply,
}
NODE_DISPLAY_NAME_MAPPINGS = {"CheckpointSave": "Save Checkpoint"}
