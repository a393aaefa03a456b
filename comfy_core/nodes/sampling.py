"""KSampler and KSamplerAdvanced (ComfyUI's schemas), on top of `comfy_core.sampling.ksampler`."""
from __future__ import annotations

from typing import Any

from .. import context
from ..sampling.ksampler import latent_previewer, sample_latent
from ..sampling.samplers import KSAMPLER_NAMES
from ..sampling.schedulers import SCHEDULER_NAMES

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def seed_input(tooltip: str | None = None) -> tuple:
    options: dict[str, Any] = {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True}
    if tooltip:
        options["tooltip"] = tooltip
    return ("INT", options)


def cfg_options() -> dict[str, Any]:
    return {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}


def attention_backend_choice() -> str | None:
    """The engine's attention backend choice (EngineConfig.attention_backend), forced on the UNet for this run."""
    return getattr(context.current().config, "attention_backend", None)


def step_reporter(model):
    """Per-step callback: progress (an interrupt point) plus a preview (EngineConfig.preview_method) when a client
    asked for one; the previewer (and a TAESD decoder) is set up once per sampling run."""
    ctx = context.current()
    previewer = None
    if ctx.wants_previews:
        previewer = latent_previewer(model, ctx.config.preview_method, ctx.folders, ctx.models, ctx.device,
                                     ctx.config.preview_size)

    def on_step(step: int, total: int, denoised) -> None:
        ctx.progress(step + 1, total, previewer(denoised) if previewer is not None else None)

    return on_step


class KSampler:
    DESCRIPTION = "Denoises a latent with a model, guided by positive and negative conditioning."
    CATEGORY = "sampling"
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("The latent after denoising.",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "The diffusion model that predicts the noise."}),
            "seed": seed_input("Seed of the initial noise (and of the sampler's own noise)."),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "Number of sampling steps."}),
            "cfg": ("FLOAT", {**cfg_options(), "tooltip": "Classifier-free guidance scale: how strongly the result "
                                                            "follows the positive conditioning."}),
            "sampler_name": (list(KSAMPLER_NAMES), {"tooltip": "The sampling algorithm."}),
            "scheduler": (list(SCHEDULER_NAMES), {"tooltip": "How the noise levels are spaced over the steps."}),
            "positive": ("CONDITIONING", {"tooltip": "What the image should contain."}),
            "negative": ("CONDITIONING", {"tooltip": "What the image should avoid."}),
            "latent_image": ("LATENT", {"tooltip": "The latent to denoise (empty for txt2img)."}),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                  "tooltip": "Fraction of the schedule to run; below 1 keeps the input's structure."}),
        }}

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise=1.0):
        latent = sample_latent(model, latent_image, positive, negative, seed=seed, steps=steps, cfg=cfg,
                               sampler_name=sampler_name, scheduler=scheduler, denoise=denoise,
                               on_step=step_reporter(model), attention_backend=attention_backend_choice())
        return (latent,)


class KSamplerAdvanced:
    CATEGORY = "sampling"
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL",),
            "add_noise": (["enable", "disable"],),
            "noise_seed": seed_input(),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", cfg_options()),
            "sampler_name": (list(KSAMPLER_NAMES),),
            "scheduler": (list(SCHEDULER_NAMES),),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent_image": ("LATENT",),
            "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000}),
            "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000}),
            "return_with_leftover_noise": (["disable", "enable"],),
        }}

    def sample(self, model, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative,
               latent_image, start_at_step, end_at_step, return_with_leftover_noise, denoise=1.0):
        latent = sample_latent(model, latent_image, positive, negative, seed=noise_seed, steps=steps, cfg=cfg,
                               sampler_name=sampler_name, scheduler=scheduler, denoise=denoise,
                               add_noise=add_noise == "enable", start_step=start_at_step, last_step=end_at_step,
                               force_full_denoise=return_with_leftover_noise != "enable",
                               on_step=step_reporter(model), attention_backend=attention_backend_choice())
        return (latent,)


NODE_CLASS_MAPPINGS = {"KSampler": KSampler, "KSamplerAdvanced": KSamplerAdvanced}
NODE_DISPLAY_NAME_MAPPINGS = {"KSampler": "KSampler", "KSamplerAdvanced": "KSampler (Advanced)"}
