"""Loader nodes: checkpoints, standalone UNet / VAE / text-encoder files, LoRAs.

File lists come from the engine's model folders at call time; loaded weights come from (and stay in) the engine's
ModelCache, so a workflow that loads the same checkpoint twice pays once. The model-file helpers here
(`model_files`, `model_path`, `model_cache`, `device_dtype`, `embedding_dirs`) serve every loader node family.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .. import context
from ..errors import ModelLoadError
from ..models import text_encoders
from ..models.cache import ModelCache
from ..models.checkpoint import default_device_dtype
from ..models.lora import LoraPatch, clip_lora_targets, lora_patches_for, unet_targets
from ..models.taesd import TAESD_VAES, taesd_vae
from ..models.vae import PixelSpaceVAE

log = logging.getLogger(__name__)

CLIP_TYPES = ["stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image"]
DUAL_CLIP_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"]
UNET_WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]


def model_files(kind: str) -> list[str]:
    """The file-name choices of a model folder kind (none outside an engine, e.g. for a bare object_info)."""
    ctx = context.current_or_none()
    return ctx.folders.list(kind) if ctx is not None else []


def model_path(kind: str, name: str) -> Path:
    """The file's path, or ComfyUI's not-found message."""
    path = context.current().folders.full_path(kind, name)
    if path is None:
        raise ModelLoadError(f"Model in folder '{kind}' with filename '{name}' not found.")
    return path


def model_cache() -> ModelCache:
    ctx = context.current()
    if ctx.models is None:  # outside an engine (tests, scripts): load without keeping anything
        return ModelCache(cpu_budget_bytes=1, gpu_budget_bytes=1)
    return ctx.models


def device_dtype() -> tuple[torch.device, torch.dtype]:
    """The engine's device and dtype (CPU float32 when unset, float16 on CUDA: `default_device_dtype`)."""
    ctx = context.current()
    return default_device_dtype(ctx.device, ctx.dtype)


def embedding_dirs() -> tuple[str, ...]:
    try:
        return tuple(str(d) for d in context.current().folders.dirs("embeddings"))
    except Exception:  # noqa: BLE001 - a folders object without an embeddings kind
        return ()


def _with_engine_options(model: Any) -> Any:
    """The engine's attention backend choice travels with the MODEL into every UNet call."""
    backend = getattr(context.current().config, "attention_backend", "auto")
    if model is not None and backend not in (None, "", "auto"):
        model.model_options["transformer_options"]["attention_backend"] = backend
    return model


def load_checkpoint(ckpt_name: str) -> tuple[Any, Any, Any]:
    path = model_path("checkpoints", ckpt_name)
    device, dtype = device_dtype()
    model, clip, vae = model_cache().load_checkpoint(path, embedding_dirs=embedding_dirs(), device=device, dtype=dtype)
    return _with_engine_options(model), clip, vae


class CheckpointLoaderSimple:
    DESCRIPTION = "Load a Stable Diffusion checkpoint file: its denoising model, text encoder and VAE."
    CATEGORY = "loaders"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = ("The diffusion (denoising) model.", "The text encoder that turns prompts into conditioning.",
                       "The VAE that converts between images and latents.")
    FUNCTION = "load_checkpoint"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"ckpt_name": (model_files("checkpoints"), {"tooltip": "Checkpoint file to load."})}}

    def load_checkpoint(self, ckpt_name: str) -> tuple[Any, Any, Any]:
        return load_checkpoint(ckpt_name)


class CheckpointLoader:
    """Deprecated ComfyUI node: the yaml config is ignored, the architecture is detected from the weights."""

    CATEGORY = "advanced/loaders"
    DEPRECATED = True
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"config_name": (model_files("configs"),), "ckpt_name": (model_files("checkpoints"),)}}

    def load_checkpoint(self, config_name: str, ckpt_name: str) -> tuple[Any, Any, Any]:
        log.info("CheckpointLoader: config %r ignored; the model type is detected from the weights", config_name)
        return load_checkpoint(ckpt_name)


class UNETLoader:
    CATEGORY = "advanced/loaders"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_unet"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"unet_name": (model_files("diffusion_models"),), "weight_dtype": (UNET_WEIGHT_DTYPES,)}}

    def load_unet(self, unet_name: str, weight_dtype: str) -> tuple[Any]:
        path = model_path("diffusion_models", unet_name)
        device, dtype = device_dtype()
        model = model_cache().load_unet(path, device=device, dtype=dtype, weight_dtype=weight_dtype)
        return (_with_engine_options(model),)


class PixelSpace:
    """Marker kept for readability: the "pixel_space" choice of VAELoader."""

    NAME = "pixel_space"


def taesd_halves(name: str, approx_files: list[str]) -> tuple[str | None, str | None]:
    """(encoder, decoder) file names of a TAESD family in vae_approx/ (`<name>_encoder.*`, `<name>_decoder.*`)."""
    def first(half: str) -> str | None:
        return next((f for f in approx_files if f.startswith(f"{name}_{half}.")), None)

    return first("encoder"), first("decoder")


def vae_choices() -> list[str]:
    """ComfyUI's VAELoader list: vae/ files, each TAESD family with both halves in vae_approx/, then pixel_space."""
    approx = model_files("vae_approx")
    tiny = [name for name in TAESD_VAES if all(taesd_halves(name, approx))]
    return model_files("vae") + tiny + [PixelSpace.NAME]


class VAELoader:
    CATEGORY = "loaders"
    RETURN_TYPES = ("VAE",)
    FUNCTION = "load_vae"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"vae_name": (vae_choices(),)}}

    def load_vae(self, vae_name: str) -> tuple[Any]:
        if vae_name == PixelSpace.NAME:
            return (PixelSpaceVAE(),)
        device, dtype = device_dtype()
        if vae_name in TAESD_VAES:
            return (load_taesd_vae(vae_name, device, dtype),)
        return (model_cache().load_vae(model_path("vae", vae_name), device=device, dtype=dtype),)


def load_taesd_vae(name: str, device: torch.device, dtype: torch.dtype) -> Any:
    """Both TAESD halves as one cached VAE (keyed on the encoder file plus the decoder's path)."""
    encoder, decoder = taesd_halves(name, model_files("vae_approx"))
    if encoder is None or decoder is None:
        raise ModelLoadError(f"Model in folder 'vae_approx' with filename '{name}_encoder/decoder' not found.")
    enc_path, dec_path = model_path("vae_approx", encoder), model_path("vae_approx", decoder)
    return model_cache().get_custom(enc_path, "taesd_vae", lambda: taesd_vae(
        name, enc_path, dec_path, device=device, dtype=dtype), device=device, dtype=dtype, extra=(str(dec_path),))


def _load_clip_files(names: list[str], clip_type: str, device_choice: str) -> Any:
    paths = [model_path("text_encoders", n) for n in names]
    device = torch.device("cpu") if device_choice == "cpu" else device_dtype()[0]
    dd = {"device": device, "dtype": None}  # None: ComfyUI's float16 text-encoder weights, float32 compute
    cache = model_cache()

    def load() -> Any:
        from ..models.state_dict import open_state_dict

        sds = [open_state_dict(p) for p in paths]
        try:
            return text_encoders.load_clip_files(sds, clip_type, **dd)
        finally:
            for sd in sds:
                sd.close()

    clip = cache.get_custom(paths[0], "clip_files", load, extra=(clip_type, *map(str, paths[1:])), **dd)
    return clip.clone() if hasattr(clip, "clone") else clip


def _clip_device_input() -> dict[str, Any]:
    """The text-encoder loaders' optional `device` input: "cpu" keeps the text encoder off the engine's device."""
    return {"device": (["default", "cpu"], {"advanced": True})}


class CLIPLoader:
    DESCRIPTION = "Load a standalone text encoder file. stable_diffusion expects CLIP-L (SD1.x)."
    CATEGORY = "advanced/loaders"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"clip_name": (model_files("text_encoders"),), "type": (CLIP_TYPES,)},
                "optional": _clip_device_input()}

    def load_clip(self, clip_name: str, type: str = "stable_diffusion", device: str = "default") -> tuple[Any]:
        return (_load_clip_files([clip_name], type, device),)


class DualCLIPLoader:
    DESCRIPTION = "Load two standalone text encoder files. sdxl expects CLIP-L and OpenCLIP bigG."
    CATEGORY = "advanced/loaders"
    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load_clip"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        files = model_files("text_encoders")
        return {"required": {"clip_name1": (files,), "clip_name2": (files,), "type": (DUAL_CLIP_TYPES,)},
                "optional": _clip_device_input()}

    def load_clip(self, clip_name1: str, clip_name2: str, type: str, device: str = "default") -> tuple[Any]:
        return (_load_clip_files([clip_name1, clip_name2], type, device),)


# ---------------------------------------------------------------------------------------------------------------------
# LoRA
# ---------------------------------------------------------------------------------------------------------------------
def load_lora(model: Any, clip: Any, lora_name: str, strength_model: float, strength_clip: float) -> tuple[Any, Any]:
    """Clones of MODEL and CLIP carrying the LoRA as patches (both strengths 0: the inputs, unchanged)."""
    if strength_model == 0 and strength_clip == 0:
        return model, clip
    lora_sd = model_cache().load_tensors(model_path("loras", lora_name), "lora")
    return apply_lora(model, clip, lora_sd, strength_model, strength_clip, lora_name)


def apply_lora(model: Any, clip: Any, lora_sd: dict[str, torch.Tensor], strength_model: float,
               strength_clip: float, name: str = "") -> tuple[Any, Any]:
    """MODEL/CLIP clones with `lora_sd` as patches; a side whose strength is 0 is returned as it is."""
    if strength_model == 0 and strength_clip == 0:
        return model, clip
    targets: dict[str, dict] = {}
    if model is not None:
        targets["unet"] = unet_targets(model.spec.unet, (n for n, _ in model.unet.named_parameters()))
    if clip is not None:
        targets.update(clip_lora_targets(clip))
    found, _ = lora_patches_for(lora_sd, targets)
    new_model, new_clip = model, clip
    if model is not None and strength_model != 0:
        new_model = model.clone()
        if found.get("unet"):
            new_model.add_patches(LoraPatch(found["unet"], float(strength_model), name))
    if clip is not None and strength_clip != 0:
        from ..models.clip_lora import clip_with_patches

        new_clip = clip_with_patches(clip, {r: w for r, w in found.items() if r != "unet"}, strength_clip, name)
    return new_model, new_clip


def _strength(tooltip: str | None = None) -> tuple[str, dict[str, Any]]:
    spec: dict[str, Any] = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}
    if tooltip:
        spec["tooltip"] = tooltip
    return ("FLOAT", spec)


class LoraLoader:
    DESCRIPTION = ("Apply a LoRA file to a diffusion model and its text encoder, e.g. to add a style or subject. "
                   "Chain several of these nodes to stack LoRAs.")
    CATEGORY = "loaders"
    RETURN_TYPES = ("MODEL", "CLIP")
    OUTPUT_TOOLTIPS = ("The diffusion model with the LoRA applied.", "The text encoder with the LoRA applied.")
    FUNCTION = "load_lora"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "model": ("MODEL", {"tooltip": "Diffusion model to patch."}),
            "clip": ("CLIP", {"tooltip": "Text encoder to patch."}),
            "lora_name": (model_files("loras"), {"tooltip": "LoRA file to apply."}),
            "strength_model": _strength("Scale of the change to the diffusion model; negative values invert it."),
            "strength_clip": _strength("Scale of the change to the text encoder; negative values invert it."),
        }}

    def load_lora(self, model: Any, clip: Any, lora_name: str, strength_model: float, strength_clip: float):
        return load_lora(model, clip, lora_name, strength_model, strength_clip)


class LoraLoaderModelOnly:
    DESCRIPTION = LoraLoader.DESCRIPTION
    CATEGORY = "loaders"
    RETURN_TYPES = ("MODEL",)
    # ComfyUI inherits both tooltips from LoraLoader, so its object_info lists two for one output.
    OUTPUT_TOOLTIPS = LoraLoader.OUTPUT_TOOLTIPS
    FUNCTION = "load_lora_model_only"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL",), "lora_name": (model_files("loras"),), "strength_model": _strength()}}

    def load_lora_model_only(self, model: Any, lora_name: str, strength_model: float) -> tuple[Any]:
        return (load_lora(model, None, lora_name, strength_model, 0)[0],)


NODE_CLASS_MAPPINGS = {
    "CheckpointLoaderSimple": CheckpointLoaderSimple,
    "CheckpointLoader": CheckpointLoader,
    "UNETLoader": UNETLoader,
    "VAELoader": VAELoader,
    "CLIPLoader": CLIPLoader,
    "DualCLIPLoader": DualCLIPLoader,
    "LoraLoader": LoraLoader,
    "LoraLoaderModelOnly": LoraLoaderModelOnly,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "CheckpointLoaderSimple": "Load Checkpoint",
    "CheckpointLoader": "Load Checkpoint With Config (DEPRECATED)",
    "UNETLoader": "Load Diffusion Model",
    "VAELoader": "Load VAE",
    "CLIPLoader": "Load CLIP",
    "LoraLoader": "Load LoRA",
}
