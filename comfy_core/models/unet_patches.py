"""Patches a MODEL carries in its model_options, in ComfyUI's format, and the UNet/guidance hooks of the model-patch
nodes (FreeU, Kohya deep shrink, perturbed-attention guidance, HyperTile, self-attention guidance).

model_options layout (what `UNetModel.forward` and `CFGDenoiser` read):
    model_options["transformer_options"]["patches"][name] = [fn, ...]     name: input_block_patch, output_block_patch, ...
    model_options["transformer_options"]["patches_replace"]["attn1"][(block, id[, index])] = fn
Every helper returns or fills NEW dicts/lists, so the MODEL a clone was made from keeps its own patches.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..upscale import common_upscale

BlockPatch = Callable[..., Any]


def add_block_patch(model, name: str, fn: BlockPatch) -> None:
    """Append `fn` to transformer_options["patches"][name] of `model` (a clone: its transformer_options dict is its
    own, the nested patch dict and lists are copied here)."""
    options = model.model_options.setdefault("transformer_options", {})
    patches = dict(options.get("patches", {}))
    patches[name] = [*patches.get(name, []), fn]
    options["patches"] = patches


def with_attn1_replace(model_options: Mapping[str, Any], fn: BlockPatch, block_name: str, number: int,
                       index: int | None = None) -> dict[str, Any]:
    """A copy of model_options whose self-attention in (block_name, number[, index]) is replaced by `fn`
    (ComfyUI's set_model_options_patch_replace); the caller's dicts are left untouched."""
    transformer = dict(model_options.get("transformer_options", {}))
    replace = dict(transformer.get("patches_replace", {}))
    attn1 = dict(replace.get("attn1", {}))
    attn1[(block_name, number) if index is None else (block_name, number, index)] = fn
    replace["attn1"] = attn1
    transformer["patches_replace"] = replace
    return {**model_options, "transformer_options": transformer}


# -- FreeU (Si et al. 2023) --------------------------------------------------------------------------------------------
def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Scale the lowest frequencies of x [B, C, H, W]: a (2·threshold)² square around the centre of the shifted 2-D
    spectrum is multiplied by `scale`; computed in float32, returned in x's dtype."""
    freq = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    height, width = freq.shape[-2:]
    row, col = height // 2, width // 2
    mask = torch.ones(freq.shape[-2:], device=x.device)
    mask[row - threshold:row + threshold, col - threshold:col + threshold] = scale
    freq = torch.fft.ifftshift(freq * mask, dim=(-2, -1))
    return torch.fft.ifftn(freq, dim=(-2, -1)).real.to(x.dtype)


def freeu_patch(model_channels: int, b1: float, b2: float, s1: float, s2: float, *, v2: bool) -> BlockPatch:
    """An output_block_patch: on decoder stages of width 4·mc (b1, s1) and 2·mc (b2, s2), scale the first half of the
    backbone channels by b (V2: by 1 + (b - 1)·normalised mean activation) and damp the skip's low frequencies by s."""
    scales = {model_channels * 4: (b1, s1), model_channels * 2: (b2, s2)}

    def output_block_patch(h: torch.Tensor, skip: torch.Tensor, opts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        scale = scales.get(int(h.shape[1]))
        if scale is None:
            return h, skip
        half = h.shape[1] // 2
        factor: torch.Tensor | float = scale[0]
        if v2:
            mean = h.mean(1, keepdim=True)  # [B, 1, H, W]
            flat = mean.flatten(1)  # [B, H*W]
            low = flat.min(dim=-1).values.view(-1, 1, 1, 1)
            high = flat.max(dim=-1).values.view(-1, 1, 1, 1)
            factor = (scale[0] - 1) * ((mean - low) / (high - low)) + 1
        h = torch.cat([h[:, :half] * factor, h[:, half:]], dim=1)
        return h, fourier_filter(skip, threshold=1, scale=scale[1])

    return output_block_patch


# -- Kohya deep shrink -------------------------------------------------------------------------------------------------
def downscale_patches(block_number: int, factor: float, sigma_start: float, sigma_end: float, down_method: str,
                      up_method: str) -> tuple[BlockPatch, BlockPatch]:
    """(input patch, output_block_patch): shrink the features after input block `block_number` by `factor` while
    sigma_end <= sigma <= sigma_start, and resize the decoder features back to each skip's size when they differ."""

    def input_block_patch(h: torch.Tensor, opts: Mapping[str, Any]) -> torch.Tensor:
        sigmas = opts.get("sigmas")
        if opts["block"][1] != block_number or sigmas is None:
            return h
        sigma = float(sigmas[0])
        if sigma_end <= sigma <= sigma_start:
            h = common_upscale(h, round(h.shape[-1] / factor), round(h.shape[-2] / factor), down_method, "disabled")
        return h

    def output_block_patch(h: torch.Tensor, skip: torch.Tensor, opts: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if h.shape[2] != skip.shape[2]:
            h = common_upscale(h, skip.shape[-1], skip.shape[-2], up_method, "disabled")
        return h, skip

    return input_block_patch, output_block_patch


# -- Perturbed-attention guidance (Ahn et al. 2024) ------------------------------------------------------------------
def identity_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, opts: Any) -> torch.Tensor:
    """Self-attention with an identity attention map: every token keeps its own value."""
    return v


def pag_post_cfg(scale: float) -> BlockPatch:
    """A post-CFG hook adding scale·(cond − cond with identity self-attention in the middle block)."""
    from ..sampling.guidance import calc_cond_batch  # lazy: sampling imports models

    def post_cfg_function(args: dict[str, Any]) -> torch.Tensor:
        denoised = args["denoised"]
        if scale == 0:
            return denoised
        options = with_attn1_replace(args["model_options"], identity_attention, "middle", 0)
        (perturbed,) = calc_cond_batch(args["model"], [args["cond"]], args["input"], args["sigma"], options)
        return denoised + (args["cond_denoised"] - perturbed) * scale

    return post_cfg_function


# -- HyperTile (tfernd/HyperTile) ----------------------------------------------------------------------------------------
def random_divisor(value: int, min_value: int, max_options: int = 1) -> int:
    """A tile count n for a side of `value` tokens: value // d for one of the `max_options` smallest divisors
    d >= min_value of value, picked with torch's global RNG (as ComfyUI; its randint never picks the last option)."""
    min_value = min(min_value, value)
    counts = [value // d for d in range(min_value, value + 1) if value % d == 0][:max_options]
    index = int(torch.randint(low=0, high=len(counts) - 1, size=(1,))) if len(counts) > 1 else 0
    return counts[index]


class HyperTilePatches:
    """attn1_patch + attn1_output_patch that run self-attention inside tiles of about `tile_size`/8 latent pixels on
    the levels whose token count is (H/2^i)·(W/2^i), i <= max_depth, then put the tokens back in place."""

    def __init__(self, tile_size: int, swap_size: int, max_depth: int, scale_depth: bool):
        self.latent_tile = max(32, tile_size) // 8
        self.swap_size, self.max_depth, self.scale_depth = swap_size, max_depth, scale_depth
        self.pending: tuple[int, int, int, int] | None = None  # (nh, nw, h, w) of the call in flight

    def tile(self, n: torch.Tensor, context: torch.Tensor, value: torch.Tensor, extra: Mapping[str, Any]):
        shape = extra["original_shape"]  # [B, C, H, W] of the UNet input
        levels = [(shape[-2] / 2**i) * (shape[-1] / 2**i) for i in range(self.max_depth + 1)]
        tokens = n.shape[-2]
        if tokens not in levels:
            return n, context, value
        aspect = shape[-1] / shape[-2]
        h, w = round(math.sqrt(tokens * aspect)), round(math.sqrt(tokens / aspect))
        factor = 2 ** levels.index(tokens) if self.scale_depth else 1
        nh = random_divisor(h, self.latent_tile * factor, self.swap_size)
        nw = random_divisor(w, self.latent_tile * factor, self.swap_size)
        if nh * nw > 1:
            b, c = n.shape[0], n.shape[-1]
            # [B, nh*h'*nw*w', C] -> [B*nh*nw, h'*w', C]: every tile becomes its own batch row
            n = n.reshape(b, nh, h // nh, nw, w // nw, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, -1, c)
            self.pending = (nh, nw, h, w)
        return n, n, n

    def untile(self, out: torch.Tensor, extra: Mapping[str, Any]) -> torch.Tensor:
        if self.pending is None:
            return out
        nh, nw, h, w = self.pending
        self.pending = None
        c = out.shape[-1]
        # [B*nh*nw, h'*w', C] -> [B, nh*h'*nw*w', C]
        out = out.reshape(-1, nh, nw, h // nh, w // nw, c).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(out.shape[0], -1, c)


# -- Self-attention guidance (Hong et al. 2023) --------------------------------------------------------------------------
SAG_KERNEL_SIZE = 9
SAG_THRESHOLD = 1.0


def sag_gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """9x9 Gaussian blur in pixel units (pdf over -4..4, normalised), reflect border, per channel of [B, C, H, W]."""
    from ..image_filters import (
        _reflect_conv,  # the depthwise reflect-padded correlation of the image filters
    )

    half = (SAG_KERNEL_SIZE - 1) * 0.5
    pdf = torch.exp(-0.5 * (torch.linspace(-half, half, SAG_KERNEL_SIZE) / sigma) ** 2)
    kernel = pdf / pdf.sum()
    return _reflect_conv(x, torch.outer(kernel, kernel), SAG_KERNEL_SIZE // 2)


def sag_blur_map(x0: torch.Tensor, attn: torch.Tensor, sigma: float, threshold: float = SAG_THRESHOLD) -> torch.Tensor:
    """Blur x0 [B, C, H, W] where the recorded self-attention [B*heads, S, S] puts more than `threshold` total
    attention (averaged over heads, summed over queries) on a key position; keep x0 elsewhere."""
    tokens = attn.shape[-1]
    b, _, height, width = x0.shape
    mask = attn.reshape(b, -1, attn.shape[-2], tokens).mean(1).sum(1) > threshold  # [B, S]
    rows = _token_rows(tokens, height / width)
    mask = mask.reshape(b, rows, tokens // rows).unsqueeze(1).to(attn.dtype)  # [B, 1, rows, cols]
    mask = torch.nn.functional.interpolate(mask, (height, width))  # nearest
    return sag_gaussian_blur(x0, sigma) * mask + x0 * (1 - mask)


def _token_rows(tokens: int, aspect: float) -> int:
    """Rows of the token grid: the divisor of `tokens` nearest sqrt(tokens·H/W), searching outwards (as ComfyUI)."""
    guess = round(math.sqrt(aspect * tokens))
    for i in range(math.floor(math.sqrt(tokens) / 2)):
        for rows in (guess + i, max(1, guess - i)):
            if tokens % rows == 0:
                return rows
    raise ValueError(f"cannot lay {tokens} attention tokens out on a grid near aspect {aspect:g}")


def attention_with_probs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention on [B, S, H*D] that also returns the float32 probabilities [B*H, S, T] (row b*H + h)."""
    b, s, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2).reshape(b * heads, -1, d) for t in (q, k, v))  # [B*H, S, D]
    probs = ((q.float() @ k.float().transpose(1, 2)) * d**-0.5).softmax(dim=-1)
    out = (probs.to(v.dtype) @ v).reshape(b, heads, s, d).transpose(1, 2).reshape(b, s, inner)
    return out, probs


class SelfAttentionGuidancePatches:
    """The middle block's first self-attention records its probabilities on the unconditional rows; after CFG the
    uncond x0 is blurred where that attention concentrates, re-predicted, and scale·(blurred − re-predicted) added."""

    def __init__(self, scale: float, blur_sigma: float):
        self.scale, self.blur_sigma = scale, blur_sigma
        self.scores: torch.Tensor | None = None  # [B*heads, S, S] of the last uncond pass

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: Mapping[str, Any]) -> torch.Tensor:
        heads, which = extra["n_heads"], list(extra.get("cond_or_uncond", ()))
        if 1 not in which:  # NEGATIVE = 1: no unconditional rows in this call
            b, s, inner = q.shape
            q, k, v = (t.reshape(b, -1, heads, inner // heads).transpose(1, 2) for t in (q, k, v))  # [B, H, S, D]
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
            return out.transpose(1, 2).reshape(b, s, inner)
        out, probs = attention_with_probs(q, k, v, heads)
        rows = heads * (q.shape[0] // len(which))  # rows of one chunk: [chunk0 rows, chunk1 rows, ...]
        start = rows * which.index(1)
        self.scores = probs[start:start + rows]
        return out

    def post_cfg(self, args: dict[str, Any]) -> torch.Tensor:
        from ..sampling.guidance import calc_cond_batch  # lazy: sampling imports models

        denoised = args["denoised"]
        if min(denoised.shape[2:]) <= SAG_KERNEL_SIZE // 2 or self.scores is None:  # too small to pad, or no record
            return denoised
        uncond_x0, x = args["uncond_denoised"], args["input"]
        degraded = sag_blur_map(uncond_x0, self.scores, self.blur_sigma)
        (repredicted,) = calc_cond_batch(args["model"], [args["uncond"]], degraded + x - uncond_x0, args["sigma"],
                                         args["model_options"])
        return denoised + (degraded - repredicted) * self.scale
