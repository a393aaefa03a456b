"""Pixel filters of ComfyUI's image nodes, in plain torch on [B,C,H,W] float tensors.

ComfyUI runs several of these through kornia (morphology, Canny, YCbCr); kornia is not a dependency here, so the same
algorithms are written out: the structuring-element windows, border rules and constants are kornia's, so the
results match it value for value.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# --- gaussian blur / unsharp mask (comfy_extras.nodes_post_processing) --------------------------------------------


def grid_gaussian(kernel_size: int, sigma: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ComfyUI's blur kernel [k,k]: exp(-d²/2σ²) over a grid spanning -1..1 on both axes (not pixel units), sum 1."""
    axis = torch.linspace(-1, 1, kernel_size)
    x, y = torch.meshgrid(axis, axis, indexing="ij")
    g = torch.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    return (g / g.sum()).to(dtype)


def _reflect_conv(image: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """Depthwise 2-D correlation of [B,C,H,W] with `kernel` [k,k] over a reflect-padded border."""
    h, w = image.shape[-2:]
    if radius >= h or radius >= w:
        raise ValueError(f"a radius of {radius} needs an image larger than {radius} pixels; got {w}x{h}")
    channels = image.shape[1]
    weight = kernel.to(image).expand(channels, 1, *kernel.shape)  # [C,1,k,k]
    padded = F.pad(image, (radius, radius, radius, radius), mode="reflect")
    return F.conv2d(padded, weight, groups=channels)


def gaussian_blur(image: torch.Tensor, radius: int, sigma: float) -> torch.Tensor:
    return _reflect_conv(image, grid_gaussian(2 * radius + 1, sigma), radius)


def sharpen(image: torch.Tensor, radius: int, sigma: float, alpha: float) -> torch.Tensor:
    """Unsharp masking with ComfyUI's kernel: -10·alpha·gaussian, centre raised so the kernel sums to 1; clamped."""
    kernel = grid_gaussian(2 * radius + 1, sigma) * -(alpha * 10)
    kernel[radius, radius] = kernel[radius, radius] - kernel.sum() + 1.0
    return torch.clamp(_reflect_conv(image, kernel, radius), 0, 1)


# --- morphology (kornia.morphology with a k×k square of ones, geodesic border) ------------------------------------


def _window_max(image: torch.Tensor, k: int) -> torch.Tensor:
    """Max over the k×k window whose origin is (k//2, k//2), pixels outside the image ignored (kornia's layout:
    for even k the window reaches k//2 pixels up/left and k//2 - 1 down/right)."""
    before, after = k // 2, k - k // 2 - 1
    padded = F.pad(image, (before, after, before, after), value=-math.inf)
    rows = F.max_pool2d(padded, (k, 1), stride=1)  # separable: a square's max is a max of column maxima
    return F.max_pool2d(rows, (1, k), stride=1)


def dilate(image: torch.Tensor, k: int) -> torch.Tensor:
    return _window_max(image, k)


def erode(image: torch.Tensor, k: int) -> torch.Tensor:
    return -_window_max(-image, k)


MORPHOLOGY_OPS = {
    "erode": erode,
    "dilate": dilate,
    "open": lambda x, k: dilate(erode(x, k), k),
    "close": lambda x, k: erode(dilate(x, k), k),
    "gradient": lambda x, k: dilate(x, k) - erode(x, k),
    "top_hat": lambda x, k: x - dilate(erode(x, k), k),
    "bottom_hat": lambda x, k: erode(dilate(x, k), k) - x,
}


# --- Canny (kornia.filters.canny with its defaults: 5×5 gaussian, σ = 1, hysteresis) -------------------------------

# Neighbour offsets (dy, dx) per direction index d: angle = 45°·d measured with y pointing down (kornia's order).
_DIRECTIONS = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[i,j] = x[i+dy, j+dx], zero outside the image."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    return padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def _canny_gradients(gray: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel gx, gy (unnormalised, replicate border) of the 5×5 σ=1 gaussian-blurred (reflect border) image."""
    x = torch.arange(5, dtype=gray.dtype, device=gray.device) - 2
    g1 = torch.exp(-0.5 * x * x)
    g1 = g1 / g1.sum()
    # separable like kornia's gaussian_blur2d: rows first, then columns (same rounding, so ties stay ties)
    blurred = F.conv2d(F.pad(gray, (2, 2, 0, 0), mode="reflect"), g1.view(1, 1, 1, 5))
    blurred = F.conv2d(F.pad(blurred, (0, 0, 2, 2), mode="reflect"), g1.view(1, 1, 5, 1))
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    weight = torch.stack([sobel_x, sobel_x.T])[:, None].to(gray)  # [2,1,3,3]
    grads = F.conv2d(F.pad(blurred, (1, 1, 1, 1), mode="replicate"), weight)
    return grads[:, 0:1], grads[:, 1:2]


def _non_max_suppression(magnitude: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """Keep a pixel only if it is strictly larger than both neighbours along its gradient direction (45° bins)."""
    direction = torch.round(torch.rad2deg(torch.atan2(gy, gx)) / 45)
    forward = (direction % 8).long()
    backward = ((direction + 4) % 8).long()
    # [B,8,H,W]: magnitude minus each neighbour (neighbours outside the image count as 0)
    diffs = torch.cat([magnitude - _shifted(magnitude, dy, dx) for dy, dx in _DIRECTIONS], dim=1)
    is_max = torch.minimum(diffs.gather(1, forward), diffs.gather(1, backward)) > 0.0
    return magnitude * is_max


def _hysteresis(edges: torch.Tensor) -> torch.Tensor:
    """Promote weak (0.5) pixels 8-connected to strong (1) ones until nothing changes; drop the rest."""
    while True:
        weak, strong = (edges == 0.5).to(edges), (edges == 1).to(edges)
        touches = torch.zeros_like(edges, dtype=torch.bool)
        for dy, dx in _DIRECTIONS:
            touches |= _shifted(edges, dy, dx) == 1
        promoted = touches.to(edges) * weak + strong
        updated = promoted + (promoted == 0) * weak * 0.5
        if torch.equal(updated, edges):
            return promoted
        edges = updated


def canny(image: torch.Tensor, low_threshold: float, high_threshold: float) -> torch.Tensor:
    """Canny edges [B,1,H,W] in {0, 1} of an RGB (or one-channel) [B,C,H,W] image."""
    if min(image.shape[-2:]) < 3:
        raise ValueError(f"Canny needs an image of at least 3x3 pixels; got {image.shape[-1]}x{image.shape[-2]}")
    if image.shape[1] >= 3:
        r, g, b = image[:, 0:1], image[:, 1:2], image[:, 2:3]
        image = 0.299 * r + 0.587 * g + 0.114 * b
    else:
        image = image[:, 0:1]
    gx, gy = _canny_gradients(image)
    magnitude = torch.sqrt(gx * gx + gy * gy + 1e-6)
    magnitude = _non_max_suppression(magnitude, gx, gy)
    edges = (magnitude > low_threshold) * 0.5 + (magnitude > high_threshold) * 0.5
    return _hysteresis(edges.to(image.dtype))


# --- YCbCr (kornia.color, analog BT.601 constants) ------------------------------------------------------------------


def rgb_to_ycbcr(image: torch.Tensor) -> torch.Tensor:
    """[...,3] RGB -> [...,3] Y, Cb, Cr (channels last)."""
    r, g, b = image.unbind(-1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return torch.stack([y, (b - y) * 0.564 + 0.5, (r - y) * 0.713 + 0.5], dim=-1)


def ycbcr_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """[...,3] Y, Cb, Cr -> [...,3] RGB, clamped to 0..1 (as kornia 0.8 does)."""
    y, cb, cr = image.unbind(-1)
    cb, cr = cb - 0.5, cr - 0.5
    return torch.stack([y + 1.403 * cr, y - 0.714 * cr - 0.344 * cb, y + 1.773 * cb], dim=-1).clamp(0, 1)


# --- palette quantisation (PIL, as ComfyUI does it) ---------------------------------------------------------------

DITHER_MODES = ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]


def _bayer_matrix(n: int) -> np.ndarray:
    """The 2^n × 2^n ordered-dither matrix, centred on 0 with values in (-0.5, 0.5)."""
    if n == 0:
        return np.zeros((1, 1), np.float64)
    q = 4 ** n
    m = q * _bayer_matrix(n - 1)
    return np.block([[m - 1.5, m + 0.5], [m + 1.5, m - 0.5]]) / q


def _bayer_dither(img: Image.Image, palette: Image.Image, order: int) -> Image.Image:
    """Add the tiled Bayer threshold map (scaled to the palette spacing) to the pixels, then map to the palette."""
    colors = len(palette.getpalette()) // 3
    matrix = (2 * 256 / colors) * _bayer_matrix(int(math.log2(order))) + 0.5
    pixels = np.asarray(img).astype(np.float32)  # [H,W,3]
    h, w = pixels.shape[:2]
    reps = (math.ceil(h / order), math.ceil(w / order))
    threshold = np.tile(matrix, reps)[:h, :w, None]  # float64, summed then rounded to float32 as ComfyUI's add_
    shifted = np.clip((pixels + threshold).astype(np.float32), 0, 255).astype(np.uint8)
    return Image.fromarray(shifted).quantize(palette=palette, dither=Image.Dither.NONE)


def quantize(rgb: torch.Tensor, colors: int, dither: str) -> torch.Tensor:
    """One RGB image [H,W,3] reduced to a `colors`-entry median-cut palette, dithered as asked."""
    array = (torch.clamp(rgb, 0, 1) * 255).to(torch.uint8).cpu().numpy()  # truncating, like ComfyUI
    img = Image.fromarray(array, mode="RGB")
    palette = img.quantize(colors=colors)  # a palette image to map onto (Pillow issue 5836)
    if dither == "none":
        out = img.quantize(palette=palette, dither=Image.Dither.NONE)
    elif dither == "floyd-steinberg":
        out = img.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
    elif dither.startswith("bayer-") and dither in DITHER_MODES:
        out = _bayer_dither(img, palette, int(dither.split("-")[1]))
    else:
        raise ValueError(f"dither must be one of {', '.join(DITHER_MODES)}; got {dither!r}")
    return torch.from_numpy(np.asarray(out.convert("RGB")).astype(np.float32) / 255).to(rgb.device)
