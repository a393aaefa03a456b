"""The KSampler pipeline (ComfyUI's common_ksampler → KSampler.sample → CFGGuider → KSAMPLER): seed → noise,
scheduler → sigmas (denoise, start/end steps), conds, optional inpaint mask, sampler, latent in/out scaling.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ModelLoadError
from ..kernels.attention import requested_backend
from ..models.taesd import decode_preview, load_decoder
from .custom import SamplerObject, sampler_object
from .guidance import CFGDenoiser, Cond, InpaintDenoiser, prepare_conds
from .noise import inpaint_random_noise, prepare_noise
from .samplers import DISCARD_PENULTIMATE_SIGMA_SAMPLERS
from .schedulers import ksampler_sigmas

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, torch.Tensor], None]  # (step, total, denoised x0 in model space)
DenoiserFactory = Callable[[dict[str, list[Cond]]], Any]  # resolved conds by name -> k-diffusion denoiser


def fix_empty_latent_channels(model, latent: torch.Tensor) -> torch.Tensor:
    """An all-zero latent with the wrong channel count (EmptyLatentImage is 4-channel) is widened to the model's."""
    channels = model.latent_format.latent_channels
    if latent.shape[1] != channels and torch.count_nonzero(latent) == 0:
        return torch.zeros((latent.shape[0], channels, *latent.shape[2:]), dtype=latent.dtype)
    return latent


def reshape_mask(mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A [B?,H,W] noise mask → [B,C,h,w] at latent size (bilinear), repeated over channels and batch."""
    mask = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).float()
    mask = F.interpolate(mask, size=tuple(shape[2:]), mode="bilinear")
    mask = mask.repeat(1, shape[1], 1, 1)[:, : shape[1]]
    if mask.shape[0] < shape[0]:
        mask = mask.repeat(-(-shape[0] // mask.shape[0]), 1, 1, 1)
    return mask[: shape[0]]


def controls_of(*cond_lists: list) -> list:
    """Every distinct control object attached to the conditioning entries (identity, not equality)."""
    found: list = []
    for conds in cond_lists:
        for _, extras in conds:
            control = extras.get("control")
            if control is not None and all(control is not c for c in found):
                found.append(control)
    return found


def share_control_with_uncond(positive: list, negative: list) -> list:
    """ComfyUI's apply_empty_x_to_equal_area for "control": when no full-frame negative entry has a ControlNet,
    the full-frame positive entries flagged `control_apply_to_uncond` lend theirs to the negative entries without."""
    def full_frame(conds, with_control):
        return [(i, extras) for i, (_, extras) in enumerate(conds)
                if "area" not in extras and (extras.get("control") is not None) == with_control]

    lenders = [extras["control"] for _, extras in full_frame(positive, True)
               if extras.get("control_apply_to_uncond", False)]
    takers = full_frame(negative, False)
    if full_frame(negative, True) or not lenders or not takers:
        return negative
    negative = list(negative)
    for n, control in enumerate(lenders):  # as ComfyUI: more lenders than takers overwrite in turn
        index, extras = takers[n % len(takers)]
        negative[index] = [negative[index][0], {**extras, "control": control}]
    return negative


def step_sigmas(model, sampler_name: str, scheduler: str, steps: int, denoise: float,
                start_step: int | None, last_step: int | None, force_full_denoise: bool) -> torch.Tensor:
    """The sigma schedule after KSamplerAdvanced's start/end truncation."""
    sigmas = ksampler_sigmas(model.model_sampling, scheduler, steps, denoise,
                             sampler_name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS)
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        sigmas = sigmas[start_step:] if start_step < len(sigmas) - 1 else sigmas[:0]
    return sigmas


def sample_latent(model, latent: dict[str, Any], positive: list, negative: list, *, seed: int, steps: int, cfg: float,
                  sampler_name: str, scheduler: str, denoise: float = 1.0, add_noise: bool = True,
                  start_step: int | None = None, last_step: int | None = None, force_full_denoise: bool = False,
                  on_step: StepCallback | None = None, attention_backend: str | None = None) -> dict[str, Any]:
    """Denoise a LATENT dict; returns a new LATENT dict (ComfyUI's `common_ksampler`).

    `attention_backend` (e.g. `EngineConfig.attention_backend`): forces the UNet's attention backend for this run;
    None / "auto" keep the model's own choice (see `kernels.attention`)."""
    latent_image = fix_empty_latent_channels(model, latent["samples"])
    if add_noise:
        noise = prepare_noise(latent_image, seed, latent.get("batch_index"))
    else:
        noise = torch.zeros(latent_image.shape, dtype=latent_image.dtype)
    sigmas = step_sigmas(model, sampler_name, scheduler, steps, denoise, start_step, last_step, force_full_denoise)
    out = dict(latent)
    if len(sigmas) == 0:  # nothing to do (denoise 0, or start_at_step past the end)
        out["samples"] = latent_image
        return out
    out["samples"] = run_sampler(model, noise, sigmas, positive, negative, cfg, sampler_name, latent_image,
                                 latent.get("noise_mask"), seed, on_step, attention_backend=attention_backend)
    return out


def run_sampler(model, noise: torch.Tensor, sigmas: torch.Tensor, positive: list, negative: list, cfg: float,
                sampler_name: str, latent_image: torch.Tensor, noise_mask: torch.Tensor | None, seed: int,
                on_step: StepCallback | None, *, attention_backend: str | None = None) -> torch.Tensor:
    """The KSampler's run: CFG over positive/negative with a registered sampler (see `sample_guided`)."""
    def cfg_denoiser(conds: dict[str, list[Cond]]) -> CFGDenoiser:
        return CFGDenoiser(model, conds["positive"], conds["negative"], cfg)

    return sample_guided(model, noise, sigmas, {"positive": positive, "negative": negative}, cfg_denoiser,
                         sampler_object(sampler_name), latent_image, noise_mask, seed, on_step,
                         attention_backend=attention_backend)


def sample_guided(model, noise: torch.Tensor, sigmas: torch.Tensor, conds: Mapping[str, list],
                  make_denoiser: DenoiserFactory, sampler: SamplerObject, latent_image: torch.Tensor,
                  noise_mask: torch.Tensor | None, seed: int | None, on_step: StepCallback | None, *,
                  attention_backend: str | None = None) -> torch.Tensor:
    """ComfyUI's CFGGuider.sample for any guider: named CONDITIONING lists ("positive" is encoded as the positive
    prompt, every other list as a negative one) are resolved against the latent, `make_denoiser` turns them into the
    k-diffusion denoiser, and `sampler` runs it over `sigmas`. ControlNets found in any list are prepared for the
    run and cleaned up after it. Returns the denoised latent (CPU, float32, out of model space)."""
    conds = dict(conds)
    if "positive" in conds and "negative" in conds:
        conds["negative"] = share_control_with_uncond(conds["positive"], conds["negative"])
    controls = controls_of(*conds.values())
    for control in controls:
        control.pre_run(model, model.model_sampling.percent_to_sigma)
    try:
        return _sample(model, noise, sigmas, conds, make_denoiser, sampler, latent_image, noise_mask, seed,
                       on_step, guider_model_options(model, attention_backend))
    finally:
        for control in controls:
            control.cleanup()


def guider_model_options(model, attention_backend: str | None) -> dict[str, Any]:
    """The model_options the sampler hands the guider: a forced attention backend merged into (not replacing) the
    model's own transformer_options, which the UNet reads as transformer_options["attention_backend"]."""
    if attention_backend in (None, "", "auto"):
        return {}
    requested_backend(attention_backend)  # an unknown name fails here, before any step
    own = model.model_options.get("transformer_options", {})
    return {"transformer_options": {**own, "attention_backend": attention_backend}}


def _sample(model, noise, sigmas, conds, make_denoiser, sampler, latent_image, noise_mask, seed, on_step,
            model_options: dict[str, Any] | None = None):
    device = model.device
    if torch.count_nonzero(latent_image) > 0:  # an empty latent is not shifted
        latent_image = model.process_latent_in(latent_image)
    latent_image, noise = latent_image.to(device, torch.float32), noise.to(device, torch.float32)
    mask = reshape_mask(noise_mask, noise.shape).to(device) if noise_mask is not None else None
    prepared = {name: prepare_conds(model, cond, noise, prompt_type="positive" if name == "positive" else "negative",
                                    latent_image=latent_image, denoise_mask=mask, seed=seed)
                for name, cond in conds.items()}
    denoiser: Any = make_denoiser(prepared)
    if mask is not None:
        inpaint_noise = noise
        if sampler.random_inpaint_noise:
            inpaint_noise = inpaint_random_noise(noise.shape, seed, noise.dtype).to(device)
        denoiser = InpaintDenoiser(denoiser, latent_image, inpaint_noise, mask, sigmas.to(device))
    ms = model.model_sampling
    x = ms.noise_scaling(sigmas[0], noise, latent_image, ms.max_denoise(sigmas))
    total = len(sigmas) - 1

    def callback(info: dict[str, Any]) -> None:
        if on_step is not None:
            on_step(info["i"], total, info["denoised"])

    extra_args = {"model_options": model_options or {}, "seed": seed}
    samples = sampler(denoiser, x, sigmas.to(device), extra_args=extra_args,
                      callback=callback if on_step is not None else None, seed=seed)
    samples = ms.inverse_noise_scaling(sigmas[-1], samples)
    return model.process_latent_out(samples.to(torch.float32)).cpu()


def preview_jpeg(model, x0: torch.Tensor, max_size: int = 512) -> bytes:
    """Latent → RGB preview via the family's latent2rgb factors, as JPEG bytes (quality 95). Like ComfyUI's
    server (ImageOps.contain) the picture is resized to fit max_size² both ways: an 8×8 latent gives 512×512."""
    from ..images import encode_preview

    rgb = model.latent_format.preview_rgb(x0[:1].float())[0]  # [h, w, 3] in 0..1
    return encode_preview(rgb, "JPEG", max_size)


Previewer = Callable[[torch.Tensor], bytes]  # denoised x0 (model space) -> JPEG bytes


def find_taesd_decoder(latent_format, folders) -> Any:
    """The family's decoder in vae_approx/: the first listed file whose name starts with `taesd_decoder_name`
    (as ComfyUI picks it), or None."""
    name = latent_format.taesd_decoder_name
    if not name:
        return None
    match = next((f for f in folders.list("vae_approx") if f.startswith(name)), None)
    return folders.full_path("vae_approx", match) if match else None


def latent_previewer(model, method: str, folders, cache=None, device: Any = None, max_size: int = 512
                     ) -> Previewer | None:
    """The per-step preview function for `method`, chosen once per sampling run like ComfyUI's get_previewer.

    "taesd" decodes with the family's TAESD decoder (loaded once through `cache`, a ModelCache, when given) and
    falls back to latent2rgb when the file is missing or unreadable; "auto" is latent2rgb, as in ComfyUI 0.3.x."""
    if method == "none":
        return None
    if method == "taesd":
        decoder = _taesd_decoder(model, folders, cache, device)
        if decoder is not None:
            return lambda x0: taesd_preview_jpeg(decoder, x0, max_size)
    return lambda x0: preview_jpeg(model, x0, max_size)


def _taesd_decoder(model, folders, cache, device: Any) -> Any:
    path = find_taesd_decoder(model.latent_format, folders)
    if path is None:
        log.warning("TAESD previews enabled, but no models/vae_approx/%s file", model.latent_format.taesd_decoder_name)
        return None
    dev = torch.device(device) if device is not None else torch.device("cpu")

    def load() -> Any:
        return load_decoder(path)[0].to(dev)

    try:  # float32 whatever the engine dtype: the decoder is tiny and previews should not band
        return cache.get_custom(path, "taesd_decoder", load, device=dev, dtype=torch.float32) if cache else load()
    except ModelLoadError as e:
        log.warning("TAESD previews: %s; using latent2rgb", e)
        return None


def taesd_preview_jpeg(decoder, x0: torch.Tensor, max_size: int = 512) -> bytes:
    """TAESD-decoded preview of the first latent as JPEG: bytes truncated to 0..255 like ComfyUI's preview_to_image,
    then fitted into max_size² (the decoder gives 8 pixels per latent pixel)."""
    from PIL import Image

    from ..images import encode_preview

    rgb = decode_preview(decoder, x0.float())  # [8h, 8w, 3] in 0..1
    return encode_preview(Image.fromarray(rgb.mul(255).to(torch.uint8).numpy()), "JPEG", max_size)
