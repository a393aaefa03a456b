"""Image super-resolution networks of the ESRGAN family, the architectures behind most `upscale_models` files.

- `RRDBNet`: Wang et al. 2018, "ESRGAN: Enhanced Super-Resolution Generative Adversarial Networks"
  (arXiv:1809.00219), also used by BSRGAN and Real-ESRGAN (arXiv:2107.10833). A trunk of residual-in-residual dense
  blocks (every residual scaled by 0.2, LeakyReLU 0.2), a long skip around the trunk, then ×2 stages of nearest
  upsampling + conv, and two final convs. Real-ESRGAN's ×2 / ×1 models pixel-unshuffle the input by 2 / 4 first
  (their first conv takes 12 / 48 channels) and keep the ×4 upsampling tail.
- `SRVGGNetCompact`: Real-ESRGAN's "compact" VGG-style net (realesr-animevideov3, realesr-general-x4v3): conv+PReLU
  body at low resolution, a pixel-shuffle at the end, plus the nearest-upsampled input as a residual.

The modules use one canonical key layout (see `upscale_layouts.py` for how the real file layouts map onto it):
`conv_first`, `body.N.rdbK.convJ`, `conv_body`, `ups.I`, `conv_hr`, `conv_last` (RRDBNet); `body.N` (compact).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

RESIDUAL_SCALE = 0.2  # ESRGAN's residual scaling inside and around every dense block
LRELU_SLOPE = 0.2


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LRELU_SLOPE)


@dataclass(frozen=True)
class RRDBConfig:
    in_nc: int  # channels of the first conv's input (after pixel-unshuffle: 4× / 16× the image channels)
    out_nc: int
    num_feat: int
    num_blocks: int
    growth: int  # channels each dense-block conv adds
    up_stages: int  # ×2 nearest-upsampling stages
    shuffle: int = 1  # pixel-unshuffle factor of the input (1, 2 or 4)

    @property
    def scale(self) -> int:
        return 2 ** self.up_stages // self.shuffle

    @property
    def image_channels(self) -> int:
        return self.in_nc // (self.shuffle * self.shuffle)


class DenseBlock(nn.Module):
    """Five 3×3 convs, each seeing the block input and every earlier output (channel concat); scaled residual."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        for j in range(1, 6):
            self.add_module(f"conv{j}", nn.Conv2d(nf + (j - 1) * gc, gc if j < 5 else nf, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(_lrelu(conv(torch.cat(feats, 1))))
        return self.conv5(torch.cat(feats, 1)) * RESIDUAL_SCALE + x


class RRDB(nn.Module):
    """Residual in residual dense block: three dense blocks and a scaled residual around them."""

    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = DenseBlock(nf, gc), DenseBlock(nf, gc), DenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * RESIDUAL_SCALE + x


def _pad_to_multiple(x: torch.Tensor, m: int) -> torch.Tensor:
    """Pad right/bottom so H and W divide by m (reflect where the image is large enough, else replicate)."""
    ph, pw = -x.shape[-2] % m, -x.shape[-1] % m
    if ph == 0 and pw == 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class RRDBNet(nn.Module):
    """forward([B,C,H,W] in 0..1) -> [B,C_out,H·scale,W·scale]."""

    def __init__(self, config: RRDBConfig):
        super().__init__()
        c, nf = config, config.num_feat
        self.config = config
        self.conv_first = nn.Conv2d(c.in_nc, nf, 3, padding=1)
        self.body = nn.ModuleList(RRDB(nf, c.growth) for _ in range(c.num_blocks))
        self.conv_body = nn.Conv2d(nf, nf, 3, padding=1)
        self.ups = nn.ModuleList(nn.Conv2d(nf, nf, 3, padding=1) for _ in range(c.up_stages))
        self.conv_hr = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv_last = nn.Conv2d(nf, c.out_nc, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        s = self.config.shuffle
        if s > 1:
            x = F.pixel_unshuffle(_pad_to_multiple(x, s), s)  # [B,C,H,W] -> [B,C·s²,H/s,W/s]
        feat = self.conv_first(x)
        trunk = feat
        for block in self.body:
            trunk = block(trunk)
        feat = feat + self.conv_body(trunk)
        for conv in self.ups:
            feat = _lrelu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")))
        out = self.conv_last(_lrelu(self.conv_hr(feat)))
        scale = self.config.scale
        return out[..., : h * scale, : w * scale] if s > 1 else out


@dataclass(frozen=True)
class CompactConfig:
    in_nc: int
    out_nc: int
    num_feat: int
    num_conv: int  # body convs between the first and the last conv
    scale: int

    @property
    def image_channels(self) -> int:
        return self.in_nc


class SRVGGNetCompact(nn.Module):
    """body = conv, PReLU, (conv, PReLU) × num_conv, conv to out·scale² channels; then pixel-shuffle + nearest skip."""

    def __init__(self, config: CompactConfig):
        super().__init__()
        c, nf = config, config.num_feat
        self.config = config
        layers: list[nn.Module] = [nn.Conv2d(c.in_nc, nf, 3, padding=1), nn.PReLU(nf)]
        for _ in range(c.num_conv):
            layers += [nn.Conv2d(nf, nf, 3, padding=1), nn.PReLU(nf)]
        layers.append(nn.Conv2d(nf, c.out_nc * c.scale * c.scale, 3, padding=1))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        out = F.pixel_shuffle(out, self.config.scale)  # [B,C·r²,H,W] -> [B,C,H·r,W·r]
        return out + F.interpolate(x, scale_factor=self.config.scale, mode="nearest")
