"""Run an image-to-image function over overlapping tiles and blend them (ComfyUI's `comfy.utils.tiled_scale`).

Tiles start every (tile − overlap) pixels; the last one in a row is cut at the border, not shifted back. Each output
tile is weighted by a mask that ramps linearly over the upscaled overlap on all four edges ((t+1)/feather for the t-th
pixel from an edge), and the sum of weighted tiles is divided by the sum of masks. An image no larger than one tile
runs in one call, unblended.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

TileFn = Callable[[torch.Tensor], torch.Tensor]
ProgressFn = Callable[[], None]


def tiled_scale_steps(width: int, height: int, tile_x: int, tile_y: int, overlap: int) -> int:
    """Tiles per image (ComfyUI's `get_tiled_scale_steps`), for the progress total."""
    rows = 1 if height <= tile_y else math.ceil((height - overlap) / (tile_y - overlap))
    cols = 1 if width <= tile_x else math.ceil((width - overlap) / (tile_x - overlap))
    return rows * cols


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    return [min(p, size - overlap) for p in range(0, size - overlap, tile - overlap)]


def _feather_mask(shape: torch.Size, feather: int, device: torch.device) -> torch.Tensor:
    """[1,1,h,w] weights: (t+1)/feather at distance t from each edge (products where two ramps meet)."""
    h, w = shape[-2:]
    mask = torch.ones(1, 1, h, w, device=device)
    for dim, size in ((2, h), (3, w)):
        if feather >= size:
            continue
        ramp = torch.arange(1, feather + 1, device=device, dtype=torch.float32) / feather
        view = [1, 1, 1, 1]
        view[dim] = feather
        mask.narrow(dim, 0, feather).mul_(ramp.view(view))
        mask.narrow(dim, size - feather, feather).mul_(ramp.flip(0).view(view))
    return mask


def _blend_one(s: torch.Tensor, fn: TileFn, tile: tuple[int, int], overlap: int, scale: float, out_channels: int,
               output_device: torch.device, on_tile: ProgressFn | None) -> torch.Tensor:
    """One image [1,C,H,W] -> [1,out_channels,round(H·scale),round(W·scale)] from blended tiles."""
    h, w = s.shape[-2:]
    out = torch.zeros(1, out_channels, round(h * scale), round(w * scale), device=output_device)
    weight = torch.zeros(1, 1, out.shape[2], out.shape[3], device=output_device)
    feather = round(overlap * scale)
    for y in _starts(h, tile[0], overlap):
        for x in _starts(w, tile[1], overlap):
            piece = fn(s[:, :, y:y + tile[0], x:x + tile[1]]).to(output_device)
            mask = _feather_mask(piece.shape, feather, output_device)
            oy, ox = round(y * scale), round(x * scale)
            out[:, :, oy:oy + piece.shape[2], ox:ox + piece.shape[3]].add_(piece * mask)
            weight[:, :, oy:oy + piece.shape[2], ox:ox + piece.shape[3]].add_(mask)
            if on_tile is not None:
                on_tile()
    return out / weight


@torch.inference_mode()
def tiled_scale(samples: torch.Tensor, fn: TileFn, *, tile_x: int = 64, tile_y: int = 64, overlap: int = 8,
                upscale_amount: float = 4, out_channels: int = 3, output_device: torch.device | str = "cpu",
                on_tile: ProgressFn | None = None) -> torch.Tensor:
    """[B,C,H,W] -> [B,out_channels,round(H·upscale),round(W·upscale)] on `output_device`, image by image."""
    output_device = torch.device(output_device)
    h, w = samples.shape[-2:]
    size = [samples.shape[0], out_channels, round(h * upscale_amount), round(w * upscale_amount)]
    output = torch.empty(size, device=output_device)
    for b in range(samples.shape[0]):
        s = samples[b:b + 1]
        if h <= tile_y and w <= tile_x:
            output[b:b + 1] = fn(s).to(output_device)
            if on_tile is not None:
                on_tile()
            continue
        output[b:b + 1] = _blend_one(s, fn, (tile_y, tile_x), overlap, upscale_amount, out_channels, output_device,
                                     on_tile)
    return output
