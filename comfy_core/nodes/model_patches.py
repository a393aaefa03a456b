"""Model patch nodes: sampling overrides and CFG hooks (ComfyUI's comfy_extras.nodes_model_advanced) and UNet patches
(nodes_freelunch, nodes_pag, nodes_model_downscale, nodes_eps, nodes_hypertile) and nodes_sag.

Each node returns a clone of its MODEL (shared UNet weights) whose `model_sampling`, `latent_format` or
`model_options` differ; the input MODEL is never changed, so cached upstream outputs stay valid.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch

from ..errors import ComfyCoreError
from ..models.sampling_variants import (
    PLAYGROUND_V25_LATENT,
    ContinuousEDMSampling,
    ContinuousVSampling,
    CosmosRFlowSampling,
    DiscreteSampling,
    DistilledSampling,
)
from ..models.unet_patches import (
    HyperTilePatches,
    SelfAttentionGuidancePatches,
    add_block_patch,
    downscale_patches,
    freeu_patch,
    pag_post_cfg,
    with_attn1_replace,
)
from ..sampling.common import CFG_FUNCTION, with_post_cfg_function
from ..sampling.guidance import DENOISE_MASK_FUNCTION
from ..upscale import UPSCALE_METHODS

_SIGMA_RANGE = {"min": 0.0, "max": 1000.0, "step": 0.001, "round": False}
_DOWNSCALE_METHODS = ["bicubic", "nearest-exact", "bilinear", "area", "bislerp"]


def _float(default: float, minimum: float, maximum: float, step: float, **extra: Any) -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": default, "min": minimum, "max": maximum, "step": step, **extra})


class _ModelPatch:
    """V1 node shape shared by the patch nodes: one MODEL in, one MODEL out."""

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"


class _ModelPatchV3(_ModelPatch):
    INFO_V3 = True
    MODEL_INPUT = ("MODEL", {})


# -- advanced/model ----------------------------------------------------------------------------------------------------
class ModelSamplingDiscrete(_ModelPatch):
    CATEGORY = "advanced/model"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_model_advanced"
    PREDICTIONS: ClassVar[dict[str, str]] = {"eps": "eps", "v_prediction": "v", "lcm": "lcm", "x0": "x0", "img_to_img": "img_to_img"}

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "sampling": (list(cls.PREDICTIONS),),
                             "zsnr": ("BOOLEAN", {"default": False})}}

    def patch(self, model, sampling: str, zsnr: bool):
        prediction = _choice(self.PREDICTIONS, sampling, "sampling")
        base = model.model_sampling
        schedule = {"linear_start": getattr(base, "linear_start", 0.00085),
                    "linear_end": getattr(base, "linear_end", 0.012)}
        m = model.clone()
        if prediction == "lcm":
            m.model_sampling = DistilledSampling(zsnr=zsnr, **schedule)
        else:
            m.model_sampling = DiscreteSampling(prediction, zsnr=zsnr, **schedule)
        return (m,)


class ModelSamplingContinuousEDM(_ModelPatch):
    CATEGORY = "advanced/model"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_model_advanced"
    # choice -> (prediction, sigma_data, Playground v2.5 latent space)
    PREDICTIONS: ClassVar[dict[str, tuple[str, float, bool]]] = {"v_prediction": ("v", 1.0, False), "edm": ("edm", 0.5, False),
                   "edm_playground_v2.5": ("edm", 0.5, True), "eps": ("eps", 1.0, False),
                   "cosmos_rflow": ("cosmos_rflow", 1.0, False)}

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "sampling": (list(cls.PREDICTIONS),),
                             "sigma_max": ("FLOAT", {"default": 120.0, **_SIGMA_RANGE}),
                             "sigma_min": ("FLOAT", {"default": 0.002, **_SIGMA_RANGE})}}

    def patch(self, model, sampling: str, sigma_max: float, sigma_min: float):
        prediction, sigma_data, playground = _choice(self.PREDICTIONS, sampling, "sampling")
        m = model.clone()
        m.model_sampling = _continuous(prediction, sigma_min, sigma_max, sigma_data)
        if playground:
            m.latent_format = PLAYGROUND_V25_LATENT
        return (m,)


class ModelSamplingContinuousV(_ModelPatch):
    CATEGORY = "advanced/model"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_model_advanced"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "sampling": (["v_prediction"],),
                             "sigma_max": ("FLOAT", {"default": 500.0, **_SIGMA_RANGE}),
                             "sigma_min": ("FLOAT", {"default": 0.03, **_SIGMA_RANGE})}}

    def patch(self, model, sampling: str, sigma_max: float, sigma_min: float):
        _choice({"v_prediction": "v"}, sampling, "sampling")
        m = model.clone()
        m.model_sampling = _checked(lambda: ContinuousVSampling("v", sigma_min, sigma_max, 1.0))
        return (m,)


class RescaleCFG(_ModelPatch):
    """Lin et al. 2024, section 3.4: rescale the guided v-prediction to the std of the conditional one."""

    CATEGORY = "advanced/model"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_model_advanced"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "multiplier": _float(0.7, 0.0, 1.0, 0.01)}}

    def patch(self, model, multiplier: float):
        m = model.clone()
        m.model_options[CFG_FUNCTION] = rescale_cfg_function(float(multiplier))
        return (m,)


def rescale_cfg_function(multiplier: float):
    """A sampler_cfg_function (eps in, guided eps out) doing the rescale in v space, as ComfyUI's RescaleCFG does
    whatever the model's own parameterisation."""

    def rescale_cfg(args: dict[str, Any]) -> torch.Tensor:
        x_in = args["input"]
        sigma = args["sigma"].reshape((-1,) + (1,) * (x_in.ndim - 1))  # [B, 1, 1, 1]
        norm = (sigma**2 + 1.0) ** 0.5
        x = x_in / (sigma * sigma + 1.0)
        # eps -> v:  v = (x/(s²+1) - D)·sqrt(s²+1)/s with D = x_in - eps
        cond = (x - (x_in - args["cond"])) * norm / sigma
        uncond = (x - (x_in - args["uncond"])) * norm / sigma
        guided = uncond + args["cond_scale"] * (cond - uncond)
        rescaled = guided * (cond.std(dim=(1, 2, 3), keepdim=True) / guided.std(dim=(1, 2, 3), keepdim=True))
        v = multiplier * rescaled + (1.0 - multiplier) * guided
        return x_in - (x - v * sigma / norm)  # back to eps: x_in - D

    return rescale_cfg


# -- model_patches/unet ------------------------------------------------------------------------------------------------
class FreeU(_ModelPatch):
    CATEGORY = "model_patches/unet"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_freelunch"
    DEFAULTS = (1.1, 1.2, 0.9, 0.2)
    V2 = False

    @classmethod
    def INPUT_TYPES(cls):
        names = ("b1", "b2", "s1", "s2")
        return {"required": {"model": ("MODEL",),
                             **{n: _float(d, 0.0, 10.0, 0.01) for n, d in zip(names, cls.DEFAULTS)}}}

    def patch(self, model, b1: float, b2: float, s1: float, s2: float):
        m = model.clone()
        add_block_patch(m, "output_block_patch",
                        freeu_patch(model.unet.config.model_channels, b1, b2, s1, s2, v2=self.V2))
        return (m,)


class FreeU_V2(FreeU):
    DEFAULTS = (1.3, 1.4, 0.9, 0.2)
    V2 = True


class PerturbedAttentionGuidance(_ModelPatchV3):
    CATEGORY = "model_patches/unet"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_pag"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": cls.MODEL_INPUT, "scale": _float(3.0, 0.0, 100.0, 0.01, round=0.01)}}

    def patch(self, model, scale: float):
        m = model.clone()
        m.model_options = with_post_cfg_function(m.model_options, pag_post_cfg(float(scale)))
        return (m,)


class PatchModelAddDownscale(_ModelPatchV3):
    CATEGORY = "model_patches/unet"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_model_downscale"

    @classmethod
    def INPUT_TYPES(cls):
        methods = ("COMBO", {"multiselect": False, "options": _DOWNSCALE_METHODS})
        return {"required": {
            "model": cls.MODEL_INPUT,
            "block_number": ("INT", {"default": 3, "min": 1, "max": 32, "step": 1}),
            "downscale_factor": _float(2.0, 0.1, 9.0, 0.001),
            "start_percent": _float(0.0, 0.0, 1.0, 0.001),
            "end_percent": _float(0.35, 0.0, 1.0, 0.001),
            "downscale_after_skip": ("BOOLEAN", {"default": True}),
            "downscale_method": methods,
            "upscale_method": methods,
        }}

    def patch(self, model, block_number: int, downscale_factor: float, start_percent: float, end_percent: float,
              downscale_after_skip: bool, downscale_method: str, upscale_method: str):
        for method in (downscale_method, upscale_method):
            if method not in UPSCALE_METHODS:
                raise ComfyCoreError(f"unknown resize method {method!r}; expected one of {_DOWNSCALE_METHODS}")
        ms = model.model_sampling
        down, up = downscale_patches(int(block_number), float(downscale_factor), ms.percent_to_sigma(start_percent),
                                     ms.percent_to_sigma(end_percent), downscale_method, upscale_method)
        m = model.clone()
        add_block_patch(m, "input_block_patch_after_skip" if downscale_after_skip else "input_block_patch", down)
        add_block_patch(m, "output_block_patch", up)
        return (m,)


class EpsilonScaling(_ModelPatchV3):
    """Ning et al. 2024 (exposure bias): divide the guided noise prediction by a constant factor."""

    CATEGORY = "model_patches/unet"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_eps"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": cls.MODEL_INPUT,
                             "scaling_factor": _float(1.005, 0.5, 1.5, 0.001, display="number")}}

    def patch(self, model, scaling_factor: float):
        factor = float(scaling_factor) or 1e-9  # as ComfyUI: never divide by zero

        def epsilon_scaling(args: dict[str, Any]) -> torch.Tensor:
            x = args["input"]
            return x - (x - args["denoised"]) / factor

        m = model.clone()
        m.model_options = with_post_cfg_function(m.model_options, epsilon_scaling)
        return (m,)


class HyperTile(_ModelPatchV3):
    CATEGORY = "model_patches/unet"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_hypertile"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": cls.MODEL_INPUT,
                             "tile_size": ("INT", {"default": 256, "min": 1, "max": 2048}),
                             "swap_size": ("INT", {"default": 2, "min": 1, "max": 128}),
                             "max_depth": ("INT", {"default": 0, "min": 0, "max": 10}),
                             "scale_depth": ("BOOLEAN", {"default": False})}}

    def patch(self, model, tile_size: int, swap_size: int, max_depth: int, scale_depth: bool):
        hooks = HyperTilePatches(int(tile_size), int(swap_size), int(max_depth), bool(scale_depth))
        m = model.clone()
        add_block_patch(m, "attn1_patch", hooks.tile)
        add_block_patch(m, "attn1_output_patch", hooks.untile)
        return (m,)


# -- _for_testing -------------------------------------------------------------------------------------------------------
class SelfAttentionGuidance(_ModelPatchV3):
    CATEGORY = "_for_testing"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_sag"
    EXPERIMENTAL = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": cls.MODEL_INPUT, "scale": _float(0.5, -2.0, 5.0, 0.01),
                             "blur_sigma": _float(2.0, 0.0, 10.0, 0.1)}}

    def patch(self, model, scale: float, blur_sigma: float):
        if blur_sigma <= 0:
            raise ComfyCoreError(f"blur_sigma must be > 0, got {blur_sigma}")
        hooks = SelfAttentionGuidancePatches(float(scale), float(blur_sigma))
        m = model.clone()
        options = with_post_cfg_function(m.model_options, hooks.post_cfg, disable_cfg1_optimization=True)
        m.model_options = with_attn1_replace(options, hooks.attention, "middle", 0, 0)
        return (m,)


class DifferentialDiffusion(_ModelPatchV3):
    CATEGORY = "_for_testing"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_differential_diffusion"
    EXPERIMENTAL = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": cls.MODEL_INPUT}, "optional": {"strength": _float(1.0, 0.0, 1.0, 0.01)}}

    def patch(self, model, strength: float = 1.0):
        m = model.clone()
        m.model_options[DENOISE_MASK_FUNCTION] = differential_mask_function(float(strength))
        return (m,)


def differential_mask_function(strength: float):
    """Differential Diffusion (Levin & Fried 2023): a pixel is inpainted only once sampling has progressed past its
    mask value, i.e. mask >= (t - t_end)/(t_start - t_end) in timesteps; strength < 1 blends with the soft mask."""

    def mask_function(sigma: torch.Tensor, mask: torch.Tensor, extra_options: dict[str, Any]) -> torch.Tensor:
        ms = extra_options["model"].model_sampling
        sigmas = extra_options["sigmas"]
        sigma_to = max(ms.sigma_min, sigmas[-1])
        t_from, t_to = ms.timestep(sigmas[0]), ms.timestep(sigma_to)
        threshold = (ms.timestep(sigma[0]) - t_to) / (t_from - t_to)
        binary = (mask >= threshold).to(mask.dtype)
        if strength and strength < 1:
            return strength * binary + (1 - strength) * mask
        return binary

    return mask_function


# -- helpers -----------------------------------------------------------------------------------------------------------
def _choice(options: dict[str, Any], value: str, name: str) -> Any:
    if value not in options:
        raise ComfyCoreError(f"{name} must be one of {list(options)}, got {value!r}")
    return options[value]


def _checked(build):
    """Build a sampling object; a bad sigma range becomes a clear node error."""
    try:
        return build()
    except ValueError as exc:
        raise ComfyCoreError(str(exc)) from exc


def _continuous(prediction: str, sigma_min: float, sigma_max: float, sigma_data: float):
    if prediction == "cosmos_rflow":
        return _checked(lambda: CosmosRFlowSampling(sigma_min, sigma_max, sigma_data))
    return _checked(lambda: ContinuousEDMSampling(prediction, sigma_min, sigma_max, sigma_data))


NODE_CLASS_MAPPINGS = {
    "ModelSamplingDiscrete": ModelSamplingDiscrete,
    "ModelSamplingContinuousEDM": ModelSamplingContinuousEDM,
    "ModelSamplingContinuousV": ModelSamplingContinuousV,
    "RescaleCFG": RescaleCFG,
    "FreeU": FreeU,
    "FreeU_V2": FreeU_V2,
    "PerturbedAttentionGuidance": PerturbedAttentionGuidance,
    "PatchModelAddDownscale": PatchModelAddDownscale,
    "Epsilon Scaling": EpsilonScaling,
    "HyperTile": HyperTile,
    "SelfAttentionGuidance": SelfAttentionGuidance,
    "DifferentialDiffusion": DifferentialDiffusion,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PatchModelAddDownscale": "PatchModelAddDownscale (Kohya Deep Shrink)",
    "SelfAttentionGuidance": "Self-Attention Guidance",
    "DifferentialDiffusion": "Differential Diffusion",
}
