"""Classifier-free guidance over conditioning lists (ComfyUI's CFGGuider / calc_cond_batch), as a k-diffusion denoiser.

A CONDITIONING is a list of `[cross_attn [B,T,D], extras]`. Each entry becomes a `Cond`: its model inputs
(`c_crossattn`, and from `model.extra_conds` the ADM vector `y` / inpaint `c_concat`), an optional area and mask with
their strengths, an optional sigma window (from `start_percent`/`end_percent`) and an optional ControlNet.

Per call, every active entry of the positive and negative lists is cropped to its area, entries of the same shape are
run as ONE batch (so cond + uncond is a single UNet call, in ComfyUI's [uncond, cond] row order), and the outputs are
blended back with their masks/strengths:  pred = Σ out·mult / Σ mult  per list. Then (Ho & Salimans 2022)

    denoised = uncond + cfg · (cond − uncond)

A `model_options["sampler_cfg_function"]` replaces that combine (RescaleCFG). As in ComfyUI it works in eps space:
its args "cond"/"uncond" are the noise predictions x − D (plus "cond_denoised"/"uncond_denoised", "cond_scale",
"sigma" = "timestep", "input", "model", "model_options") and it returns the guided noise, so denoised = x − fn(args).
Then come the `model_options["sampler_post_cfg_function"]` hooks (CFG++ samplers, PAG, epsilon scaling). At cfg 1
the negative list is skipped unless `disable_cfg1_optimization` is set (its prediction is then zeros).

ControlNet contract: an entry's extras may carry `"control"`, an object with
`get_control(x, sigma, conds: dict, cond_or_uncond: list[int]) -> {"input": [...], "middle": [...], "output": [...]}`
called with the batched UNet input of that call; the result is passed to the UNet as `control`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..models.gligen import gligen_middle_patch
from .common import (
    CFG_FUNCTION,
    DISABLE_CFG1_OPTIMIZATION,
    POST_CFG_FUNCTIONS,
    PRE_CFG_FUNCTIONS,
    GuidedPrediction,
    guidance_is_plain,
)

POSITIVE, NEGATIVE = 0, 1
DENOISE_MASK_FUNCTION = "denoise_mask_function"  # model_options key, as in ComfyUI
AREA_FEATHER = 8  # latent pixels over which an area's edges fade in (ComfyUI's "fuzz")


@dataclass
class Cond:
    """One conditioning entry, resolved for a given latent size."""

    context: torch.Tensor  # [B, T, D] cross-attention tokens
    model_conds: dict[str, torch.Tensor] = field(default_factory=dict)  # "y", "c_concat"
    area: tuple[int, int, int, int] | None = None  # (h, w, y, x) in latent pixels
    strength: float = 1.0
    mask: torch.Tensor | None = None  # [B, h, w] at latent size
    mask_strength: float = 1.0
    sigma_start: float | None = None  # active while sigma <= sigma_start
    sigma_end: float | None = None  # ... and sigma >= sigma_end
    control: Any = None
    gligen: Any = None  # ("position", GLIGEN model, boxes): a per-call middle_patch (models/gligen.py)


def _resolve_area(extras: dict[str, Any], height: int, width: int) -> tuple[int, int, int, int] | None:
    area = extras.get("area")
    if area is None:
        return None
    if area[0] == "percentage":  # fractions of the latent: (h, w, y, x)
        h, w, y, x = area[1:]
        return (max(1, round(h * height)), max(1, round(w * width)), round(y * height), round(x * width))
    return tuple(int(v) for v in area)


def _resolve_mask(extras: dict[str, Any], height: int, width: int, device) -> torch.Tensor | None:
    mask = extras.get("mask")
    if mask is None:
        return None
    mask = mask.to(device=device, dtype=torch.float32)
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if tuple(mask.shape[1:]) != (height, width):  # [B,H,W] -> [B,1,H,W] -> resize -> [B,h,w]
        mask = F.interpolate(mask.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False).squeeze(1)
    return mask


def _bounds_area(mask: torch.Tensor) -> tuple[int, int, int, int] | None:
    """`set_area_to_bounds`: the bounding box of the mask's non-zero pixels, as (h, w, y, x)."""
    coords = torch.nonzero(mask.abs().amax(dim=0) > 0)
    if coords.numel() == 0:
        return None
    (y0, x0), (y1, x1) = coords.min(dim=0).values.tolist(), coords.max(dim=0).values.tolist()
    return (y1 - y0 + 1, x1 - x0 + 1, y0, x0)


def prepare_conds(model, conditioning: list, noise: torch.Tensor, *, prompt_type: str,
                  latent_image: torch.Tensor | None = None, denoise_mask: torch.Tensor | None = None,
                  seed: int | None = None) -> list[Cond]:
    """Resolve a CONDITIONING list against the latent `noise` [B,C,h,w] (ComfyUI's process_conds)."""
    height, width = noise.shape[-2:]
    ms = model.model_sampling
    conds = []
    for context, extras in conditioning:
        mask = _resolve_mask(extras, height, width, noise.device)
        area = _resolve_area(extras, height, width)
        if mask is not None and extras.get("set_area_to_bounds"):
            area = _bounds_area(mask) or area
        params = {k: v for k, v in extras.items() if k not in ("area", "mask", "control", "gligen")}
        # as ComfyUI's encode_model_conds: an entry's own values win, except the noise the sampler starts from
        model_conds = model.extra_conds(**{"latent_image": latent_image, "denoise_mask": denoise_mask, "seed": seed,
                                           "prompt_type": prompt_type, **params, "noise": noise})
        conds.append(Cond(
            context=context, model_conds=model_conds, area=area, strength=float(extras.get("strength", 1.0)),
            mask=mask, mask_strength=float(extras.get("mask_strength", 1.0)),
            sigma_start=ms.percent_to_sigma(extras["start_percent"]) if "start_percent" in extras else None,
            sigma_end=ms.percent_to_sigma(extras["end_percent"]) if "end_percent" in extras else None,
            control=extras.get("control"), gligen=extras.get("gligen")))
    return conds


@dataclass
class _Chunk:
    """One entry's share of a model call: its input crop, blend weights and model inputs."""

    which: int  # POSITIVE or NEGATIVE
    x: torch.Tensor  # [B, C, ah, aw]
    mult: torch.Tensor  # [B, C, ah, aw]
    area: tuple[int, int, int, int]  # (h, w, y, x)
    context: torch.Tensor
    model_conds: dict[str, torch.Tensor]
    control: Any
    patches: dict[str, list] | None = None  # transformer patches of this entry only (GLIGEN's middle_patch)


def _feather(mult: torch.Tensor, area: tuple[int, int, int, int], full: tuple[int, int]) -> None:
    """Fade an area's inner edges in over a few latent pixels, so area prompts blend without seams."""
    for dim, (size, offset, total) in enumerate(((area[0], area[2], full[0]), (area[1], area[3], full[1]))):
        axis = dim + 2
        steps = min(AREA_FEATHER, mult.shape[axis] // 4)
        for t in range(steps):
            weight = (t + 1) / steps
            if offset != 0:
                mult.narrow(axis, t, 1).mul_(weight)
            if size + offset < total:
                mult.narrow(axis, size - 1 - t, 1).mul_(weight)


def _chunk(cond: Cond, which: int, x: torch.Tensor, sigma: torch.Tensor) -> _Chunk | None:
    s = float(sigma[0])
    if (cond.sigma_start is not None and s > cond.sigma_start) or (cond.sigma_end is not None and s < cond.sigma_end):
        return None
    height, width = x.shape[-2:]
    h, w, y, x0 = cond.area if cond.area is not None else (height, width, 0, 0)
    h, w = min(height - y, h), min(width - x0, w)
    crop = x[:, :, y:y + h, x0:x0 + w]
    if cond.mask is not None:
        mask = cond.mask[: crop.shape[0], y:y + h, x0:x0 + w] * cond.mask_strength  # [b, h, w]
        mult = mask.unsqueeze(1).repeat(crop.shape[0] // mask.shape[0], crop.shape[1], 1, 1)
    else:
        mult = torch.ones_like(crop)
    mult = mult * cond.strength
    if cond.mask is None and cond.area is not None:
        _feather(mult, (h, w, y, x0), (height, width))
    model_conds = {}
    for key, value in cond.model_conds.items():
        if value.ndim == 4:  # spatial conds (inpaint c_concat) follow the area
            value = value[:, :, y:y + h, x0:x0 + w]
        model_conds[key] = _to_batch(value, crop.shape[0])
    patches = None
    if cond.gligen is not None:
        patches = {"middle_patch": [gligen_middle_patch(cond.gligen, crop.shape, crop.device)]}
    return _Chunk(which, crop, mult, (h, w, y, x0), _to_batch(cond.context, crop.shape[0]), model_conds, cond.control,
                  patches)


def _to_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    if t.shape[0] == batch:
        return t
    if t.shape[0] < batch:  # [b, ...] -> [batch, ...] by repetition
        return t.repeat(math.ceil(batch / t.shape[0]), *([1] * (t.ndim - 1)))[:batch]
    return t[:batch]


def _compatible(a: _Chunk, b: _Chunk) -> bool:
    if a.x.shape != b.x.shape or a.control is not b.control or a.patches is not b.patches \
            or a.model_conds.keys() != b.model_conds.keys():
        return False
    if any(a.model_conds[k].shape != b.model_conds[k].shape for k in a.model_conds):
        return False
    ta, tb = a.context.shape[1], b.context.shape[1]
    return a.context.shape[2] == b.context.shape[2] and math.lcm(ta, tb) // min(ta, tb) <= 4


def _cat_contexts(contexts: list[torch.Tensor]) -> torch.Tensor:
    """Token lengths differ (e.g. 77 vs 154): repeat each to their lcm so they batch (attention is unchanged)."""
    length = math.lcm(*(c.shape[1] for c in contexts))
    return torch.cat([c.repeat(1, length // c.shape[1], 1) for c in contexts])


def calc_cond_batch(model, cond_lists: list[list[Cond] | None], x: torch.Tensor, sigma: torch.Tensor,
                    model_options: dict[str, Any]) -> list[torch.Tensor]:
    """Predictions for each conditioning list (zeros for a None list), batching compatible chunks into one call."""
    outs = [torch.zeros_like(x) for _ in cond_lists]
    counts = [torch.full_like(x, 1e-37) for _ in cond_lists]
    pending = [c for which, conds in enumerate(cond_lists) if conds is not None
               for cond in conds if (c := _chunk(cond, which, x, sigma)) is not None]
    while pending:
        batch = [c for c in pending if _compatible(pending[0], c)][::-1]  # ComfyUI batches in reverse order
        pending = [c for c in pending if all(c is not b for b in batch)]
        _run_batch(model, batch, sigma, model_options, outs, counts)
    return [out / count for out, count in zip(outs, counts)]


def _run_batch(model, batch: list[_Chunk], sigma, model_options, outs, counts) -> None:
    rows = batch[0].x.shape[0]
    x_in = torch.cat([c.x for c in batch])
    sigma_in = torch.cat([sigma] * len(batch))
    conds = {"context": _cat_contexts([c.context for c in batch])}
    for key in batch[0].model_conds:
        conds[key] = torch.cat([c.model_conds[key] for c in batch])
    control = None
    if batch[0].control is not None:
        control = batch[0].control.get_control(x_in, sigma_in, conds, [c.which for c in batch])
    transformer_options = {**model_options.get("transformer_options", {}),
                           "cond_or_uncond": [c.which for c in batch], "sigmas": sigma_in}
    if batch[0].patches:  # an entry's own patches run after the MODEL's (ComfyUI appends them)
        own = transformer_options.get("patches", {})
        transformer_options["patches"] = {**own, **{k: [*own.get(k, []), *v] for k, v in batch[0].patches.items()}}
    output = model.apply_model(x_in, sigma_in, context=conds["context"], y=conds.get("y"),
                               c_concat=conds.get("c_concat"), control=control,
                               transformer_options=transformer_options)
    for i, chunk in enumerate(batch):
        h, w, y, x0 = chunk.area
        part = output[i * rows:(i + 1) * rows]
        outs[chunk.which][:, :, y:y + h, x0:x0 + w] += part * chunk.mult
        counts[chunk.which][:, :, y:y + h, x0:x0 + w] += chunk.mult


def merged_model_options(own: dict[str, Any], extra: dict[str, Any] | None) -> dict[str, Any]:
    """The MODEL's options overlaid with a sampler's (extra wins per key), except that post-CFG hooks accumulate
    (the MODEL's first, e.g. PAG, then a sampler's own, e.g. CFG++'s uncond capture) and transformer_options merge."""
    if not extra:
        return own
    options = {**own, **extra}
    own_hooks = own.get(POST_CFG_FUNCTIONS, [])
    if own_hooks and POST_CFG_FUNCTIONS in extra:
        options[POST_CFG_FUNCTIONS] = [*own_hooks, *(f for f in extra[POST_CFG_FUNCTIONS] if f not in own_hooks)]
    if "transformer_options" in own and "transformer_options" in extra:
        options["transformer_options"] = {**own["transformer_options"], **extra["transformer_options"]}
    return options


class CFGDenoiser:
    """k-diffusion denoiser `(x, sigma, model_options=..., denoise_mask=...) -> x0` with CFG over two cond lists."""

    def __init__(self, model, positive: list[Cond], negative: list[Cond], cfg: float):
        self.model = model
        self.model_sampling = model.model_sampling
        self.positive, self.negative, self.cfg = positive, negative, float(cfg)

    def _predict(self, x: torch.Tensor, sigma: torch.Tensor,
                 options: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(cond, uncond, skipped): at cfg 1 the uncond pass is skipped and its prediction is zeros."""
        skip_uncond = math.isclose(self.cfg, 1.0) and not options.get(DISABLE_CFG1_OPTIMIZATION, False)
        cond, uncond = calc_cond_batch(self.model, [self.positive, None if skip_uncond else self.negative],
                                       x, sigma, options)
        return cond, uncond, skip_uncond

    def predict_guided(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict[str, Any] | None = None,
                       **_: Any) -> GuidedPrediction | None:
        """cond/uncond before the combine, for samplers that fuse it into their update (`common.guided_prediction`);
        None when post-CFG hooks must see the combined result."""
        options = merged_model_options(self.model.model_options, model_options)
        if not guidance_is_plain(options):
            return None
        cond, uncond, skipped = self._predict(x, sigma, options)
        return GuidedPrediction(cond, None if skipped else uncond, self.cfg)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict[str, Any] | None = None,
                 **_: Any) -> torch.Tensor:
        options = merged_model_options(self.model.model_options, model_options)
        cond, uncond, skipped = self._predict(x, sigma, options)
        for hook in options.get(PRE_CFG_FUNCTIONS, []):  # e.g. LatentApplyOperationCFG on the guidance direction
            conds = [self.positive, None if skipped else self.negative]
            cond, uncond = hook({"conds": conds, "conds_out": [cond, uncond],
                                 "cond_scale": self.cfg, "timestep": sigma, "input": x, "sigma": sigma,
                                 "model": self.model, "model_options": options})
        denoised = self._combine(cond, uncond, x, sigma, options)
        for hook in options.get(POST_CFG_FUNCTIONS, []):
            denoised = hook({"denoised": denoised, "cond": self.positive, "uncond": self.negative,
                             "model": self.model, "uncond_denoised": uncond, "cond_denoised": cond,
                             "sigma": sigma, "model_options": options, "input": x, "cond_scale": self.cfg})
        return denoised

    def _combine(self, cond: torch.Tensor, uncond: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor,
                 options: dict[str, Any]) -> torch.Tensor:
        """uncond + cfg·(cond − uncond), or the model's custom CFG function on eps-space predictions."""
        cfg_function = options.get(CFG_FUNCTION)
        if cfg_function is None:
            return uncond + (cond - uncond) * self.cfg
        args = {"cond": x - cond, "uncond": x - uncond, "cond_scale": self.cfg, "timestep": sigma, "input": x,
                "sigma": sigma, "cond_denoised": cond, "uncond_denoised": uncond, "model": self.model,
                "model_options": options}
        return x - cfg_function(args)


class InpaintDenoiser:
    """Keeps the unmasked region on the source latent (ComfyUI's KSamplerX0Inpaint): before each call the kept
    region is re-noised to the current sigma from `noise`, after it the prediction there is the source latent.
    It has no `predict_guided`: the blend acts on the combined prediction, so samplers call it whole.

    A `model_options["denoise_mask_function"]` (DifferentialDiffusion) rewrites the mask at every call as
    fn(sigma, mask, extra_options={"model": inner, "sigmas": schedule}); `sigmas` is the run's schedule. Without it
    the schedule is taken to start at the first sigma this denoiser sees and to end at 0 (a full run)."""

    def __init__(self, inner: CFGDenoiser, latent_image: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor,
                 sigmas: torch.Tensor | None = None):
        self.inner, self.latent_image, self.noise, self.mask = inner, latent_image, noise, mask
        self.model_sampling = inner.model_sampling
        self.sigmas = sigmas

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        mask = self._mask(sigma, kwargs.get("model_options"))
        keep = 1.0 - mask
        sigma_b = sigma.reshape([sigma.shape[0]] + [1] * (x.ndim - 1))
        renoised = self.model_sampling.noise_scaling(sigma_b, self.noise, self.latent_image)
        x = x * mask + renoised * keep
        out = self.inner(x, sigma, **kwargs)
        return out * mask + self.latent_image * keep

    def _mask(self, sigma: torch.Tensor, model_options: dict[str, Any] | None) -> torch.Tensor:
        model = getattr(self.inner, "model", None)
        options = {**getattr(model, "model_options", {}), **(model_options or {})}
        mask_function = options.get(DENOISE_MASK_FUNCTION)
        if mask_function is None:
            return self.mask
        if self.sigmas is None:
            self.sigmas = torch.stack([sigma.reshape(-1)[0].detach(), sigma.new_zeros(())])
        return mask_function(sigma, self.mask, extra_options={"model": self.inner, "sigmas": self.sigmas})
