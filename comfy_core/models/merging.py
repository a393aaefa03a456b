"""Model merging as weight patches (ComfyUI's `add_patches(get_key_patches(...), strength_patch, strength_model)`).

Every merge is a `LoraPatch` of `WeightDiff` parts on a clone, so nothing is copied and the cached base weights stay
intact (see lora.py). For one weight W1 of the first model and W2 of the second (W2 with model 2's own patches):
    simple / blocks (ratio r):  W = r·W1 + (1 − r)·W2      (strength_model r, strength 1 − r)
    subtract (multiplier m):    W = m·W1 − m·W2
    add:                        W = W1 + W2
    attention multiply (f):     W = f·W                    (strength_model f, strength 0)
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from .clip_lora import clip_with_added_patches
from .clip_text import hf_parameter_map
from .diffusion import DiffusionModel
from .lora import LoraPatch, ModelWeight, WeightDiff

# (strength_patch, strength_model) for a parameter name
Strengths = Callable[[str], tuple[float, float]]
_CLIP_SKIPPED = (".position_ids", ".logit_scale")


def _merge_patches(target: torch.nn.Module, source: torch.nn.Module, source_patches: tuple, strengths: Strengths,
                   role: str, skip: tuple[str, ...] = ()) -> tuple[LoraPatch, ...]:
    """One patch per distinct (strength, strength_model) pair, covering every parameter both modules have."""
    mine = dict(target.named_parameters())
    groups: dict[tuple[float, float], dict[str, tuple]] = {}
    for name, _ in source.named_parameters():
        if name not in mine or name.endswith(skip):
            continue
        strength, strength_model = strengths(name)
        part = WeightDiff(ModelWeight(source, name, source_patches), float(strength_model))
        groups.setdefault((float(strength), float(strength_model)), {})[name] = ((part, None),)
    return tuple(LoraPatch(weights, strength, "merge", target=role) for (strength, _), weights in groups.items())


def merge_models(model1: DiffusionModel, model2: DiffusionModel, strengths: Strengths) -> DiffusionModel:
    """A clone of model1 whose UNet weights are merged with model2's (its patches included)."""
    out = model1.clone()
    for patch in _merge_patches(model1.unet, model2.unet, model2.patches, strengths, "unet"):
        out.add_patches(patch)
    return out


def merge_clips(clip1: Any, clip2: Any, strengths: Strengths) -> Any:
    """A clone of clip1 merged, encoder by encoder (same role), with clip2; position ids / logit scale are kept."""
    new: tuple[LoraPatch, ...] = ()
    theirs = clip2.modules()
    for role, module in clip1.modules().items():
        if role in theirs:
            own = tuple(p for p in getattr(clip2, "patches", ()) if p.target == role)
            new += _merge_patches(module, theirs[role], own, strengths, role, _CLIP_SKIPPED)
    return clip_with_added_patches(clip1, new)


def block_strengths(ratios: Iterable[tuple[str, float]]) -> Strengths:
    """ModelMergeBlocks' rule: the ratio of the longest listed prefix of the UNet key, else the first ratio."""
    table = list(ratios)
    default = table[0][1]

    def strengths(name: str) -> tuple[float, float]:
        ratio, best = default, 0
        for prefix, value in table:
            if name.startswith(prefix) and len(prefix) > best:
                ratio, best = value, len(prefix)
        return 1.0 - ratio, ratio

    return strengths


def _scale_patch(weights: Mapping[str, tuple], role: str, name: str) -> LoraPatch:
    return LoraPatch(dict(weights), 0.0, name, target=role)


def unet_attention_multiply(model: DiffusionModel, attn: str, q: float, k: float, v: float, out: float
                            ) -> DiffusionModel:
    """A clone whose `attn` ("attn1" self / "attn2" cross) q, k, v and output projections are scaled."""
    factors = {f"{attn}.to_q.": q, f"{attn}.to_k.": k, f"{attn}.to_v.": v, f"{attn}.to_out.0.": out}
    weights: dict[str, tuple] = {}
    for name, _ in model.unet.named_parameters():
        stem, _, kind = name.rpartition(".")
        for suffix, factor in factors.items():
            if kind in ("weight", "bias") and (stem + ".").endswith(suffix):
                weights[name] = ((WeightDiff(None, float(factor)), None),)
    clone = model.clone()
    return clone.add_patches(_scale_patch(weights, "unet", "attention_multiply")) if weights else clone


def clip_attention_multiply(clip: Any, q: float, k: float, v: float, out: float) -> Any:
    """A clone whose text encoders' self-attention q/k/v/out projections (weights and biases) are scaled; fused
    OpenCLIP in_proj tensors are scaled by row block."""
    factors = {"self_attn.q_proj": q, "self_attn.k_proj": k, "self_attn.v_proj": v, "self_attn.out_proj": out}
    new = []
    for role, module in clip.modules().items():
        weights: dict[str, tuple] = {}
        for hf_name, (name, rows) in hf_parameter_map(module).items():
            stem, _, kind = hf_name.rpartition(".")
            factor = factors.get(".".join(stem.split(".")[-2:]))  # e.g. "self_attn.q_proj"
            if factor is None or kind not in ("weight", "bias"):
                continue
            span = None if rows is None else (rows.start, rows.stop)
            weights[name] = weights.get(name, ()) + ((WeightDiff(None, float(factor)), span),)
        if weights:
            new.append(_scale_patch(weights, role, "attention_multiply"))
    return clip_with_added_patches(clip, tuple(new))
