"""SPAN (Wan et al. 2024, "Swift Parameter-free Attention Network for Efficient Super-Resolution", arXiv:2311.12770).

Six SPAB blocks of re-parameterisable convs with a parameter-free attention (sigmoid(out) − 0.5), a 1×1 fusion of
four intermediate features, and a pixel-shuffle tail. Each `Conv3XC` is trained as 1×1 → 3×3 → 1×1 convs plus a 1×1
skip and run as one fused 3×3 conv (`eval_conv`). Like spandrel (ComfyUI's loader) the fused kernel is recomputed from
the trained branches when the file has them; files holding only `eval_conv` (deployed) use it as is.
With `norm` (no `no_norm` buffer in the file) the input is mean-shifted and multiplied by 255; the output is not
scaled back (the network learned its own output range).

Canonical names are the file's own: `conv_1.{sk,conv.0,conv.1,conv.2,eval_conv}`, `block_N.c{1,2,3}_r.*`,
`conv_2.*`, `conv_cat`, `upsampler.0`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError
from .state_dict import StateDict

RGB_MEAN = (0.4488, 0.4371, 0.4040)
IMG_RANGE = 255.0
GAIN = 2  # channel expansion inside every Conv3XC
BLOCKS = 6


@dataclass(frozen=True)
class SPANConfig:
    in_nc: int
    out_nc: int
    num_feat: int
    scale: int
    norm: bool = True
    deployed: bool = False  # only the fused `eval_conv` weights are present

    @property
    def image_channels(self) -> int:
        return self.in_nc


class Conv3XC(nn.Module):
    """A 3×3 conv (zero padding 1) whose kernel is the fusion of 1×1 → 3×3 → 1×1 and a 1×1 skip."""

    def __init__(self, c_in: int, c_out: int, deployed: bool):
        super().__init__()
        self.deployed = deployed
        if deployed:
            self.eval_conv = nn.Conv2d(c_in, c_out, 3, padding=1)
            return
        self.sk = nn.Conv2d(c_in, c_out, 1)
        self.conv = nn.Sequential(nn.Conv2d(c_in, c_in * GAIN, 1), nn.Conv2d(c_in * GAIN, c_out * GAIN, 3),
                                  nn.Conv2d(c_out * GAIN, c_out, 1))

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [out,in,3,3], bias [out]) of the single equivalent conv."""
        if self.deployed:
            return self.eval_conv.weight, self.eval_conv.bias
        c1, c2, c3 = self.conv
        w1, w3 = c1.weight[:, :, 0, 0], c3.weight[:, :, 0, 0]  # [g·in,in], [out,g·out]
        weight = torch.einsum("ob,bakl,ai->oikl", w3, c2.weight, w1) + F.pad(self.sk.weight, (1, 1, 1, 1))
        mid_bias = c2.weight.sum((2, 3)) @ c1.bias + c2.bias  # conv.0's bias reaches every tap of conv.1
        return weight, w3 @ mid_bias + c3.bias + self.sk.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.fused()
        return F.conv2d(x, weight, bias, padding=1)


class SPAB(nn.Module):
    """Three Conv3XC (SiLU between); out = (c3 + x)·(sigmoid(c3) − 0.5); also returns c1's pre-activation output."""

    def __init__(self, nf: int, deployed: bool):
        super().__init__()
        self.c1_r, self.c2_r, self.c3_r = (Conv3XC(nf, nf, deployed) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out1 = self.c1_r(x)
        out3 = self.c3_r(F.silu(self.c2_r(F.silu(out1))))
        return (out3 + x) * (torch.sigmoid(out3) - 0.5), out1


class SPAN(nn.Module):
    """forward([B,C,H,W] in 0..1) -> [B,C_out,H·scale,W·scale] (any H, W: every conv keeps the size)."""

    def __init__(self, config: SPANConfig):
        super().__init__()
        c, nf = config, config.num_feat
        self.config = config
        self.conv_1 = Conv3XC(c.in_nc, nf, c.deployed)
        for n in range(1, BLOCKS + 1):
            self.add_module(f"block_{n}", SPAB(nf, c.deployed))
        self.conv_cat = nn.Conv2d(nf * 4, nf, 1)
        self.conv_2 = Conv3XC(nf, nf, c.deployed)
        self.upsampler = nn.Sequential(nn.Conv2d(nf, c.out_nc * c.scale * c.scale, 3, padding=1),
                                       nn.PixelShuffle(c.scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.norm:
            mean = torch.tensor(RGB_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
            x = (x - mean) * IMG_RANGE
        first = self.conv_1(x)
        b1, _ = self.block_1(first)
        out, early = b1, b1
        for n in range(2, BLOCKS + 1):
            out, early = getattr(self, f"block_{n}")(out)  # `early` ends as block_6's c1 output
        feats = torch.cat([first, self.conv_2(out), b1, early], 1)  # [B,4·nf,H,W]
        return self.upsampler(self.conv_cat(feats))


def pixel_shuffle_scale(channels: int, in_nc: int) -> tuple[int, int]:
    """(scale, out channels) with scale²·out = channels, preferring out = in_nc, then 3, 4, 1 (as spandrel guesses)."""
    for c in (in_nc, 3, 4, 1):
        if channels % c == 0 and math.isqrt(channels // c) ** 2 == channels // c:
            return math.isqrt(channels // c), c
    raise ModelLoadError(f"pixel-shuffle conv with {channels} output channels fits no scale")


_CONVS = ("conv_1", "conv_2", *(f"block_{n}.c{j}_r" for n in range(1, BLOCKS + 1) for j in (1, 2, 3)))


def detect_span(sd: StateDict) -> SPANConfig:
    """Sizes from the shapes: in/features from conv_1, scale/out from the pixel-shuffle conv; norm from `no_norm`."""
    deployed = "conv_1.conv.0.weight" not in sd
    first = "conv_1.eval_conv.weight" if deployed else "conv_1.sk.weight"
    parts = ("eval_conv",) if deployed else ("sk", "conv.0", "conv.1", "conv.2")
    need = [first, "upsampler.0.weight", "conv_cat.weight"] + [f"{c}.{p}.weight" for c in _CONVS for p in parts]
    missing = [k for k in need if k not in sd]
    if missing:
        raise ModelLoadError(f"SPAN layout is missing {', '.join(missing[:5])}")
    nf, in_nc = sd.shape(first)[:2]
    scale, out_nc = pixel_shuffle_scale(sd.shape("upsampler.0.weight")[0], in_nc)
    norm = "no_norm" not in sd
    if norm and in_nc != 3:
        raise ModelLoadError(f"SPAN with input normalisation needs 3 input channels, not {in_nc}")
    return SPANConfig(in_nc, out_nc, nf, scale, norm, deployed)
