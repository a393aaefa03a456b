"""Perpendicular negative guidance (Perp-Neg, Armandpour et al. 2023, eq. 6), as ComfyUI's nodes_perpneg.

With predictions for the positive, negative and empty prompts, guidance is taken relative to the empty prompt and
only the part of the negative direction orthogonal to the positive one is subtracted, so a negative prompt that
overlaps the positive one does not cancel it:

    pos = D_pos − D_empty,  neg = D_neg − D_empty,  perp = neg − (⟨neg, pos⟩ / ‖pos‖²) · pos
    denoised = D_empty + cfg · (pos − neg_scale · perp)

(⟨·,·⟩ and ‖·‖ over the whole batch tensor, as ComfyUI computes them.)

* `perp_neg_cfg_function`: the MODEL patch (old PerpNeg node): a sampler_cfg_function that predicts the empty prompt
  itself at every step (one extra model call).
* `PerpNegGuider`: the GUIDER: positive, negative and empty lists in one batched model call.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .common import DISABLE_CFG1_OPTIMIZATION, POST_CFG_FUNCTIONS, PRE_CFG_FUNCTIONS
from .guidance import Cond, calc_cond_batch, merged_model_options, prepare_conds
from .guiders import CFGGuider


def perp_neg(positive: torch.Tensor, negative: torch.Tensor, empty: torch.Tensor, neg_scale: float,
             cfg: float) -> torch.Tensor:
    """The Perp-Neg combine of three predictions (any parameterisation, all the same one)."""
    pos = positive - empty
    neg = negative - empty
    perp = neg - ((neg * pos).sum() / torch.norm(pos) ** 2) * pos
    return empty + cfg * (pos - perp * neg_scale)


def perp_neg_cfg_function(empty_conditioning: list, neg_scale: float):
    """A sampler_cfg_function (eps in, guided eps out) for the PerpNeg MODEL patch; the CFG pair is the usual
    positive/negative, the empty prompt is predicted inside with the step's model options."""

    def cfg_function(args: dict[str, Any]) -> torch.Tensor:
        model, x, sigma = args["model"], args["input"], args["sigma"]
        empty = prepare_conds(model, empty_conditioning, x, prompt_type="negative")
        (empty_pred,) = calc_cond_batch(model, [empty], x, sigma, args["model_options"])
        guided = perp_neg(args["cond_denoised"], args["uncond_denoised"], empty_pred, neg_scale, args["cond_scale"])
        return x - guided

    return cfg_function


class PerpNegGuider(CFGGuider):
    """ComfyUI's Guider_PerpNeg: positive / negative / empty conditioning with `cfg` and `neg_scale`."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.neg_scale = 1.0

    def set_conds(self, positive: list, negative: list, empty_negative_prompt: list) -> None:  # type: ignore[override]
        self.conds = {"positive": positive, "empty_negative_prompt": empty_negative_prompt, "negative": negative}

    def set_cfg(self, cfg: float, neg_scale: float = 1.0) -> None:  # type: ignore[override]
        self.cfg, self.neg_scale = float(cfg), float(neg_scale)

    def denoiser(self, conds: dict[str, list[Cond]]) -> Any:
        return PerpNegDenoiser(self.model, conds["positive"], conds["negative"], conds["empty_negative_prompt"],
                               self.cfg, self.neg_scale)


class PerpNegDenoiser:
    """denoised for PerpNegGuider: the three lists in one `calc_cond_batch`, then pre-CFG hooks, the Perp-Neg
    combine and post-CFG hooks (ComfyUI runs both kinds of hook here since its sampling_function is skipped)."""

    predict_guided = None  # not the plain CFG formula: samplers call the denoiser whole

    def __init__(self, model, positive: list[Cond], negative: list[Cond], empty: list[Cond], cfg: float,
                 neg_scale: float) -> None:
        self.model, self.model_sampling = model, model.model_sampling
        self.positive, self.negative, self.empty = positive, negative, empty
        self.cfg, self.neg_scale = cfg, neg_scale

    def _cond_lists(self, options: dict[str, Any]) -> list[list[Cond] | None]:
        negative, empty = self.negative, self.empty
        if not options.get(DISABLE_CFG1_OPTIMIZATION, False) and math.isclose(self.neg_scale, 0.0):
            negative = None  # its term is multiplied by 0
            if math.isclose(self.cfg, 1.0):
                empty = None  # and the result is then the positive prediction alone
        return [self.positive, negative, empty]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict[str, Any] | None = None,
                 **_: Any) -> torch.Tensor:
        options = merged_model_options(self.model.model_options, model_options)
        conds = self._cond_lists(options)
        out = calc_cond_batch(self.model, conds, x, sigma, options)
        for hook in options.get(PRE_CFG_FUNCTIONS, []):
            out = hook({"conds": conds, "conds_out": out, "cond_scale": self.cfg, "timestep": sigma, "input": x,
                        "sigma": sigma, "model": self.model, "model_options": options})
        pos, neg, empty = out
        denoised = perp_neg(pos, neg, empty, self.neg_scale, self.cfg)
        for hook in options.get(POST_CFG_FUNCTIONS, []):
            denoised = hook({"denoised": denoised, "cond": self.positive, "uncond": conds[1], "cond_scale": self.cfg,
                             "model": self.model, "uncond_denoised": neg, "cond_denoised": pos, "input": x,
                             "sigma": sigma, "model_options": options, "input_cond": self.positive,
                             "input_uncond": conds[1]})
        return denoised
