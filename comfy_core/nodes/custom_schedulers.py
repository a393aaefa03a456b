"""ComfyUI's custom-sampling scheduler and SIGMAS nodes (sampling/custom_sampling/schedulers and .../sigmas).
Registered through `custom_sampling`, which merges these mappings into its own.

A SIGMAS value is a 1-D float32 CPU tensor of descending noise levels, normally ending in 0.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ..sampling import sigma_schedules as ss
from ..sampling.gits import gits_sigmas
from ..sampling.schedulers import (
    SCHEDULER_NAMES,
    beta_sigmas,
    calculate_sigmas,
    get_sigmas_exponential,
    get_sigmas_karras,
)

CUSTOM_SAMPLER_MODULE = "comfy_extras.nodes_custom_sampler"
SIGMA_DEFAULTS = {"sigma_max": 14.614642, "sigma_min": 0.0291675}  # SD1.5's range


def free_float(default: float, minimum: float, maximum: float, step: float = 0.01, **extra: Any) -> tuple:
    """A FLOAT input whose value the UI does not round to its step (ComfyUI's "round": False)."""
    return ("FLOAT", {"default": default, "min": minimum, "max": maximum, "step": step, "round": False, **extra})


def steps_input(default: int = 20, minimum: int = 1, maximum: int = 10000) -> tuple:
    return ("INT", {"default": default, "min": minimum, "max": maximum})


def denoise_input(minimum: float = 0.0) -> tuple:
    return ("FLOAT", {"default": 1.0, "min": minimum, "max": 1.0, "step": 0.01})


def _sigma_range() -> dict[str, tuple]:
    return {name: free_float(value, 0.0, 5000.0) for name, value in SIGMA_DEFAULTS.items()}


class _SigmasNode:
    RETURN_TYPES = ("SIGMAS",)
    FUNCTION = "get_sigmas"
    CATEGORY = "sampling/custom_sampling/schedulers"
    RELATIVE_PYTHON_MODULE = CUSTOM_SAMPLER_MODULE


class BasicScheduler(_SigmasNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "scheduler": (list(SCHEDULER_NAMES),), "steps": steps_input(),
                             "denoise": denoise_input()}}

    def get_sigmas(self, model, scheduler, steps, denoise):
        total_steps = steps
        if denoise < 1.0:
            if denoise <= 0.0:
                return (torch.zeros([0]),)
            total_steps = int(steps / denoise)
        sigmas = calculate_sigmas(model.model_sampling, scheduler, total_steps).cpu()
        return (sigmas[-(steps + 1):],)


class KarrasScheduler(_SigmasNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": steps_input(), **_sigma_range(), "rho": free_float(7.0, 0.0, 100.0)}}

    def get_sigmas(self, steps, sigma_max, sigma_min, rho):
        return (get_sigmas_karras(steps, sigma_min, sigma_max, rho),)


class ExponentialScheduler(_SigmasNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": steps_input(), **_sigma_range()}}

    def get_sigmas(self, steps, sigma_max, sigma_min):
        return (get_sigmas_exponential(steps, sigma_min, sigma_max),)


class PolyexponentialScheduler(_SigmasNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": steps_input(), **_sigma_range(), "rho": free_float(1.0, 0.0, 100.0)}}

    def get_sigmas(self, steps, sigma_max, sigma_min, rho):
        return (ss.get_sigmas_polyexponential(steps, sigma_min, sigma_max, rho),)


class LaplaceScheduler(_SigmasNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": steps_input(), **_sigma_range(), "mu": free_float(0.0, -10.0, 10.0, 0.1),
                             "beta": free_float(0.5, 0.0, 10.0, 0.1)}}

    def get_sigmas(self, steps, sigma_max, sigma_min, mu, beta):
        return (ss.get_sigmas_laplace(steps, sigma_min, sigma_max, mu, beta),)


class VPScheduler(_SigmasNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": steps_input(), "beta_d": free_float(19.9, 0.0, 5000.0),
                             "beta_min": free_float(0.1, 0.0, 5000.0), "eps_s": free_float(0.001, 0.0, 1.0, 0.0001)}}

    def get_sigmas(self, steps, beta_d, beta_min, eps_s):
        return (ss.get_sigmas_vp(steps, beta_d, beta_min, eps_s),)


class BetaSamplingScheduler(_SigmasNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "steps": steps_input(), "alpha": free_float(0.6, 0.0, 50.0),
                             "beta": free_float(0.6, 0.0, 50.0)}}

    def get_sigmas(self, model, steps, alpha, beta):
        return (beta_sigmas(model.model_sampling, steps, alpha=alpha, beta=beta),)


class SDTurboScheduler(_SigmasNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "steps": steps_input(1, 1, 10), "denoise": denoise_input(0)}}

    def get_sigmas(self, model, steps, denoise):
        return (ss.sd_turbo_sigmas(model.model_sampling, steps, denoise),)


def _v3_combo(options: list[str]) -> tuple:
    return ("COMBO", {"multiselect": False, "options": options})


class AlignYourStepsScheduler(_SigmasNode):
    INFO_V3 = True
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_align_your_steps"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_type": _v3_combo(list(ss.AYS_NOISE_LEVELS)), "steps": steps_input(10),
                             "denoise": denoise_input()}}

    def get_sigmas(self, model_type, steps, denoise):
        return (ss.tabled_sigmas(_table(ss.AYS_NOISE_LEVELS, model_type), steps, denoise),)


class OptimalStepsScheduler(_SigmasNode):
    INFO_V3 = True
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_optimalsteps"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model_type": _v3_combo(list(ss.OPTIMAL_STEPS_NOISE_LEVELS)),
                             "steps": steps_input(20, 3, 1000), "denoise": denoise_input()}}

    def get_sigmas(self, model_type, steps, denoise):
        return (ss.tabled_sigmas(_table(ss.OPTIMAL_STEPS_NOISE_LEVELS, model_type), steps, denoise),)


def _table(tables: dict[str, list[float]], model_type: str) -> list[float]:
    if model_type not in tables:
        raise ValueError(f"unknown model_type {model_type!r}; expected one of: {', '.join(tables)}")
    return tables[model_type]


class GITSScheduler(_SigmasNode):
    INFO_V3 = True
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_gits"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"coeff": ("FLOAT", {"default": 1.2, "min": 0.8, "max": 1.5, "step": 0.05}),
                             "steps": ("INT", {"default": 10, "min": 2, "max": 1000}), "denoise": denoise_input()}}

    def get_sigmas(self, coeff, steps, denoise):
        return (gits_sigmas(coeff, steps, denoise),)


class LTXVScheduler(_SigmasNode):
    INFO_V3 = True
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_lt"

    @classmethod
    def INPUT_TYPES(cls):
        shift = {"min": 0.0, "max": 100.0, "step": 0.01}
        return {"required": {
            "steps": steps_input(),
            "max_shift": ("FLOAT", {"default": 2.05, **shift}),
            "base_shift": ("FLOAT", {"default": 0.95, **shift}),
            "stretch": ("BOOLEAN", {"tooltip": "Rescale the schedule so that its last non-zero sigma is `terminal`.",
                                    "default": True}),
            "terminal": ("FLOAT", {"tooltip": "Smallest non-zero sigma after rescaling (used with stretch).",
                                   "default": 0.1, "min": 0.0, "max": 0.99, "step": 0.01}),
        }, "optional": {"latent": ("LATENT", {})}}

    def get_sigmas(self, steps, max_shift, base_shift, stretch, terminal, latent=None):
        tokens = 4096 if latent is None else math.prod(latent["samples"].shape[2:])
        return (ss.ltxv_sigmas(steps, max_shift, base_shift, stretch, terminal, tokens),)


# -- sigmas -------------------------------------------------------------------------------------------------------------
class _SigmasOp(_SigmasNode):
    CATEGORY = "sampling/custom_sampling/sigmas"


class SplitSigmas(_SigmasOp):
    RETURN_TYPES = ("SIGMAS", "SIGMAS")
    RETURN_NAMES = ("high_sigmas", "low_sigmas")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sigmas": ("SIGMAS",), "step": ("INT", {"default": 0, "min": 0, "max": 10000})}}

    def get_sigmas(self, sigmas, step):
        return ss.split_at_step(sigmas, step)


class SplitSigmasDenoise(_SigmasOp):
    RETURN_TYPES = ("SIGMAS", "SIGMAS")
    RETURN_NAMES = ("high_sigmas", "low_sigmas")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sigmas": ("SIGMAS",), "denoise": denoise_input()}}

    def get_sigmas(self, sigmas, denoise):
        return ss.split_by_denoise(sigmas, denoise)


class FlipSigmas(_SigmasOp):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sigmas": ("SIGMAS",)}}

    def get_sigmas(self, sigmas):
        return (ss.flip_sigmas(sigmas),)


class SetFirstSigma(_SigmasOp):
    FUNCTION = "set_first_sigma"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sigmas": ("SIGMAS",), "sigma": free_float(136.0, 0.0, 20000.0, 0.001)}}

    def set_first_sigma(self, sigmas, sigma):
        if len(sigmas) == 0:
            raise ValueError("SetFirstSigma needs a non-empty SIGMAS schedule")
        sigmas = sigmas.clone()
        sigmas[0] = sigma
        return (sigmas,)


class ExtendIntermediateSigmas(_SigmasOp):
    FUNCTION = "extend"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"sigmas": ("SIGMAS",), "steps": ("INT", {"default": 2, "min": 1, "max": 100}),
                             "start_at_sigma": free_float(-1.0, -1.0, 20000.0),
                             "end_at_sigma": free_float(12.0, 0.0, 20000.0),
                             "spacing": (["linear", "cosine", "sine"],)}}

    def extend(self, sigmas, steps, start_at_sigma, end_at_sigma, spacing):
        return (ss.extend_intermediate(sigmas, steps, start_at_sigma, end_at_sigma, spacing),)


class SamplingPercentToSigma(_SigmasOp):
    RETURN_TYPES = ("FLOAT",)
    RETURN_NAMES = ("sigma_value",)
    FUNCTION = "get_sigma"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {}),
            "sampling_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.0001}),
            "return_actual_sigma": ("BOOLEAN", {"default": False, "tooltip": (
                "Give the model's real sigma_max / sigma_min at 0 and 1 instead of the sentinels that timestep "
                "ranges compare against; other percentages are unaffected.")}),
        }}

    def get_sigma(self, model, sampling_percent, return_actual_sigma):
        ms = model.model_sampling
        sigma = ms.percent_to_sigma(sampling_percent)
        if return_actual_sigma:
            if sampling_percent == 0.0:
                sigma = float(ms.sigma_max)
            elif sampling_percent == 1.0:
                sigma = float(ms.sigma_min)
        return (sigma,)


NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in (
    BasicScheduler, KarrasScheduler, ExponentialScheduler, PolyexponentialScheduler, LaplaceScheduler, VPScheduler,
    BetaSamplingScheduler, SDTurboScheduler, AlignYourStepsScheduler, GITSScheduler, LTXVScheduler,
    OptimalStepsScheduler, SplitSigmas, SplitSigmasDenoise, FlipSigmas, SetFirstSigma, ExtendIntermediateSigmas,
    SamplingPercentToSigma)}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
