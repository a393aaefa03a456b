"""ComfyUI's custom-sampling nodes: SamplerCustom / SamplerCustomAdvanced, the GUIDER, NOISE and SAMPLER builders
and AddNoise (schedulers and SIGMAS operations live in `custom_schedulers`, merged in here).

Socket values: SAMPLER = `sampling.custom.SamplerObject`, NOISE = `RandomNoise` / `EmptyNoise`, GUIDER =
`sampling.guiders.CFGGuider` (or a subclass), SIGMAS = 1-D float32 tensor. Both sampler nodes run the KSampler's
pipeline (`sampling.ksampler.sample_guided`), so with the same model, seed, sampler and sigmas SamplerCustom gives
the KSampler's latent bit for bit. Their second output is the last step's x0 prediction ("denoised_output").
"""
from __future__ import annotations

from typing import Any

import torch

from ..sampling.apg import APGHook
from ..sampling.common import with_pre_cfg_function
from ..sampling.custom import (
    EmptyNoise,
    RandomNoise,
    custom_sampler,
    sample_euler_pp,
    sample_lcm_upscale,
    sampler_object,
)
from ..sampling.guiders import BasicGuider, CFGGuider, DualCFGGuider
from ..sampling.ksampler import fix_empty_latent_channels
from ..sampling.samplers import KSAMPLER_NAMES
from ..sampling.samplers_sa import tau_interval
from . import custom_schedulers
from .custom_schedulers import CUSTOM_SAMPLER_MODULE, free_float
from .sampling import attention_backend_choice, cfg_options, seed_input, step_reporter

Latent = dict[str, Any]


def _run(guider: CFGGuider, noise, sampler, sigmas: torch.Tensor, latent_image: Latent,
         seed: int | None) -> tuple[Latent, Latent]:
    """Sample and return (output, denoised_output) LATENTs; denoised_output is the output itself when no step ran."""
    model = guider.model
    latent = dict(latent_image)
    latent["samples"] = fix_empty_latent_channels(model, latent["samples"])
    report = step_reporter(model)
    last_x0: dict[str, torch.Tensor] = {}

    def on_step(step: int, total: int, denoised: torch.Tensor) -> None:
        last_x0["x0"] = denoised.clone()  # some samplers reuse the tensor afterwards
        report(step, total, denoised)

    samples = guider.sample(noise.generate_noise(latent), latent["samples"], sampler, sigmas,
                            denoise_mask=latent.get("noise_mask"), on_step=on_step, seed=seed,
                            attention_backend=attention_backend_choice())
    out = {**latent, "samples": samples}
    if "x0" not in last_x0:
        return out, out
    return out, {**latent, "samples": model.process_latent_out(last_x0["x0"].float().cpu())}


class SamplerCustom:
    CATEGORY = "sampling/custom_sampling"
    RELATIVE_PYTHON_MODULE = CUSTOM_SAMPLER_MODULE
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("output", "denoised_output")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",), "add_noise": ("BOOLEAN", {"default": True}), "noise_seed": seed_input(),
            "cfg": ("FLOAT", cfg_options()), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
            "sampler": ("SAMPLER",), "sigmas": ("SIGMAS",), "latent_image": ("LATENT",),
        }}

    def sample(self, model, add_noise, noise_seed, cfg, positive, negative, sampler, sigmas, latent_image):
        guider = CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        noise = RandomNoise(noise_seed) if add_noise else EmptyNoise()
        return _run(guider, noise, sampler, sigmas, latent_image, noise_seed)


class SamplerCustomAdvanced:
    CATEGORY = "sampling/custom_sampling"
    RELATIVE_PYTHON_MODULE = CUSTOM_SAMPLER_MODULE
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("output", "denoised_output")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"noise": ("NOISE",), "guider": ("GUIDER",), "sampler": ("SAMPLER",),
                             "sigmas": ("SIGMAS",), "latent_image": ("LATENT",)}}

    def sample(self, noise, guider, sampler, sigmas, latent_image):
        return _run(guider, noise, sampler, sigmas, latent_image, noise.seed)


class AddNoise:
    CATEGORY = "_for_testing/custom_sampling/noise"
    RELATIVE_PYTHON_MODULE = CUSTOM_SAMPLER_MODULE
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "add_noise"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "noise": ("NOISE",), "sigmas": ("SIGMAS",),
                             "latent_image": ("LATENT",)}}

    def add_noise(self, model, noise, sigmas, latent_image):
        """The latent noised to the schedule's span |sigmas[0] − sigmas[-1]| (or sigmas[0] alone)."""
        if len(sigmas) == 0:
            return (latent_image,)
        samples = latent_image["samples"]
        noisy = noise.generate_noise(latent_image)
        scale = torch.abs(sigmas[0] - sigmas[-1]) if len(sigmas) > 1 else sigmas[0]
        if torch.count_nonzero(samples) > 0:  # an empty latent is not shifted
            samples = model.process_latent_in(samples)
        noisy = model.model_sampling.noise_scaling(scale, noisy, samples)
        noisy = torch.nan_to_num(model.process_latent_out(noisy), nan=0.0, posinf=0.0, neginf=0.0)
        return ({**latent_image, "samples": noisy},)


class APG:
    INFO_V3 = True
    CATEGORY = "sampling/custom_sampling"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_apg"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {}),
            "eta": ("FLOAT", {"tooltip": "Weight of the guidance component parallel to the conditional prediction; "
                                         "1 keeps it as plain CFG would.",
                              "default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}),
            "norm_threshold": ("FLOAT", {"tooltip": "Largest L2 norm the guidance may have before it is scaled down; "
                                                    "0 turns the clipping off.",
                                         "default": 5.0, "min": 0.0, "max": 50.0, "step": 0.1}),
            "momentum": ("FLOAT", {"tooltip": "Weight of the previous steps' guidance in a running sum; 0 uses only "
                                              "the current step.",
                                   "default": 0.0, "min": -5.0, "max": 1.0, "step": 0.01}),
        }}

    def patch(self, model, eta, norm_threshold, momentum):
        patched = model.clone()
        patched.model_options = with_pre_cfg_function(patched.model_options, APGHook(eta, norm_threshold, momentum))
        return (patched,)


# -- guiders -----------------------------------------------------------------------------------------------------------
class _GuiderNode:
    CATEGORY = "sampling/custom_sampling/guiders"
    RELATIVE_PYTHON_MODULE = CUSTOM_SAMPLER_MODULE
    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"


class CFGGuiderNode(_GuiderNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                             "cfg": ("FLOAT", cfg_options())}}

    def get_guider(self, model, positive, negative, cfg):
        guider = CFGGuider(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        return (guider,)


class DualCFGGuiderNode(_GuiderNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "cond1": ("CONDITIONING",), "cond2": ("CONDITIONING",),
                             "negative": ("CONDITIONING",), "cfg_conds": ("FLOAT", cfg_options()),
                             "cfg_cond2_negative": ("FLOAT", cfg_options()), "style": (["regular", "nested"],)}}

    def get_guider(self, model, cond1, cond2, negative, cfg_conds, cfg_cond2_negative, style):
        guider = DualCFGGuider(model)
        guider.set_conds(cond1, cond2, negative)
        guider.set_cfg(cfg_conds, cfg_cond2_negative, nested=style == "nested")
        return (guider,)


class BasicGuiderNode(_GuiderNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "conditioning": ("CONDITIONING",)}}

    def get_guider(self, model, conditioning):
        guider = BasicGuider(model)
        guider.set_conds(conditioning)
        return (guider,)


# -- noise -------------------------------------------------------------------------------------------------------------
class DisableNoise:
    CATEGORY = "sampling/custom_sampling/noise"
    RELATIVE_PYTHON_MODULE = CUSTOM_SAMPLER_MODULE
    RETURN_TYPES = ("NOISE",)
    FUNCTION = "get_noise"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def get_noise(self):
        return (EmptyNoise(),)


class RandomNoiseNode(DisableNoise):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"noise_seed": seed_input()}}

    def get_noise(self, noise_seed):
        return (RandomNoise(noise_seed),)


# -- samplers ----------------------------------------------------------------------------------------------------------
NOISE_DEVICES = ["gpu", "cpu"]


def _device_variant(name: str, noise_device: str) -> str:
    """The `_gpu` sampler variant draws its Brownian noise on the model's device, the plain one on the CPU."""
    return name if noise_device == "cpu" else f"{name}_gpu"


def _eta_noise(eta_max: float = 100.0, s_noise_max: float = 100.0) -> dict[str, tuple]:
    return {"eta": free_float(1.0, 0.0, eta_max), "s_noise": free_float(1.0, 0.0, s_noise_max)}


class _SamplerNode:
    CATEGORY = "sampling/custom_sampling/samplers"
    RELATIVE_PYTHON_MODULE = CUSTOM_SAMPLER_MODULE
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get_sampler"


class KSamplerSelect(_SamplerNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sampler_name": (list(KSAMPLER_NAMES),)}}

    def get_sampler(self, sampler_name):
        return (sampler_object(sampler_name),)


class SamplerEulerAncestral(_SamplerNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": _eta_noise()}

    def get_sampler(self, eta, s_noise):
        return (sampler_object("euler_ancestral", {"eta": eta, "s_noise": s_noise}),)


class SamplerEulerAncestralCFGPP(_SamplerNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": _eta_noise(1.0, 10.0)}

    def get_sampler(self, eta, s_noise):
        return (sampler_object("euler_ancestral_cfg_pp", {"eta": eta, "s_noise": s_noise}),)


class SamplerLMS(_SamplerNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"order": ("INT", {"default": 4, "min": 1, "max": 100})}}

    def get_sampler(self, order):
        return (sampler_object("lms", {"order": order}),)


class SamplerDPMPP_3M_SDE(_SamplerNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {**_eta_noise(), "noise_device": (NOISE_DEVICES,)}}

    def get_sampler(self, eta, s_noise, noise_device):
        return (sampler_object(_device_variant("dpmpp_3m_sde", noise_device), {"eta": eta, "s_noise": s_noise}),)


class SamplerDPMPP_2M_SDE(_SamplerNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"solver_type": (["midpoint", "heun"],), **_eta_noise(), "noise_device": (NOISE_DEVICES,)}}

    def get_sampler(self, solver_type, eta, s_noise, noise_device):
        options = {"eta": eta, "s_noise": s_noise, "solver_type": solver_type}
        return (sampler_object(_device_variant("dpmpp_2m_sde", noise_device), options),)


class SamplerDPMPP_SDE(_SamplerNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {**_eta_noise(), "r": free_float(0.5, 0.0, 100.0), "noise_device": (NOISE_DEVICES,)}}

    def get_sampler(self, eta, s_noise, r, noise_device):
        options = {"eta": eta, "s_noise": s_noise, "r": r}
        return (sampler_object(_device_variant("dpmpp_sde", noise_device), options),)


class SamplerDPMPP_2S_Ancestral(_SamplerNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": _eta_noise()}

    def get_sampler(self, eta, s_noise):
        return (sampler_object("dpmpp_2s_ancestral", {"eta": eta, "s_noise": s_noise}),)


_ADAPTIVE_DEFAULTS = {"rtol": 0.05, "atol": 0.0078, "h_init": 0.05, "pcoeff": 0.0, "icoeff": 1.0, "dcoeff": 0.0,
                      "accept_safety": 0.81, "eta": 0.0, "s_noise": 1.0}


class SamplerDPMAdaptative(_SamplerNode):
    @classmethod
    def INPUT_TYPES(cls):
        floats = {name: free_float(value, 0.0, 100.0) for name, value in _ADAPTIVE_DEFAULTS.items()}
        return {"required": {"order": ("INT", {"default": 3, "min": 2, "max": 3}), **floats}}

    def get_sampler(self, order, **options):
        return (sampler_object("dpm_adaptive", {"order": order, **options}),)


class SamplerER_SDE(_SamplerNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "solver_type": ("COMBO", {"options": ["ER-SDE", "Reverse-time SDE", "ODE"]}),
            "max_stage": ("INT", {"default": 3, "min": 1, "max": 3}),
            "eta": free_float(1.0, 0.0, 100.0, tooltip=(
                "Noise strength of the reverse-time SDE; 0 turns it into the deterministic ODE solver.\n"
                "Ignored by the ER-SDE solver type.")),
            "s_noise": free_float(1.0, 0.0, 100.0),
        }}

    def get_sampler(self, solver_type, max_stage, eta, s_noise):
        if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
            eta, s_noise = 0, 0
        noise_scaler = None if solver_type == "ER-SDE" else _ReverseTimeNoiseScaler(eta)
        return (sampler_object("er_sde", {"s_noise": s_noise, "noise_scaler": noise_scaler,
                                          "max_stage": max_stage}),)


class _ReverseTimeNoiseScaler:
    """ER-SDE's noise scaling function for the reverse-time SDE: x ** (eta + 1)."""

    def __init__(self, eta: float) -> None:
        self.eta = eta

    def __call__(self, x):
        return x ** (self.eta + 1)


class SamplerSASolver(_SamplerNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {}), "eta": free_float(1.0, 0.0, 10.0),
            "sde_start_percent": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.001}),
            "sde_end_percent": ("FLOAT", {"default": 0.8, "min": 0.0, "max": 1.0, "step": 0.001}),
            "s_noise": free_float(1.0, 0.0, 100.0), "predictor_order": ("INT", {"default": 3, "min": 1, "max": 6}),
            "corrector_order": ("INT", {"default": 4, "min": 0, "max": 6}), "use_pece": ("BOOLEAN", {}),
            "simple_order_2": ("BOOLEAN", {}),
        }}

    def get_sampler(self, model, eta, sde_start_percent, sde_end_percent, s_noise, predictor_order, corrector_order,
                    use_pece, simple_order_2):
        if simple_order_2:
            raise ValueError("SamplerSASolver: simple_order_2 is not supported by this build's SA-Solver")
        ms = model.model_sampling
        tau = tau_interval(ms.percent_to_sigma(sde_start_percent), ms.percent_to_sigma(sde_end_percent), eta=eta)
        return (sampler_object("sa_solver", {"tau_func": tau, "s_noise": s_noise, "predictor_order": predictor_order,
                                             "corrector_order": corrector_order, "use_pece": use_pece}),)


class SamplerLCMUpscale(_SamplerNode):
    INFO_V3 = True
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_advanced_samplers"

    @classmethod
    def INPUT_TYPES(cls):
        methods = ["bislerp", "nearest-exact", "bilinear", "area", "bicubic"]
        return {"required": {"scale_ratio": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 20.0, "step": 0.01}),
                             "scale_steps": ("INT", {"default": -1, "min": -1, "max": 1000, "step": 1}),
                             "upscale_method": ("COMBO", {"multiselect": False, "options": methods})}}

    def get_sampler(self, scale_ratio, scale_steps, upscale_method):
        options = {"total_upscale": scale_ratio, "upscale_steps": None if scale_steps < 0 else scale_steps,
                   "upscale_method": upscale_method}
        return (custom_sampler(sample_lcm_upscale, options, "lcm_upscale"),)


class SamplerEulerCFGpp(_SamplerNode):
    INFO_V3 = True
    EXPERIMENTAL = True
    CATEGORY = "_for_testing"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_advanced_samplers"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"version": ("COMBO", {"multiselect": False, "options": ["regular", "alternative"]})}}

    def get_sampler(self, version):
        if version == "alternative":
            return (custom_sampler(sample_euler_pp, name="euler_pp"),)
        return (sampler_object("euler_cfg_pp"),)


NODE_CLASS_MAPPINGS = {
    "SamplerCustom": SamplerCustom, "SamplerCustomAdvanced": SamplerCustomAdvanced, "AddNoise": AddNoise,
    "CFGGuider": CFGGuiderNode, "DualCFGGuider": DualCFGGuiderNode, "BasicGuider": BasicGuiderNode,
    "RandomNoise": RandomNoiseNode, "DisableNoise": DisableNoise, "KSamplerSelect": KSamplerSelect,
    "SamplerEulerAncestral": SamplerEulerAncestral, "SamplerEulerAncestralCFGPP": SamplerEulerAncestralCFGPP,
    "SamplerLMS": SamplerLMS, "SamplerDPMPP_3M_SDE": SamplerDPMPP_3M_SDE, "SamplerDPMPP_2M_SDE": SamplerDPMPP_2M_SDE,
    "SamplerDPMPP_SDE": SamplerDPMPP_SDE, "SamplerDPMPP_2S_Ancestral": SamplerDPMPP_2S_Ancestral,
    "SamplerDPMAdaptative": SamplerDPMAdaptative, "SamplerER_SDE": SamplerER_SDE, "SamplerSASolver": SamplerSASolver,
    "SamplerLCMUpscale": SamplerLCMUpscale, "SamplerEulerCFGpp": SamplerEulerCFGpp, "APG": APG,
    **custom_schedulers.NODE_CLASS_MAPPINGS,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "SamplerEulerAncestralCFGPP": "SamplerEulerAncestralCFG++", "SamplerEulerCFGpp": "SamplerEulerCFG++",
    "APG": "Adaptive Projected Guidance",
    **custom_schedulers.NODE_DISPLAY_NAME_MAPPINGS,
}
