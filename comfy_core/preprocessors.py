"""ControlNet annotator plumbing as comfyui_controlnet_aux does it, without OpenCV.

The annotator pack works on uint8 HWC numpy images and uses OpenCV for resizing, blurring and dilation; the results a
ControlNet sees depend on those exact operations, so this module re-implements the few it needs with OpenCV's
conventions (pixel-centre sampling, replicated borders for resize, reflect-101 borders for blur, OpenCV's automatic
Gaussian kernel size, `INTER_AREA`'s box averaging and its own upscale rule). Arithmetic is float64 followed by
round-to-nearest, where OpenCV uses fixed point for uint8; outputs can differ by one grey level on some pixels.

Pipeline of one annotator call (`common_annotator_call`): IMAGE [B,H,W,C] 0..1 -> uint8 (truncating) -> per image
`resize_image_with_pad` (short side to `resolution`, edges replicated to multiples of 64) -> detector -> crop the
padding -> [B, H', W', 3] float 0..1 at the detection size (not resized back, as the current pack does).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ComfyCoreError

Detector = Callable[[np.ndarray], np.ndarray]  # padded uint8 HxWx3 -> uint8 HxW or HxWx3 map

# ------------------------------------------------------------------------------------------------ resampling weights


def _area_down_weights(n_in: int, n_out: int) -> torch.Tensor:
    """OpenCV INTER_AREA when shrinking: each output pixel averages the input span it covers (by overlap)."""
    scale = n_in / n_out
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        lo, hi = i * scale, (i + 1) * scale
        for j in range(int(math.floor(lo)), min(int(math.ceil(hi)), n_in)):
            w[i, j] = min(hi, j + 1) - max(lo, j)
    return w / w.sum(dim=1, keepdim=True)


def _area_up_weights(n_in: int, n_out: int) -> torch.Tensor:
    """OpenCV INTER_AREA when enlarging: nearest source pixel, blended only where a source pixel boundary falls."""
    scale, inv = n_in / n_out, n_out / n_in
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for i in range(n_out):
        sx = math.floor(i * scale)
        fx = float(np.float32((i + 1) - (sx + 1) * inv))
        fx = 0.0 if fx <= 0 else fx - math.floor(fx)
        if sx >= n_in - 1:
            sx, fx = n_in - 1, 0.0
        w[i, sx] += 1.0 - fx
        if fx:
            w[i, sx + 1] += fx
    return w


def _cubic(t: torch.Tensor, a: float = -0.75) -> torch.Tensor:
    """Keys' cubic convolution kernel with OpenCV's a = -0.75."""
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return torch.where(t <= 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


def _interp_weights(n_in: int, n_out: int, taps: int) -> torch.Tensor:
    """Linear (taps 2) or cubic (taps 4) resampling at pixel centres with replicated borders (INTER_LINEAR/CUBIC)."""
    x = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
    if taps == 2:
        x = x.clamp(min=0)  # OpenCV clamps the left edge for linear, not for cubic
    base = torch.floor(x)
    w = torch.zeros(n_out, n_in, dtype=torch.float64)
    for k in range(-(taps // 2) + 1, taps // 2 + 1):
        src = base + k
        d = x - src
        weight = (1 - d.abs()).clamp(min=0) if taps == 2 else _cubic(d)
        w.index_put_((torch.arange(n_out), src.long().clamp(0, n_in - 1)), weight, accumulate=True)
    return w


def _weights(method: str, n_in: int, n_out: int) -> torch.Tensor:
    if n_in == n_out and method != "cubic":
        return torch.eye(n_in, dtype=torch.float64)
    if method == "area":
        return _area_down_weights(n_in, n_out) if n_out <= n_in else _area_up_weights(n_in, n_out)
    return _interp_weights(n_in, n_out, 2 if method == "linear" else 4)


def resize(img: np.ndarray, width: int, height: int, method: str) -> np.ndarray:
    """`cv2.resize(img, (width, height), interpolation=INTER_{AREA,LINEAR,CUBIC})` for HxW[xC] uint8 or float32.

    OpenCV uses INTER_AREA's shrinking rule only when neither axis grows; otherwise both axes use its enlarging rule.
    """
    h, w = img.shape[:2]
    if method == "area" and (height > h or width > w):
        wy, wx = _area_up_weights(h, height), _area_up_weights(w, width)
    else:
        wy, wx = _weights(method, h, height), _weights(method, w, width)
    x = torch.from_numpy(np.ascontiguousarray(img)).to(torch.float64)
    x = x.reshape(h, w, -1)
    out = torch.einsum("oh,hwc,pw->opc", wy, x, wx)  # [height, width, C]
    out = out.reshape((height, width) + img.shape[2:])
    if img.dtype == np.uint8:
        return torch.floor(out + 0.5).clamp(0, 255).to(torch.uint8).numpy()  # fixed point rounds half up
    return out.to(torch.float32).numpy()


# ------------------------------------------------------------------------------------------------ filters


def gaussian_kernel(sigma: float, uint8: bool) -> torch.Tensor:
    """OpenCV's automatic kernel for `GaussianBlur(x, (0, 0), sigma)`: size round(2*k*sigma + 1) | 1, k 3 or 4."""
    size = int(round(sigma * (3 if uint8 else 4) * 2 + 1)) | 1
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _fixed_point_kernel(k: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """OpenCV's uint8 kernel: taps in 1/256 units, quantised with error diffusion from the outside in; the centre
    tap takes whatever makes the sum exactly 1."""
    taps, n = k.tolist(), len(k)
    out, err, half = [0.0] * n, 0.0, n // 2
    for i in range(half):
        adjusted = taps[i] * (1 << bits) + err
        v = round(adjusted)  # round half to even, as cvRound
        err = adjusted - v
        out[i] = out[n - 1 - i] = float(v)
    out[half] = float((1 << bits) - 2 * sum(out[:half]))
    return torch.tensor(out, dtype=torch.float64)


def _reflect101(x: torch.Tensor, pad: int, dim: int) -> torch.Tensor:
    """Pad `dim` with OpenCV's BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba), also when pad exceeds the length."""
    n = x.shape[dim]
    idx = torch.arange(-pad, n + pad)
    if n == 1:
        idx = torch.zeros_like(idx)
    else:
        period = 2 * (n - 1)
        idx = idx.remainder(period)
        idx = torch.where(idx >= n, period - idx, idx)
    return x.index_select(dim, idx)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """`cv2.GaussianBlur(img, (0, 0), sigma)` for a HxW[xC] uint8 or float32 image.

    uint8 follows OpenCV's bit-exact fixed-point path (8-bit taps, exact sums, round half up); float32 is filtered in
    float32 with a float32 kernel so that plateaus and ties behave as in OpenCV.
    """
    uint8 = img.dtype == np.uint8
    k = gaussian_kernel(sigma, uint8)
    k = _fixed_point_kernel(k) if uint8 else k.to(torch.float32)
    r = (len(k) - 1) // 2
    x = torch.from_numpy(np.ascontiguousarray(img)).to(k.dtype)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(2, 0, 1)[:, None]  # [C, 1, H, W]
    x = F.conv2d(_reflect101(x, r, 3), k.view(1, 1, 1, -1))
    x = F.conv2d(_reflect101(x, r, 2), k.view(1, 1, -1, 1))
    out = x[:, 0].permute(1, 2, 0).reshape(img.shape)
    if uint8:  # out is in 1/65536 units
        return torch.floor((out + 32768) / 65536).clamp(0, 255).to(torch.uint8).numpy()
    return out.numpy()


_LINES = ((0, 1), (1, 0), (1, 1), (1, -1))  # horizontal, vertical and the two diagonal 3-pixel lines


def _dilate_line(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Max over a pixel and its two neighbours along (dy, dx); outside the image counts as -inf (OpenCV default)."""
    p = F.pad(x[None, None], (1, 1, 1, 1), value=float("-inf"))[0, 0]
    h, w = x.shape
    a = p[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
    b = p[1 - dy:1 - dy + h, 1 - dx:1 - dx + w]
    return torch.maximum(x, torch.maximum(a, b))


def nms(x: np.ndarray, threshold: int, sigma: float) -> np.ndarray:
    """Thin a soft edge map: blur, keep pixels that are maxima along some 3-pixel line, threshold to 0/255."""
    blurred = torch.from_numpy(gaussian_blur(x.astype(np.float32), sigma))
    kept = torch.zeros_like(blurred)
    for dy, dx in _LINES:
        peak = _dilate_line(blurred, dy, dx) == blurred
        kept = torch.where(peak, blurred, kept)
    return np.where(kept.numpy() > threshold, 255, 0).astype(np.uint8)


def thicken_scribble(edge: np.ndarray) -> np.ndarray:
    """The fake-scribble post-process: nms(127, sigma 3), blur sigma 3 again, every pixel above 4 becomes 255."""
    lines = gaussian_blur(nms(edge, 127, 3.0), 3.0)
    return np.where(lines > 4, 255, 0).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ annotator plumbing


def hwc3(x: np.ndarray) -> np.ndarray:
    """Grey -> 3 identical channels; RGBA composited over white; RGB unchanged (uint8)."""
    if x.ndim == 2:
        x = x[:, :, None]
    if x.shape[2] == 3:
        return x
    if x.shape[2] == 1:
        return np.concatenate([x, x, x], axis=2)
    color, alpha = x[:, :, :3].astype(np.float32), x[:, :, 3:4].astype(np.float32) / 255.0
    return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)


def resize_image_with_pad(img: np.ndarray, resolution: int, upscale: str) -> tuple[np.ndarray, tuple[int, int]]:
    """Short side to `resolution` (`upscale` method when enlarging, area when shrinking), then replicate the bottom and
    right edges up to multiples of 64. Returns the padded image and the (height, width) to crop the result back to."""
    img = hwc3(img)
    h, w = img.shape[:2]
    if resolution == 0:
        return img, (h, w)
    k = float(resolution) / float(min(h, w))
    ht, wt = int(np.round(h * k)), int(np.round(w * k))
    img = resize(img, wt, ht, upscale if k > 1 else "area")
    pad_h, pad_w = -ht % 64, -wt % 64
    return np.pad(img, [[0, pad_h], [0, pad_w], [0, 0]], mode="edge"), (ht, wt)


def scribble_detector(img: np.ndarray, resolution: int = 512) -> np.ndarray:
    """"Scribble Lines": dark strokes (min over RGB < 127) stay black, everything else turns white; uint8 HxWx3."""
    padded, (h, w) = resize_image_with_pad(img, resolution, "area")
    mark = np.zeros_like(padded)
    mark[padded.min(axis=2) < 127] = 255
    return (255 - mark)[:h, :w]


def run_padded(detector: Detector, img: np.ndarray, resolution: int, upscale: str = "cubic") -> np.ndarray:
    """Run `detector` on the padded resized image and crop the padding off its map (HWC3 uint8)."""
    padded, (h, w) = resize_image_with_pad(img, resolution, upscale)
    return hwc3(np.ascontiguousarray(detector(padded)[:h, :w]))


def detect_resolution(resolution: object) -> int:
    """The pack's rule: an int of at least 64 is used as given, anything else means 512."""
    return resolution if type(resolution) is int and resolution >= 64 else 512


def common_annotator_call(annotate: Callable[[np.ndarray, int], np.ndarray], images: torch.Tensor,
                          resolution: object = 512,
                          progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Apply `annotate(uint8 HxWx3, detect_resolution) -> uint8 map` to each image of an IMAGE batch.

    Pixels are converted to uint8 by truncation (as `np.asarray(image * 255, dtype=uint8)`); the batch is sized from
    the first result.
    """
    res = detect_resolution(resolution)
    out: torch.Tensor | None = None
    for i, image in enumerate(images):
        pixels = (image.detach().cpu().float() * 255.0).clamp(0, 255).to(torch.uint8).numpy()
        result = torch.from_numpy(annotate(pixels, res).astype(np.float32) / 255.0)
        if out is None:
            out = torch.zeros((images.shape[0], *result.shape), dtype=torch.float32)
        out[i] = result
        if progress is not None:
            progress(i + 1, images.shape[0])
    if out is None:
        raise ComfyCoreError("the annotator got an empty image batch")
    return out
