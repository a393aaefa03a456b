"""The MODEL object: a UNet plus everything needed to use it as a k-diffusion denoiser.

    denoised = model.apply_model(x, sigma, context=cond, y=adm)        # x = x0 + sigma·eps (k-diffusion space)

does c_in scaling, sigma -> discrete timestep, the UNet call and the eps/v -> x0 conversion (Karras et al. 2022,
table 1). `extra_conds(...)` builds the per-conditioning UNet inputs ComfyUI calls model conds (`y` for SDXL/unCLIP,
`c_concat` for inpaint models). `clone()` shares the UNet weights; LoRA patches live on the clone and are applied to
the shared module lazily (see lora.py), so cached base weights are never changed for other users.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ComfyCoreError
from .adm import NoiseAugmentor, size_features, unclip_adm
from .detect import ModelSpec
from .lora import LoraPatch, PatchState, patched
from .model_sampling import SD15_LATENT, SDXL_LATENT, LatentFormat, ModelSampling
from .unet import UNetModel

# Latent of a mid-grey image per SD1/SD2 latent channel: the masked-image input of an inpaint model without a mask.
_BLANK_INPAINT_SD15 = (0.8223, -0.6876, 0.6364, 0.1380)


class DiffusionModel:
    """What a MODEL socket carries. Small on purpose: samplers need `apply_model`, `model_sampling`,
    `latent_format`, `extra_conds`, `device`/`dtype`."""

    def __init__(
        self,
        unet: UNetModel,
        spec: ModelSpec,
        *,
        source: str = "",
        noise_augmentor: NoiseAugmentor | None = None,
    ):
        self.unet = unet
        self.spec = spec
        self.source = source
        self.model_sampling = ModelSampling(spec.prediction)
        self.latent_format: LatentFormat = SDXL_LATENT if spec.family in ("sdxl", "sdxl_refiner") else SD15_LATENT
        self.patches: tuple[LoraPatch, ...] = ()
        self.model_options: dict[str, Any] = {"transformer_options": {}}
        if noise_augmentor is None and spec.family == "sdxl":  # SDXL revision: unCLIP on bigG image embeddings
            noise_augmentor = NoiseAugmentor(spec.pooled_dim or 1280)
        self.noise_augmentor = noise_augmentor

    def __repr__(self) -> str:
        return f"DiffusionModel({self.spec.comfy_name}, {self.spec.prediction}, {self.dtype}, {self.device}, " \
               f"{len(self.patches)} patches)"

    # -- identity / memory ------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (fp8-stored UNets compute in their `compute_dtype`, see fp8.py)."""
        return getattr(self.unet, "compute_dtype", None) or next(self.unet.parameters()).dtype

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.unet.parameters())

    def clone(self) -> DiffusionModel:
        """A new MODEL sharing the UNet weights, with its own patch list and options."""
        other = object.__new__(DiffusionModel)
        other.__dict__.update(self.__dict__)
        other.model_options = {**self.model_options,
                               "transformer_options": dict(self.model_options.get("transformer_options", {}))}
        return other

    def add_patches(self, patch: LoraPatch) -> DiffusionModel:
        """Append a LoRA patch to THIS object (call on a clone)."""
        self.patches = self.patches + (patch,)
        return self

    def patched_unet(self):
        """Context manager: the shared UNet, locked, with this model's patches applied (restored for others)."""
        return patched(self.unet, self.patches)

    def unpatch(self) -> None:
        """Put the original weights back now (e.g. before freeing or sharing memory)."""
        state = PatchState.of(self.unet)
        with state.lock:
            state.restore(self.unet)

    # -- latents ----------------------------------------------------------------------------------------------------
    def process_latent_in(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_out(latent)

    # -- denoiser -----------------------------------------------------------------------------------------------------
    def apply_model(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor,
        *,
        context: torch.Tensor | None,
        y: torch.Tensor | None = None,
        c_concat: torch.Tensor | None = None,
        control: dict[str, list] | None = None,
        transformer_options: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """x [B,C,h,w] (k-diffusion space), sigma [B] -> denoised x0 [B,C,h,w] in float32.

        Mirrors ComfyUI's BaseModel._apply_model: xc = x / sqrt(sigma²+1) (+ c_concat channels), t = nearest
        timestep of sigma (float32), UNet in the model dtype, output cast to float32, then eps/v -> x0.
        """
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1)
        if sigma.numel() == 1 and x.shape[0] > 1:
            sigma = sigma.expand(x.shape[0])
        ms = self.model_sampling
        xc = ms.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat.to(xc)], dim=1)
        dtype, device = self.dtype, self.device
        t = ms.timestep(sigma.cpu()).float().to(device)
        opts = {**self.model_options.get("transformer_options", {}), **(transformer_options or {})}
        with torch.no_grad(), self.patched_unet() as unet:
            out = unet(
                xc.to(device, dtype), t,
                context=context.to(device, dtype) if context is not None else None,
                y=y.to(device, dtype) if y is not None else None,
                control=control, transformer_options=opts,
            ).float()
        return ms.calculate_denoised(sigma.to(out.device), out, x.to(out.device))

    __call__ = apply_model

    # -- model conds ------------------------------------------------------------------------------------------------
    def extra_conds(self, **kw: Any) -> dict[str, torch.Tensor]:
        """UNet inputs for one conditioning entry (ComfyUI's BaseModel.extra_conds).

        Keyword inputs (all optional except where the model needs them): noise [B,C,h,w] (required), latent_image
        (already process_latent_in'd), denoise_mask, concat_latent_image, concat_mask, pooled_output [1,P],
        width/height (default noise size x8), crop_w/crop_h, target_width/target_height, aesthetic_score,
        prompt_type ("positive"/"negative"), unclip_conditioning (list of dicts), seed.
        Returns {"y": [B?,adm]} for ADM models, {"c_concat": [B,5|4,h,w]} for inpaint / InstructPix2Pix models and
        {"crossattn_controlnet": [1,T,D]} when the entry has `cross_attn_controlnet`.
        """
        noise = kw.get("noise")
        if noise is None:
            raise ComfyCoreError("extra_conds needs the noise tensor (its shape sizes the conds)")
        kw.setdefault("width", noise.shape[-1] * 8)
        kw.setdefault("height", noise.shape[-2] * 8)
        out: dict[str, torch.Tensor] = {}
        if self.spec.inpaint:
            out["c_concat"] = self.concat_cond(**kw)
        elif self.spec.ip2p:
            out["c_concat"] = self.ip2p_concat_cond(noise, kw.get("concat_latent_image"))
        y = self.encode_adm(**kw)
        if y is not None:
            out["y"] = repeat_to_batch(y, noise.shape[0])
        if kw.get("cross_attn_controlnet") is not None:  # CLIPTextEncodeControlnet: the ControlNet's own text
            out["crossattn_controlnet"] = kw["cross_attn_controlnet"]
        return out

    def encode_adm(self, **kw: Any) -> torch.Tensor | None:
        family = self.spec.family
        if family == "sdxl":
            pooled = self._sdxl_pooled(kw)
            w, h = kw["width"], kw["height"]
            feats = [h, w, kw.get("crop_h", 0), kw.get("crop_w", 0), kw.get("target_height", h), kw.get("target_width", w)]
            return torch.cat((pooled.float(), size_features(feats, pooled.shape[0])), dim=1)
        if family == "sdxl_refiner":
            pooled = self._sdxl_pooled(kw)
            default_score = 2.5 if kw.get("prompt_type", "") == "negative" else 6.0
            feats = [kw["height"], kw["width"], kw.get("crop_h", 0), kw.get("crop_w", 0),
                     kw.get("aesthetic_score", default_score)]
            return torch.cat((pooled.float(), size_features(feats, pooled.shape[0])), dim=1)
        if family == "sd2_unclip":
            conds = kw.get("unclip_conditioning")
            if not conds:
                return torch.zeros((1, self.spec.unet.adm_in_channels))
            return unclip_adm(conds, self.noise_augmentor, _unclip_seed(kw),
                              merge_noise=kw.get("unclip_noise_augment_merge", 0.05))
        return None

    def _sdxl_pooled(self, kw: Mapping[str, Any]) -> torch.Tensor:
        if kw.get("unclip_conditioning") and self.noise_augmentor is not None:
            adm = unclip_adm(kw["unclip_conditioning"], self.noise_augmentor, _unclip_seed(kw))
            return adm[:, : self.spec.pooled_dim]
        pooled = kw.get("pooled_output")
        if pooled is None:
            raise ComfyCoreError(f"{self.spec.comfy_name} models need a pooled text embedding (pooled_output) in the "
                                 "conditioning; use a matching CLIP")
        return pooled

    def concat_cond(self, **kw: Any) -> torch.Tensor:
        """[mask | masked-image latent] channels for inpaint models; a full mask and grey latent when none is given."""
        noise: torch.Tensor = kw["noise"]
        mask = kw.get("concat_mask", kw.get("denoise_mask"))
        image = kw.get("concat_latent_image")
        image = self.process_latent_in(image) if image is not None else kw.get("latent_image")
        if mask is None or image is None:
            blank = torch.tensor(_BLANK_INPAINT_SD15, dtype=noise.dtype).view(1, 4, 1, 1)
            return torch.cat([torch.ones_like(noise[:, :1]), blank.expand_as(noise).to(noise)], dim=1)
        if image.shape[1:] != noise.shape[1:]:
            image = resize_center(image, noise.shape[-2:])
        image = resize_to_batch(image, noise.shape[0])
        if mask.ndim == noise.ndim:
            mask = mask[:, :1]
        mask = mask.reshape((-1, 1) + tuple(mask.shape[-2:]))
        if mask.shape[-2:] != noise.shape[-2:]:
            mask = resize_center(mask, noise.shape[-2:])
        mask = resize_to_batch(mask.round(), noise.shape[0])
        return torch.cat([mask.to(noise), image.to(noise)], dim=1)

    def ip2p_concat_cond(self, noise: torch.Tensor, image: torch.Tensor | None) -> torch.Tensor:
        """The source latent for InstructPix2Pix models, as VAE-encoded (not scaled, as ComfyUI's SD1.5/SDXL ip2p);
        zeros when the conditioning has none."""
        if image is None:
            return torch.zeros_like(noise)
        if image.shape[1:] != noise.shape[1:]:
            image = resize_center(image, noise.shape[-2:])
        return resize_to_batch(image, noise.shape[0]).to(noise)


def _unclip_seed(kw: Mapping[str, Any]) -> int:
    """ComfyUI noises unCLIP image embeddings with the sampler seed minus 10 (0 - 10 when there is no seed)."""
    seed = kw.get("seed")
    return (0 if seed is None else int(seed)) - 10


def resize_center(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Center-crop [B,C,H,W] to the aspect ratio of `size` (h, w), then bilinear resize (ComfyUI common_upscale)."""
    h, w = x.shape[-2:]
    th, tw = int(size[0]), int(size[1])
    old, new = w / h, tw / th
    if old > new:
        cut = round((w - w * (new / old)) / 2)
        x = x[..., :, cut:w - cut]
    elif old < new:
        cut = round((h - h * (old / new)) / 2)
        x = x[..., cut:h - cut, :]
    return F.interpolate(x, size=(th, tw), mode="bilinear")


def repeat_to_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Tile (or cut) rows to `batch` (a per-prompt vector for every latent in the batch)."""
    n = x.shape[0]
    if n > batch:
        return x[:batch]
    if n < batch:
        return x.repeat((math.ceil(batch / n),) + (1,) * (x.ndim - 1))[:batch]
    return x


def resize_to_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Repeat or subsample along the batch axis to `batch` rows, spreading picks evenly (ComfyUI's rule)."""
    n = x.shape[0]
    if n == batch:
        return x
    if batch <= 1:
        return x[:batch]
    if batch < n:
        scale = (n - 1) / (batch - 1)
        idx = [min(round(i * scale), n - 1) for i in range(batch)]
    else:
        scale = n / batch
        idx = [min(math.floor((i + 0.5) * scale), n - 1) for i in range(batch)]
    return x[idx]
