"""GUIDER socket values (ComfyUI's `comfy.samplers.CFGGuider` and the custom-sampling node guiders): a model plus
named conditioning lists and guidance scales, which `sample()` runs through the KSampler's pipeline
(`ksampler.sample_guided`).

* `CFGGuider`: positive/negative with classifier-free guidance (Ho & Salimans 2022), exactly the KSampler's.
* `BasicGuider`: positive only, cfg 1 (the conditional prediction as is; flux-style guidance-distilled models).
* `DualCFGGuider`: cond1 / cond2 / negative. "regular": CFG of cond2 against negative, plus cfg_conds·(cond1 − cond2);
  "nested": CFG of cond1 against cond2, then CFG of that against negative.

Attribute and method names follow ComfyUI's (`model_patcher`, `conds`, `cfg`, `set_conds`, `set_cfg`, `sample`).
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .common import DISABLE_CFG1_OPTIMIZATION, PRE_CFG_FUNCTIONS
from .custom import SamplerObject
from .guidance import CFGDenoiser, Cond, calc_cond_batch, merged_model_options
from .ksampler import StepCallback, sample_guided


class CFGGuider:
    """Positive/negative conditioning with a CFG scale."""

    def __init__(self, model) -> None:
        self.model_patcher = model
        self.conds: dict[str, list] = {}
        self.cfg = 1.0

    @property
    def model(self):
        return self.model_patcher

    def set_conds(self, positive: list, negative: list) -> None:
        self.conds = {"positive": positive, "negative": negative}

    def set_cfg(self, cfg: float) -> None:
        self.cfg = float(cfg)

    def denoiser(self, conds: dict[str, list[Cond]]) -> Any:
        """The k-diffusion denoiser over the resolved conds (a missing list predicts zeros, as in ComfyUI)."""
        return CFGDenoiser(self.model, conds.get("positive", []), conds.get("negative"), self.cfg)

    def sample(self, noise: torch.Tensor, latent_image: torch.Tensor, sampler: SamplerObject, sigmas: torch.Tensor,
               *, denoise_mask: torch.Tensor | None = None, on_step: StepCallback | None = None,
               seed: int | None = None, attention_backend: str | None = None) -> torch.Tensor:
        """Denoise `latent_image` from `noise` over `sigmas`; an empty schedule returns the latent unchanged."""
        if len(sigmas) == 0:
            return latent_image
        return sample_guided(self.model, noise, sigmas, self.conds, self.denoiser, sampler, latent_image,
                             denoise_mask, seed, on_step, attention_backend=attention_backend)


class BasicGuider(CFGGuider):
    """The positive conditioning alone (ComfyUI's Guider_Basic: no negative list, cfg 1)."""

    def set_conds(self, positive: list) -> None:  # type: ignore[override]
        self.conds = {"positive": positive}


class DualCFGGuider(CFGGuider):
    """Two positive prompts and a negative one (ComfyUI's Guider_DualCFG); cond2 is encoded as a negative prompt."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.cfg1, self.cfg2, self.nested = 1.0, 1.0, False

    def set_conds(self, positive: list, middle: list, negative: list) -> None:  # type: ignore[override]
        self.conds = {"positive": positive, "middle": middle, "negative": negative}

    def set_cfg(self, cfg1: float, cfg2: float, nested: bool = False) -> None:  # type: ignore[override]
        self.cfg1, self.cfg2, self.nested = float(cfg1), float(cfg2), bool(nested)

    def denoiser(self, conds: dict[str, list[Cond]]) -> Any:
        return DualCFGDenoiser(self.model, conds["positive"], conds["middle"], conds["negative"],
                               self.cfg1, self.cfg2, self.nested)


class _Combine(CFGDenoiser):
    """CFGDenoiser's combine step (the model's CFG function and post-CFG hooks, ComfyUI's `cfg_function`) applied to
    predictions that were made elsewhere: `_predict` hands back the given pair instead of calling the model."""

    def __init__(self, model, cond: list[Cond] | None, uncond: list[Cond] | None, cfg: float,
                 predictions: tuple[torch.Tensor, torch.Tensor]) -> None:
        super().__init__(model, cond or [], uncond, cfg)
        self.predictions = predictions

    def _predict(self, x, sigma, options):
        return self.predictions[0], self.predictions[1], False


class DualCFGDenoiser:
    """denoised for DualCFGGuider; one batched model call evaluates negative, cond2 and cond1 together."""

    predict_guided = None  # the combine is not the plain CFG formula: samplers call the denoiser whole

    def __init__(self, model, positive: list[Cond], middle: list[Cond], negative: list[Cond], cfg1: float,
                 cfg2: float, nested: bool) -> None:
        self.model, self.model_sampling = model, model.model_sampling
        self.positive, self.middle, self.negative = positive, middle, negative
        self.cfg1, self.cfg2, self.nested = cfg1, cfg2, nested

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict[str, Any] | None = None,
                 **_: Any) -> torch.Tensor:
        options = merged_model_options(self.model.model_options, model_options)
        combine_options = {**options, PRE_CFG_FUNCTIONS: []}  # ComfyUI's dual CFG runs no pre-CFG hooks
        if self.nested:
            neg, mid, pos = calc_cond_batch(self.model, [self.negative, self.middle, self.positive], x, sigma, options)
            text = _Combine(self.model, self.positive, self.middle, self.cfg1, (pos, mid))(x, sigma, combine_options)
            return neg + self.cfg2 * (text - neg)
        negative, middle = self.negative, self.middle
        if not options.get(DISABLE_CFG1_OPTIMIZATION, False) and math.isclose(self.cfg2, 1.0):
            negative = None  # ComfyUI's cfg-1 shortcut, for each of the two guidance terms
            if math.isclose(self.cfg1, 1.0):
                middle = None
        neg, mid, pos = calc_cond_batch(self.model, [negative, middle, self.positive], x, sigma, options)
        guided = _Combine(self.model, middle, negative, self.cfg2, (mid, neg))(x, sigma, combine_options)
        return guided + (pos - mid) * self.cfg1
