"""AutoencoderKL (Rombach et al. 2022) in the LDM checkpoint layout, and the VAE object nodes use.

Parameter names equal the checkpoint keys minus `first_stage_model.`. The VAE maps images in 0..1 [B,H,W,3] to
*unscaled* latents [B,4,H/8,W/8] and back; the per-family latent scale (0.18215 SD1/SD2, 0.13025 SDXL) is applied by
the diffusion model's latent format, exactly as in ComfyUI. Encoding returns the posterior mean (no sampling).
"""
from __future__ import annotations

import itertools
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VAEConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2  # encoder; the decoder has one more per level
    z_channels: int = 4
    embed_dim: int = 4
    in_channels: int = 3
    out_ch: int = 3
    double_z: bool = True

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, ch, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the h*w positions, 1x1-conv projections."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.q, self.k, self.v = nn.Conv2d(ch, ch, 1), nn.Conv2d(ch, ch, 1), nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from comfy_core.kernels.attention import attention  # lazy: optional kernel deps

        b, c, h, w = x.shape
        hn = self.norm(x)
        q, k, v = (t.reshape(b, 1, c, h * w).transpose(2, 3) for t in (self.q(hn), self.k(hn), self.v(hn)))  # [B,1,hw,C]
        out = attention(q.contiguous(), k.contiguous(), v.contiguous())  # [B, 1, hw, C]
        out = out.transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Pad right/bottom by one, then a stride-2 3x3 conv (LDM's asymmetric padding)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(ch, ch), AttnBlock(ch), ResnetBlock(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """down.N / up.N: res blocks (`block`), an empty `attn` list (SD VAEs have none), optional resampler."""

    def __init__(self, blocks: list[nn.Module], resample: nn.Module | None, name: str):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList()
        if resample is not None:
            self.add_module(name, resample)
        self.resample_name = name if resample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.block:
            x = blk(x)
        return getattr(self, self.resample_name)(x) if self.resample_name else x


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        in_mult = (1,) + tuple(cfg.ch_mult)
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            block_in, block_out = cfg.ch * in_mult[i], cfg.ch * mult
            blocks = [ResnetBlock(block_in if j == 0 else block_out, block_out) for j in range(cfg.num_res_blocks)]
            last = i == len(cfg.ch_mult) - 1
            self.down.append(_Level(blocks, None if last else Downsample(block_out), "downsample"))
        ch = cfg.ch * cfg.ch_mult[-1]
        self.mid = _Mid(ch)
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # [B, ch, H, W]
        for level in self.down:
            h = level(h)  # [B, ch*mult, H/2^i, W/2^i]
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # [B, 2z, H/8, W/8]


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        ch = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, ch, 3, padding=1)
        self.mid = _Mid(ch)
        levels: list[nn.Module] = []
        for i in reversed(range(len(cfg.ch_mult))):
            out = cfg.ch * cfg.ch_mult[i]
            blocks = [ResnetBlock(ch if j == 0 else out, out) for j in range(cfg.num_res_blocks + 1)]
            ch = out
            levels.insert(0, _Level(blocks, Upsample(out) if i != 0 else None, "upsample"))
        self.up = nn.ModuleList(levels)  # up.0 is the highest resolution, run last
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))  # [B, 3, 8h, 8w] in about -1..1


class AutoencoderKL(nn.Module):
    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        zc = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        self.quant_conv = nn.Conv2d(zc, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,H,W] in -1..1 -> posterior mean [B, embed_dim, H/8, W/8]."""
        moments = self.quant_conv(self.encoder(x))
        mean, _logvar = moments.chunk(2, dim=1)
        return mean

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))


# ----------------------------------------------------------------------------------------------------------------
# Tiling (ComfyUI's tiled_scale: overlapping tiles, linear feathering at tile borders, average by weight)
# ----------------------------------------------------------------------------------------------------------------
def _feather_mask(shape: torch.Size, feather: int, device: torch.device) -> torch.Tensor:
    """Weights 1/f, 2/f, ... rising over `feather` pixels from every border of a [1,C,h,w] tile."""
    mask = torch.ones(shape, device=device)
    for d in (2, 3):
        if feather >= mask.shape[d]:
            continue
        for t in range(feather):
            a = (t + 1) / feather
            mask.narrow(d, t, 1).mul_(a)
            mask.narrow(d, mask.shape[d] - 1 - t, 1).mul_(a)
    return mask


def tiled_apply(
    samples: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    tile: tuple[int, int],
    overlap: int,
    scale: float,
    out_channels: int,
    on_tile: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Run `fn` on overlapping (tile_h, tile_w) windows of samples [B,C,H,W] and blend: out size round(H*scale).

    Tile origins step by tile-overlap; each tile's output is weighted by a feathered mask (overlap*scale pixels) and
    the sum divided by the summed weights. A sample that fits in one tile is processed whole.
    """
    H, W = samples.shape[2:]
    out_hw = (round(H * scale), round(W * scale))
    output = torch.empty((samples.shape[0], out_channels) + out_hw)
    for b in range(samples.shape[0]):
        s = samples[b:b + 1]
        if H <= tile[0] and W <= tile[1]:
            output[b:b + 1] = fn(s).float().cpu()
            if on_tile:
                on_tile()
            continue
        acc = torch.zeros((1, out_channels) + out_hw)
        weight = torch.zeros((1, out_channels) + out_hw)
        starts = [range(0, n - overlap, t - overlap) if n > t else [0] for n, t in zip((H, W), tile)]
        for y0, x0 in itertools.product(*starts):
            y0, x0 = max(0, min(H - overlap, y0)), max(0, min(W - overlap, x0))
            part = s[:, :, y0:y0 + min(tile[0], H - y0), x0:x0 + min(tile[1], W - x0)]
            ps = fn(part).float().cpu()
            mask = _feather_mask(ps.shape, round(overlap * scale), ps.device)
            oy, ox = round(y0 * scale), round(x0 * scale)
            acc[:, :, oy:oy + ps.shape[2], ox:ox + ps.shape[3]] += ps * mask
            weight[:, :, oy:oy + ps.shape[2], ox:ox + ps.shape[3]] += mask
            if on_tile:
                on_tile()
        output[b:b + 1] = acc / weight
    return output


def tile_count(h: int, w: int, tile: tuple[int, int], overlap: int) -> int:
    if h <= tile[0] and w <= tile[1]:
        return 1
    return math.prod(len(range(0, n - overlap, t - overlap)) if n > t else 1 for n, t in zip((h, w), tile))


class VAE:
    """The VAE object a VAE socket carries: an AutoencoderKL plus device/dtype and ComfyUI's pixel conventions."""

    def __init__(self, model: AutoencoderKL, *, device: torch.device, dtype: torch.dtype, source: str = ""):
        self.model = model
        self.config = model.config
        self.device, self.dtype, self.source = torch.device(device), dtype, source
        self.downscale_ratio = model.config.downscale
        self.latent_channels = model.config.embed_dim
        self._lock = threading.Lock()  # one forward at a time on a shared (cached) module

    def __repr__(self) -> str:
        return f"VAE({self.source or 'AutoencoderKL'}, {self.dtype}, {self.device})"

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def crop_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Center-crop [B,H,W,C] to multiples of the downscale ratio (as ComfyUI's vae_encode_crop_pixels)."""
        r = self.downscale_ratio
        h, w = (pixels.shape[1] // r) * r, (pixels.shape[2] // r) * r
        if (h, w) != tuple(pixels.shape[1:3]):
            oy, ox = (pixels.shape[1] % r) // 2, (pixels.shape[2] % r) // 2
            pixels = pixels[:, oy:oy + h, ox:ox + w, :]
        return pixels

    def _decode_fn(self, z: torch.Tensor) -> torch.Tensor:
        with self._lock, torch.no_grad():
            return self.model.decode(z.to(self.device, self.dtype)).float()

    def _encode_fn(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,H,W] in 0..1 -> latent."""
        with self._lock, torch.no_grad():
            return self.model.encode((x * 2.0 - 1.0).to(self.device, self.dtype)).float()

    def decode(self, latent: torch.Tensor, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """latent [B,4,h,w] -> image [B,8h,8w,3] in 0..1 (float32, CPU), one sample at a time."""
        if latent.ndim != 4 or latent.shape[1] != self.latent_channels:
            raise ValueError(f"VAE decode wants a latent [B,{self.latent_channels},h,w], got {tuple(latent.shape)}")
        outs = []
        for i in range(latent.shape[0]):
            outs.append(self._decode_fn(latent[i:i + 1]).cpu())
            if progress:
                progress(i + 1, latent.shape[0])
        img = torch.cat(outs)
        return ((img + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1)

    def encode(self, pixels: torch.Tensor, progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """image [B,H,W,C>=3] in 0..1 -> latent [B,4,H/8,W/8] (float32, CPU); pixels are center-cropped to /8."""
        pixels = self.crop_pixels(pixels[..., :3]).movedim(-1, 1)  # [B,3,H,W]
        outs = []
        for i in range(pixels.shape[0]):
            outs.append(self._encode_fn(pixels[i:i + 1]).cpu())
            if progress:
                progress(i + 1, pixels.shape[0])
        return torch.cat(outs)

    def decode_tiled(self, latent: torch.Tensor, tile: int = 64, overlap: int = 8,
                     progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Tiled decode (tile/overlap in latent pixels): the average of three tilings (tile/2 x 2tile, 2tile x tile/2,
        tile x tile, as (height, width)) hides seams, as ComfyUI does. -> [B,H,W,3] in 0..1."""
        shapes = [(tile * 2, tile // 2), (tile // 2, tile * 2), (tile, tile)]
        return self._tiled(latent, self._decode_fn, shapes, overlap, self.downscale_ratio, 3, progress)

    def encode_tiled(self, pixels: torch.Tensor, tile: int = 512, overlap: int = 64,
                     progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Tiled encode (tile/overlap in image pixels), average of three tilings. -> latent [B,4,H/8,W/8]."""
        x = self.crop_pixels(pixels[..., :3]).movedim(-1, 1)
        shapes = [(tile, tile), (tile // 2, tile * 2), (tile * 2, tile // 2)]
        return self._tiled(x, self._encode_fn, shapes, overlap, 1.0 / self.downscale_ratio, self.latent_channels,
                           progress)

    def _tiled(self, x, fn, shapes, overlap, scale, out_ch, progress) -> torch.Tensor:
        total = x.shape[0] * sum(tile_count(x.shape[2], x.shape[3], t, overlap) for t in shapes)
        done = [0]

        def tick() -> None:
            done[0] += 1
            if progress:
                progress(done[0], total)

        result = sum(tiled_apply(x, fn, t, overlap, scale, out_ch, tick) for t in shapes) / 3.0
        if scale > 1:
            return ((result + 1.0) / 2.0).clamp(0.0, 1.0).movedim(1, -1)
        return result


class _Identity(nn.Module):
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z


class PixelSpaceVAE(VAE):
    """VAELoader's "pixel_space": latents are the pixels themselves (3 channels, scale 1), mapped to -1..1."""

    def __init__(self) -> None:
        self.model = _Identity()
        self.config = VAEConfig(ch_mult=(1,), z_channels=3, embed_dim=3)
        self.device, self.dtype, self.source = torch.device("cpu"), torch.float32, "pixel_space"
        self.downscale_ratio = 1
        self.latent_channels = 3
        self._lock = threading.Lock()

    def memory_bytes(self) -> int:
        return 0
