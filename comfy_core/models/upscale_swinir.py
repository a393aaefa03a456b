"""SwinIR (Liang et al. 2021, "SwinIR: Image Restoration Using Swin Transformer", arXiv:2108.10257).

conv_first → residual Swin transformer groups (RSTB: shifted-window attention blocks, a conv, a skip) → LayerNorm →
conv_after_body + skip → reconstruction: "pixelshuffle" (classical SR: conv+LeakyReLU, ×2 conv/pixel-shuffle steps
or one ×3, conv_last), "pixelshuffledirect" (one conv + pixel-shuffle), "nearest+conv" (real-world SR: nearest ×2
steps with convs, conv_hr, conv_last) or "" (restoration at ×1: the input plus conv_last). Images are reflect-padded
to a multiple of the window and cropped back; the input is mean-shifted (RGB mean for 3 channels) and scaled by
img_range (255 for the window-7 JPEG models, else 1, as spandrel decides), the output mapped back.

Canonical names are the file's own (`layers.i.residual_group.blocks.j.attn.qkv`, ...); the stored
`relative_position_index` and `attn_mask` buffers are recomputed, not read.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError
from .esrgan import _pad_to_multiple
from .state_dict import StateDict
from .upscale_span import RGB_MEAN

MASKED = -100.0  # logit added between tokens of different shifted regions


@dataclass(frozen=True)
class SwinIRConfig:
    in_nc: int
    out_nc: int
    embed_dim: int
    depths: tuple[int, ...]
    heads: tuple[int, ...]
    window: int
    mlp_hidden: int
    upsampler: str  # "pixelshuffle" | "pixelshuffledirect" | "nearest+conv" | ""
    scale: int
    num_feat: int = 64
    resi: str = "1conv"  # "1conv" | "3conv"
    img_range: float = 1.0

    @property
    def image_channels(self) -> int:
        return self.in_nc


def relative_position_index(ws: int) -> torch.Tensor:
    """[ws²,ws²] index into the (2ws−1)² bias table for every (query, key) pair of a window."""
    ys, xs = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # [2,N]
    rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # [2,N,N], each in 0..2ws−2
    return rel[0] * (2 * ws - 1) + rel[1]


def windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """[B,H,W,C] -> [B·nW, ws·ws, C], windows in row-major order."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def unwindows(x: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `windows`: [B·nW, ws·ws, C] -> [B,H,W,C]."""
    c = x.shape[-1]
    x = x.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def shift_mask(h: int, w: int, ws: int, shift: int, device: torch.device) -> torch.Tensor:
    """[nW, N, N]: 0 between tokens of the same region of the rolled image, MASKED across regions."""
    region = torch.zeros(1, h, w, 1, device=device)
    bounds = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    for i, hs in enumerate(bounds):
        for j, wsl in enumerate(bounds):
            region[:, hs, wsl, :] = i * 3 + j
    ids = windows(region, ws)[..., 0]  # [nW, N]
    return torch.where(ids[:, None, :] != ids[:, :, None], MASKED, 0.0)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, ws: int):
        super().__init__()
        self.heads, self.ws = heads, ws
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, heads))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c = x.shape
        qkv = self.qkv(x).view(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)  # [3,B·nW,h,N,d]
        index = relative_position_index(self.ws).to(x.device)
        bias = self.relative_position_bias_table[index].permute(2, 0, 1)  # [h,N,N]
        if mask is not None:  # windows are image-major: row b·nW + w gets mask[w] -> [B·nW,h,N,N]
            per_window = bias[None] + mask[:, None]  # [nW,h,N,N]
            bias = per_window[None].expand(bw // mask.shape[0], -1, -1, -1, -1).reshape(bw, self.heads, n, n)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=bias.to(x.dtype))
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm window attention (rolled by `shift` on odd blocks) and MLP, each with a residual; x is [B,H,W,C]."""

    def __init__(self, dim: int, heads: int, ws: int, hidden: int, shift: int):
        super().__init__()
        self.ws, self.shift = ws, shift
        self.norm1, self.attn = nn.LayerNorm(dim), WindowAttention(dim, heads, ws)
        self.norm2, self.mlp = nn.LayerNorm(dim), Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        y, s = self.norm1(x), self.shift
        mask = None
        if s:
            y = torch.roll(y, (-s, -s), dims=(1, 2))
            mask = shift_mask(h, w, self.ws, s, x.device)
        y = unwindows(self.attn(windows(y, self.ws), mask), self.ws, h, w)
        if s:
            y = torch.roll(y, (s, s), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class ResidualGroup(nn.Module):
    def __init__(self, c: SwinIRConfig, depth: int, heads: int):
        super().__init__()
        self.blocks = nn.ModuleList(SwinBlock(c.embed_dim, heads, c.window, c.mlp_hidden, (i % 2) * (c.window // 2))
                                    for i in range(depth))


def _body_conv(dim: int, resi: str) -> nn.Module:
    """"1conv": one 3×3 conv; "3conv": 3×3 to dim/4, 1×1, 3×3 back, LeakyReLU 0.2 between."""
    if resi == "1conv":
        return nn.Conv2d(dim, dim, 3, padding=1)
    q = dim // 4
    return nn.Sequential(nn.Conv2d(dim, q, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(q, q, 1),
                         nn.LeakyReLU(0.2), nn.Conv2d(q, dim, 3, padding=1))


class RSTB(nn.Module):
    def __init__(self, c: SwinIRConfig, depth: int, heads: int):
        super().__init__()
        self.residual_group = ResidualGroup(c, depth, heads)
        self.conv = _body_conv(c.embed_dim, c.resi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        for block in self.residual_group.blocks:
            y = block(y)
        return self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1) + x  # conv in [B,C,H,W]


def _pixelshuffle_steps(nf: int, scale: int) -> list[nn.Module]:
    if scale == 3:
        return [nn.Conv2d(nf, 9 * nf, 3, padding=1), nn.PixelShuffle(3)]
    steps: list[nn.Module] = []
    for _ in range(int(math.log2(scale))):
        steps += [nn.Conv2d(nf, 4 * nf, 3, padding=1), nn.PixelShuffle(2)]
    return steps


class SwinIR(nn.Module):
    """forward([B,C,H,W] in 0..1) -> [B,C_out,H·scale,W·scale]."""

    def __init__(self, config: SwinIRConfig):
        super().__init__()
        c, dim, nf = config, config.embed_dim, config.num_feat
        self.config = config
        self.conv_first = nn.Conv2d(c.in_nc, dim, 3, padding=1)
        self.patch_embed = nn.Module()
        self.patch_embed.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(RSTB(c, d, h) for d, h in zip(c.depths, c.heads, strict=True))
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = _body_conv(dim, c.resi)
        if c.upsampler in ("pixelshuffle", "nearest+conv"):
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, nf, 3, padding=1), nn.LeakyReLU(0.01))
        if c.upsampler == "pixelshuffle":
            self.upsample = nn.Sequential(*_pixelshuffle_steps(nf, c.scale))
            self.conv_last = nn.Conv2d(nf, c.out_nc, 3, padding=1)
        elif c.upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(dim, c.out_nc * c.scale ** 2, 3, padding=1),
                                          nn.PixelShuffle(c.scale))
        elif c.upsampler == "nearest+conv":
            self.conv_ups = int(math.log2(c.scale))
            for i in range(1, self.conv_ups + 1):
                self.add_module(f"conv_up{i}", nn.Conv2d(nf, nf, 3, padding=1))
            self.conv_hr = nn.Conv2d(nf, nf, 3, padding=1)
            self.conv_last = nn.Conv2d(nf, c.out_nc, 3, padding=1)
        else:
            self.conv_last = nn.Conv2d(dim, c.out_nc, 3, padding=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """conv_first output [B,C,H,W] -> deep features + that input (the long skip)."""
        y = self.patch_embed.norm(x.permute(0, 2, 3, 1))  # [B,C,H,W] -> [B,H,W,C]
        for layer in self.layers:
            y = layer(y)
        y = self.norm(y).permute(0, 3, 1, 2)  # back to [B,C,H,W]
        return self.conv_after_body(y) + x

    def reconstruct(self, x: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        kind = self.config.upsampler
        if kind == "pixelshuffle":
            return self.conv_last(self.upsample(self.conv_before_upsample(feat)))
        if kind == "pixelshuffledirect":
            return self.upsample(feat)
        if kind == "nearest+conv":
            y = self.conv_before_upsample(feat)
            for i in range(1, self.conv_ups + 1):
                y = F.leaky_relu(getattr(self, f"conv_up{i}")(F.interpolate(y, scale_factor=2, mode="nearest")), 0.2)
            return self.conv_last(F.leaky_relu(self.conv_hr(y), 0.2))
        return x + self.conv_last(feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.config
        h, w = x.shape[-2:]
        x = _pad_to_multiple(x, c.window)
        mean = torch.tensor(RGB_MEAN if c.in_nc == 3 else (0.0,), device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        x = (x - mean) * c.img_range
        out = self.reconstruct(x, self.features(self.conv_first(x)))
        return (out / c.img_range + mean)[..., : h * c.scale, : w * c.scale]


# -- detection ----------------------------------------------------------------------------------------------------------

def _count(sd: StateDict, pattern: str) -> int:
    """1 + the largest index N over keys matching `pattern` (one `(\\d+)` group); 0 when none match."""
    found = [int(m.group(1)) for k in sd if (m := re.fullmatch(pattern, k))]
    return max(found) + 1 if found else 0


def _upsampler(sd: StateDict, dim: int, out_nc: int) -> tuple[str, int, int]:
    """(kind, scale, num_feat) from which reconstruction convs exist and their shapes."""
    if "conv_before_upsample.0.weight" in sd:
        nf = sd.shape("conv_before_upsample.0.weight")[0]
        ups = len([k for k in sd if re.fullmatch(r"conv_up\d+\.weight", k)])  # nearest ×2 steps
        if ups > 0:
            return "nearest+conv", 2 ** ups, nf
        steps = len([k for k in sd if re.fullmatch(r"upsample\.\d+\.weight", k)])
        if steps == 1 and sd.shape("upsample.0.weight")[0] == 9 * nf:
            return "pixelshuffle", 3, nf
        return "pixelshuffle", 2 ** steps, nf
    if "upsample.0.weight" in sd:
        r2 = sd.shape("upsample.0.weight")[0] // out_nc
        return "pixelshuffledirect", math.isqrt(r2), dim
    return "", 1, dim


def detect_swinir(sd: StateDict) -> SwinIRConfig:
    if "conv_first.1.weight" in sd or "absolute_pos_embed" in sd:
        raise ModelLoadError("SwinIR variants with an unshuffled input or absolute position embedding are not "
                             "supported")
    if "conv_first.weight" not in sd:
        raise ModelLoadError("SwinIR layout is missing conv_first.weight")
    dim, in_nc = sd.shape("conv_first.weight")[:2]
    out_nc = sd.shape("conv_last.weight")[0] if "conv_last.weight" in sd else in_nc
    depths, heads = [], []
    for i in range(_count(sd, r"layers\.(\d+)\.residual_group\.blocks\.0\.norm1\.weight")):
        depths.append(_count(sd, rf"layers\.{i}\.residual_group\.blocks\.(\d+)\.norm1\.weight"))
        table = f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"
        if table not in sd:
            raise ModelLoadError(f"SwinIR layout is missing {table}")
        heads.append(sd.shape(table)[1])
    side = math.isqrt(sd.shape("layers.0.residual_group.blocks.0.attn.relative_position_bias_table")[0])
    window = (side + 1) // 2  # the table holds (2·ws − 1)² relative offsets
    if (2 * window - 1) ** 2 != sd.shape("layers.0.residual_group.blocks.0.attn.relative_position_bias_table")[0]:
        raise ModelLoadError("SwinIR relative_position_bias_table size is not (2·window − 1)²")
    kind, scale, nf = _upsampler(sd, dim, out_nc)
    return SwinIRConfig(
        in_nc, out_nc, dim, tuple(depths), tuple(heads), window,
        mlp_hidden=sd.shape("layers.0.residual_group.blocks.0.mlp.fc1.weight")[0], upsampler=kind, scale=scale,
        num_feat=nf, resi="1conv" if "conv_after_body.weight" in sd else "3conv",
        img_range=255.0 if window == 7 else 1.0)
