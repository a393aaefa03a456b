"""State dicts for saving, with every patch applied, in the key layouts ComfyUI writes (comfy/sd.py save_checkpoint,
CLIPSave, VAESave): a checkpoint is `model.diffusion_model.*` + `first_stage_model.*` + the family's text-encoder
prefixes (`cond_stage_model.*` / `conditioner.embedders.*`), the layout our loaders read back.

Weights are copied out while the shared module holds the object's patches (under its lock), so the file gets the
patched values and the cached module is left as other users expect.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..errors import ComfyCoreError
from .clip_text import HFClipText, hf_parameter_map
from .diffusion import DiffusionModel
from .lora import clip_patched
from .text_encoders import CHECKPOINT_PREFIXES

UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."
_SD1_DROPPED = ("text_projection.weight", "logit_scale")  # ComfyUI drops these from SD1 CLIP-L when saving
_MODELSPEC_ARCH = {"sdxl": "stable-diffusion-xl-v1-base", "sdxl_refiner": "stable-diffusion-xl-v1-refiner"}


def _copy(sd: dict[str, torch.Tensor], prefix: str = "", dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Detached contiguous copies (the module may be re-patched after the lock is released)."""
    out = {}
    for key, t in sd.items():
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        out[prefix + key] = t.to("cpu", copy=True).contiguous()
    return out


def unet_state_dict(model: DiffusionModel) -> dict[str, torch.Tensor]:
    """`model.diffusion_model.*` with the MODEL's patches applied; `v_pred` (and `ztsnr`) markers for v-prediction
    models, which the loaders read back."""
    with model.patched_unet() as unet:
        sd = _copy(unet.state_dict(), UNET_PREFIX)
    if model.spec.prediction == "v":
        sd["v_pred"] = torch.tensor([])
        if model.spec.ztsnr:
            sd["ztsnr"] = torch.tensor([])
    return sd


def clip_role_state_dicts(clip: Any) -> dict[str, dict[str, torch.Tensor]]:
    """role -> the encoder's patched tensors by its own parameter names (the file layout it was loaded from)."""
    with clip_patched(clip):
        return {role: _copy(module.state_dict()) for role, module in clip.modules().items()}


def clip_checkpoint_state_dict(clip: Any, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The text encoders under the family's checkpoint prefixes (SD1: cond_stage_model.transformer., SDXL:
    conditioner.embedders.0.transformer. / conditioner.embedders.1.model., ...)."""
    prefixes = dict(CHECKPOINT_PREFIXES.get(clip.family, ()))
    out: dict[str, torch.Tensor] = {}
    for role, sd in clip_role_state_dicts(clip).items():
        if role not in prefixes:
            raise ComfyCoreError(f"cannot save a {clip.family} text encoder with role {role!r} in a checkpoint")
        if clip.family == "sd1":
            sd = {k: v for k, v in sd.items() if k not in _SD1_DROPPED}
        out.update(_copy(sd, prefixes[role], dtype))
    if clip.family == "sdxl":  # ComfyUI writes CLIP-L's position ids in SDXL checkpoints
        out[prefixes["l"] + "text_model.embeddings.position_ids"] = torch.arange(77).expand((1, -1)).contiguous()
    return out


def hf_text_state_dict(module: torch.nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A text encoder's tensors in Hugging Face CLIPTextModel names (how ComfyUI's CLIPSave writes every encoder):
    OpenCLIP's fused in_proj rows become q/k/v_proj, its `text_projection` [width, proj] becomes the transposed
    `text_projection.weight`."""
    if isinstance(module, HFClipText):
        return sd
    out = {hf: (sd[name] if rows is None else sd[name][rows]).contiguous()
           for hf, (name, rows) in hf_parameter_map(module).items() if name in sd}
    if "text_projection" in sd:
        out["text_projection.weight"] = sd["text_projection"].t().contiguous()
    return out


def vae_state_dict(vae: Any, prefix: str = "", dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    module = getattr(vae, "model", None)
    if not isinstance(module, torch.nn.Module):
        raise ComfyCoreError(f"this VAE ({type(vae).__name__}) has no weights to save")
    with vae._lock:
        return _copy(module.state_dict(), prefix, dtype)


def checkpoint_metadata(model: DiffusionModel | None, title: str) -> dict[str, str]:
    """ComfyUI's modelspec fields: the architecture (SDXL base / refiner only), and the prediction type."""
    meta: dict[str, str] = {}
    if model is None:
        return meta
    arch = _MODELSPEC_ARCH.get(model.spec.family)
    if arch is not None:
        meta.update({"modelspec.architecture": arch, "modelspec.sai_model_spec": "1.0.0",
                     "modelspec.implementation": "sgm", "modelspec.title": title})
    meta["modelspec.predict_key"] = "v" if model.spec.prediction == "v" else "epsilon"
    return meta


def write_safetensors(path: Path, sd: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write through a temporary name, so a crash never leaves a half-written model file under the real name."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(sd, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
