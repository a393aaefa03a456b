"""The LDM / SGM UNet of Stable Diffusion 1.x, 2.x and SDXL (base, refiner), in the original checkpoint layout.

Parameter names equal the checkpoint keys minus `model.diffusion_model.`, so a state dict loads as it is. Every
architecture switch real checkpoints use is a `UNetConfig` field; `detect.py` fills one from key names and shapes.

Shapes: x [B, Cin, h, w] latent, timesteps [B] (float, 0..999), context [B, T, context_dim], y [B, adm_in_channels].
Ho et al. 2020 / Rombach et al. 2022 (LDM) / Podell et al. 2023 (SDXL).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .conv import Conv2d

AttnReplace = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]], torch.Tensor]


class Attn1Hooks(NamedTuple):
    """What transformer_options change in one block's self-attention (ComfyUI's patch contract):
    `patches` fn(n, context, value, extra) -> (n, context, value) before the projections, `replace`
    fn(q, k, v [B, S, H*D], extra) -> [B, S, H*D] instead of the attention, `output_patches` fn(out, extra) -> out
    after the output projection. `extra` is the transformer_options plus "block_index" (and "transformer_index",
    the SpatialTransformer's number in the UNet). `cross_patches` ("attn2_patch") are fn(n, context, value, extra)
    -> (n, context, value) before the cross-attention's projections; `middle_patches` ("middle_patch", GLIGEN)
    fn(x, extra) -> x between the self- and the cross-attention."""

    patches: list[Callable]
    replace: AttnReplace | None
    output_patches: list[Callable]
    extra: dict[str, Any]
    cross_patches: list[Callable] | tuple = ()
    middle_patches: list[Callable] | tuple = ()


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: tuple[int, ...] = (2, 2, 2, 2)  # per level
    transformer_depth: tuple[int, ...] = (1, 1, 1, 1, 1, 1, 0, 0)  # per input res block
    transformer_depth_output: tuple[int, ...] = (1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0)  # per output res block
    transformer_depth_middle: int = 1  # -1: middle block has no transformer
    context_dim: int = 768
    num_heads: int = 8  # used when num_head_channels == -1 (SD1.x)
    num_head_channels: int = -1  # SD2.x / SDXL: 64
    use_linear_in_transformer: bool = False
    adm_in_channels: int | None = None  # SDXL base 2816, refiner 2560, SD2 unCLIP 1536/2048

    def heads_for(self, channels: int) -> tuple[int, int]:
        """(heads, head_dim) of a transformer with `channels` width."""
        if self.num_head_channels == -1:
            return self.num_heads, channels // self.num_heads
        head_dim = min(self.num_head_channels, channels)  # tiny test models may be narrower than one head
        return channels // head_dim, head_dim

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [B] -> [B, dim], cos half first (as LDM/ComfyUI; Vaswani et al. 2017 frequencies)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]  # [B, half]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, backend: str | None) -> torch.Tensor:
    """[B, S, H*D] q and [B, T, H*D] k/v -> [B, S, H*D] through the attention dispatcher."""
    from comfy_core.kernels.attention import (
        attention,  # lazy: keeps kernels' optional deps off the import path
    )

    b, s, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))  # [B, H, S|T, D]
    out = attention(q, k, v, backend=backend)  # [B, H, S, D]
    return out.transpose(1, 2).reshape(b, s, inner)


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
        context = x if context is None else context
        out = _attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads, backend)
        return self.to_out(out)

    def forward_hooked(self, x: torch.Tensor, hooks: Attn1Hooks, backend: str | None) -> torch.Tensor:
        """Self-attention with a block's patches applied (see `Attn1Hooks`)."""
        extra = {**hooks.extra, "n_heads": self.heads, "dim_head": self.to_q.out_features // self.heads}
        context = value = x
        for patch in hooks.patches:
            x, context, value = patch(x, context, value, extra)
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(value)
        out = self.to_out(_attention(q, k, v, self.heads, backend) if hooks.replace is None
                          else hooks.replace(q, k, v, extra))
        for patch in hooks.output_patches:
            out = patch(out, extra)
        return out

    def forward_cross_hooked(self, x: torch.Tensor, context: torch.Tensor, hooks: Attn1Hooks,
                             backend: str | None) -> torch.Tensor:
        """Cross-attention with the block's "attn2_patch" functions applied to (n, context, value) first."""
        extra = {**hooks.extra, "n_heads": self.heads, "dim_head": self.to_q.out_features // self.heads}
        value = context
        for patch in hooks.cross_patches:
            x, context, value = patch(x, context, value, extra)
        return self.to_out(_attention(self.to_q(x), self.to_k(context), self.to_v(value), self.heads, backend))


class GEGLU(nn.Module):
    """Shazeer 2020: proj to 2*inner, x * gelu(gate)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head)  # self-attention
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)  # cross-attention on the text
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, backend: str | None,
                hooks: Attn1Hooks | None = None) -> torch.Tensor:
        if hooks is None:
            x = self.attn1(self.norm1(x), backend=backend) + x
            x = self.attn2(self.norm2(x), context, backend=backend) + x
        else:
            x = self.attn1.forward_hooked(self.norm1(x), hooks, backend) + x
            for patch in hooks.middle_patches:
                x = patch(x, hooks.extra)
            x = self.attn2.forward_cross_hooked(self.norm2(x), context, hooks, backend) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """GroupNorm -> proj_in (1x1 conv, or Linear in SD2/SDXL) -> transformer blocks on h*w tokens -> proj_out + x."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int, use_linear: bool):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(32, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor, backend: str | None = None,
                opts: dict[str, Any] | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, h*w, C] (a view; proj_in makes it contiguous)
        # proj_in/proj_out run as Linear over pixels in both layouts (a 1x1 conv is exactly that). The result is made
        # contiguous again: channels-last activations would make every later oneDNN conv re-lay out its weight.
        tokens = F.linear(tokens, self.proj_in.weight.flatten(1), self.proj_in.bias)
        hooked = opts is not None and _has_attn1_hooks(opts)
        for index, block in enumerate(self.transformer_blocks):
            tokens = block(tokens, context, backend, _attn1_hooks(opts, index) if hooked else None)
        tokens = F.linear(tokens, self.proj_out.weight.flatten(1), self.proj_out.bias)  # [B, h*w, C]
        if opts is not None:  # the next SpatialTransformer's number (ComfyUI's transformer_index)
            opts["transformer_index"] = opts.get("transformer_index", 0) + 1
        return tokens.transpose(1, 2).reshape(b, c, h, w).contiguous() + x


class ResBlock(nn.Module):
    """GN-SiLU-conv, + time embedding, GN-SiLU-conv, + skip (1x1 conv when the width changes)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(32, out_channels), nn.SiLU(), nn.Dropout(0.0), Conv2d(out_channels, out_channels, 3, padding=1)
        )
        self.skip_connection = nn.Identity() if out_channels == channels else Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest 2x (or to the size of the matching skip tensor, for odd latent sizes), then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


class TimestepBlock(nn.Sequential):
    """A numbered block of the UNet (input_blocks.N / middle_block / output_blocks.N): runs each layer with the
    inputs it needs."""

    def forward(self, x, emb, context, backend=None, out_size=None, opts=None):  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context, backend, opts)
            elif isinstance(layer, Upsample):
                x = layer(x, out_size)
            else:
                x = layer(x)
        return x


@dataclass
class _Builder:
    """Running state while the UNet's block lists are laid out (mirrors how the checkpoint numbers blocks)."""

    cfg: UNetConfig
    depths_in: list[int] = field(default_factory=list)
    depths_out: list[int] = field(default_factory=list)

    def transformer(self, ch: int, depth: int) -> SpatialTransformer:
        heads, dim_head = self.cfg.heads_for(ch)
        return SpatialTransformer(ch, heads, dim_head, depth, self.cfg.context_dim, self.cfg.use_linear_in_transformer)


class UNetModel(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        mc = cfg.model_channels
        ted = mc * 4  # time embedding width
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        if cfg.adm_in_channels is not None:
            self.label_emb = nn.Sequential(nn.Sequential(nn.Linear(cfg.adm_in_channels, ted), nn.SiLU(), nn.Linear(ted, ted)))
        b = _Builder(cfg, list(cfg.transformer_depth), list(cfg.transformer_depth_output))
        skip_chans = self._build_input(b, ted)
        ch = mc * cfg.channel_mult[-1]
        middle: list[nn.Module] = [ResBlock(ch, ted, ch)]
        if cfg.transformer_depth_middle >= 0:
            middle += [b.transformer(ch, cfg.transformer_depth_middle), ResBlock(ch, ted, ch)]
        self.middle_block = TimestepBlock(*middle)
        ch = self._build_output(b, ted, ch, skip_chans)
        self.out = nn.Sequential(nn.GroupNorm(32, ch), nn.SiLU(), Conv2d(mc, cfg.out_channels, 3, padding=1))

    def _build_input(self, b: _Builder, ted: int) -> list[int]:
        cfg = b.cfg
        self.input_blocks = nn.ModuleList([TimestepBlock(Conv2d(cfg.in_channels, cfg.model_channels, 3, padding=1))])
        ch, chans = cfg.model_channels, [cfg.model_channels]
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks[level]):
                layers: list[nn.Module] = [ResBlock(ch, ted, mult * cfg.model_channels)]
                ch = mult * cfg.model_channels
                depth = b.depths_in.pop(0)
                if depth > 0:
                    layers.append(b.transformer(ch, depth))
                self.input_blocks.append(TimestepBlock(*layers))
                chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepBlock(Downsample(ch)))
                chans.append(ch)
        return chans

    def _build_output(self, b: _Builder, ted: int, ch: int, skip_chans: list[int]) -> int:
        cfg = b.cfg
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks[level] + 1):
                layers: list[nn.Module] = [ResBlock(ch + skip_chans.pop(), ted, cfg.model_channels * mult)]
                ch = cfg.model_channels * mult
                depth = b.depths_out.pop(0)
                if depth > 0:
                    layers.append(b.transformer(ch, depth))
                if level and i == cfg.num_res_blocks[level]:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepBlock(*layers))
        return ch

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        control: dict[str, list[torch.Tensor | None]] | None = None,
        transformer_options: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """x [B,Cin,h,w], timesteps [B], context [B,T,ctx], y [B,adm] -> [B,Cout,h,w].

        `control` = {"input": [...], "middle": [...], "output": [...]} residuals, consumed from the END of each list as
        ComfyUI's UNet does: "input" after every input block, "middle" after the middle block, "output" on every skip
        tensor as it is popped (so "output"[i] belongs to input block i). Missing/None entries are skipped.

        `transformer_options` may carry ComfyUI's patch points: "patches": {"input_block_patch",
        "input_block_patch_after_skip": [fn(h, opts) -> h], "output_block_patch": [fn(h, skip, opts) -> (h, skip)],
        "attn1_patch", "attn1_output_patch", "attn2_patch", "middle_patch" (see `Attn1Hooks`)} and "patches_replace":
        {"attn1": {(block, id[, index]): fn(q, k, v, opts) -> out}}; the opts they get hold "block" = ("input" |
        "middle" | "output", id), "original_shape" and "transformer_index". Without patches nothing extra runs.
        """
        opts = transformer_options or {}
        backend = opts.get("attention_backend")
        ctrl = {k: list(v) for k, v in (control or {}).items() if isinstance(v, (list, tuple))}
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(x.dtype))  # [B, 4*mc]
        if self.config.adm_in_channels is not None:
            if y is None or y.shape[0] != x.shape[0]:
                raise ValueError(f"this UNet needs y [B={x.shape[0]}, {self.config.adm_in_channels}] (ADM input)")
            emb = emb + self.label_emb(y.to(x.dtype))
        patches = opts.get("patches") or {}
        # per-block options only when something reads them (patches): the plain path stays as it was
        block_opts = {**opts, "original_shape": list(x.shape), "transformer_index": 0} \
            if patches or opts.get("patches_replace") else None
        skips: list[torch.Tensor] = []
        h = x
        for index, block in enumerate(self.input_blocks):
            if block_opts is not None:
                block_opts["block"] = ("input", index)
            h = _add_control(block(h, emb, context, backend, None, block_opts), ctrl, "input")
            h = _run_patches(patches.get("input_block_patch"), h, block_opts)
            skips.append(h)
            h = _run_patches(patches.get("input_block_patch_after_skip"), h, block_opts)
        if block_opts is not None:
            block_opts["block"] = ("middle", 0)
        h = _add_control(self.middle_block(h, emb, context, backend, None, block_opts), ctrl, "middle")
        for index, block in enumerate(self.output_blocks):
            if block_opts is not None:
                block_opts["block"] = ("output", index)
            skip = _add_control(skips.pop(), ctrl, "output")
            for patch in patches.get("output_block_patch", ()):
                h, skip = patch(h, skip, block_opts)
            h = torch.cat([h, skip], dim=1)
            out_size = tuple(skips[-1].shape[-2:]) if skips else None
            h = block(h, emb, context, backend, out_size, block_opts)
        return self.out(h.to(x.dtype))


def _run_patches(fns: list[Callable] | None, h: torch.Tensor, opts: dict[str, Any] | None) -> torch.Tensor:
    """ComfyUI's "input_block_patch" / "input_block_patch_after_skip" contract: h = fn(h, transformer_options)."""
    for fn in fns or ():
        h = fn(h, opts)
    return h


def _has_attn1_hooks(opts: dict[str, Any]) -> bool:
    patches = opts.get("patches", {})
    return bool(opts.get("patches_replace", {}).get("attn1") or patches.get("attn1_patch")
                or patches.get("attn1_output_patch") or patches.get("attn2_patch") or patches.get("middle_patch"))


def _attn1_hooks(opts: dict[str, Any], index: int) -> Attn1Hooks | None:
    """The self-attention hooks of transformer `index` in the current block. A "patches_replace"["attn1"] function
    is keyed (block name, block id, index) or, for every transformer of the block, (block name, block id)."""
    patches, block = opts.get("patches", {}), opts.get("block")
    replaces = opts.get("patches_replace", {}).get("attn1", {})
    replace = None
    if block is not None and replaces:
        replace = replaces.get((block[0], block[1], index)) or replaces.get(tuple(block))
    before, after = patches.get("attn1_patch", []), patches.get("attn1_output_patch", [])
    cross, middle = patches.get("attn2_patch", []), patches.get("middle_patch", [])
    if replace is None and not before and not after and not cross and not middle:
        return None
    return Attn1Hooks(before, replace, after, {**opts, "block_index": index}, cross, middle)


def _add_control(h: torch.Tensor, control: dict[str, list], name: str) -> torch.Tensor:
    """Pop the next residual of `name` (from the end) and add it; the caller's lists are never mutated."""
    residuals = control.get(name)
    if residuals:
        r = residuals.pop()
        if r is not None:
            if r.shape != h.shape:
                raise ValueError(f"control residual for {name!r} has shape {tuple(r.shape)}, UNet has {tuple(h.shape)}")
            h = h + r.to(h.dtype)
    return h
