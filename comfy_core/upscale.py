"""Resizing of [N,C,H,W] tensors with ComfyUI's methods and its optional center crop (`comfy.utils.common_upscale`).

Methods: torch's "nearest-exact", "bilinear", "area", "bicubic"; "bislerp" (bilinear interpolation whose blend of
two neighbours is a spherical lerp over the channel vector, so latent norms are kept); "lanczos" (PIL, through uint8).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp", "lanczos")


def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    """Cut or tile `tensor` along `dim` to exactly `batch_size` entries."""
    n = tensor.shape[dim]
    if n > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if n < batch_size:
        reps = [1] * tensor.ndim
        reps[dim] = math.ceil(batch_size / n)
        return tensor.repeat(reps).narrow(dim, 0, batch_size)
    return tensor


def _slerp(b1: torch.Tensor, b2: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Spherical lerp of row vectors b1, b2 [M,C] by ratios r [M,1]; the norm is lerped linearly.

    Rows with a zero norm count as direction 0; nearly parallel rows take b1, nearly opposite rows a plain lerp.
    """
    c = b1.shape[-1]
    n1 = torch.norm(b1, dim=-1, keepdim=True)
    n2 = torch.norm(b2, dim=-1, keepdim=True)
    u1 = b1 / n1
    u2 = b2 / n2
    u1[n1.expand(-1, c) == 0.0] = 0.0
    u2[n2.expand(-1, c) == 0.0] = 0.0
    dot = (u1 * u2).sum(1)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    rr = r.squeeze(1)
    res = (torch.sin((1.0 - rr) * omega) / so).unsqueeze(1) * u1 + (torch.sin(rr * omega) / so).unsqueeze(1) * u2
    res *= (n1 * (1.0 - r) + n2 * r).expand(-1, c)
    parallel, opposite = dot > 1 - 1e-5, dot < 1e-5 - 1
    res[parallel] = b1[parallel]
    res[opposite] = (b1 * (1.0 - r) + b2 * r)[opposite]
    return res


def _bilinear_taps(old: int, new: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each of `new` output positions: the two source indices and the ratio between them (bilinear sampling)."""
    grid = torch.arange(old, dtype=torch.float32, device=device).reshape(1, 1, 1, -1)
    pos = F.interpolate(grid, size=(1, new), mode="bilinear")
    ratios = pos - pos.floor()
    lo = pos.to(torch.int64)
    nxt = grid + 1
    nxt[..., -1] -= 1  # the last index has no right neighbour
    hi = F.interpolate(nxt, size=(1, new), mode="bilinear").to(torch.int64)
    return ratios, lo, hi


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize [N,C,H,W] to (height, width): a slerp pass along W, then one along H."""
    dtype = samples.dtype
    x = samples.float()
    n, c, h, w = x.shape
    ratios, lo, hi = _bilinear_taps(w, width, x.device)
    a = x.gather(-1, lo.expand(n, c, h, -1)).movedim(1, -1).reshape(-1, c)
    b = x.gather(-1, hi.expand(n, c, h, -1)).movedim(1, -1).reshape(-1, c)
    r = ratios.expand(n, 1, h, -1).movedim(1, -1).reshape(-1, 1)
    x = _slerp(a, b, r).reshape(n, h, width, c).movedim(-1, 1)  # [N,C,H,width]
    ratios, lo, hi = _bilinear_taps(h, height, x.device)
    lo = lo.reshape(1, 1, -1, 1).expand(n, c, -1, width)
    hi = hi.reshape(1, 1, -1, 1).expand(n, c, -1, width)
    a = x.gather(-2, lo).movedim(1, -1).reshape(-1, c)
    b = x.gather(-2, hi).movedim(1, -1).reshape(-1, c)
    r = ratios.reshape(1, 1, -1, 1).expand(n, 1, -1, width).movedim(1, -1).reshape(-1, 1)
    x = _slerp(a, b, r).reshape(n, height, width, c).movedim(-1, 1)  # [N,C,height,width]
    return x.to(dtype)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize [N,C,H,W] images in 0..1 with PIL's Lanczos filter (through uint8, truncated like ComfyUI)."""
    out = []
    for image in samples:
        array = np.clip(255.0 * image.movedim(0, -1).cpu().float().numpy(), 0, 255).astype(np.uint8)
        pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        resized = np.asarray(pil.resize((width, height), resample=Image.Resampling.LANCZOS)).astype(np.float32)
        resized = resized[..., None] if resized.ndim == 2 else resized
        out.append(torch.from_numpy(resized / 255.0).movedim(-1, 0))
    return torch.stack(out).to(samples.device, samples.dtype)


def center_crop_to_aspect(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Cut equal margins off the longer side so that the aspect ratio becomes width:height."""
    old_w, old_h = samples.shape[-1], samples.shape[-2]
    old_aspect, new_aspect = old_w / old_h, width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return samples.narrow(-2, y, old_h - 2 * y).narrow(-1, x, old_w - 2 * x)


def common_upscale(samples: torch.Tensor, width: int, height: int, method: str, crop: str) -> torch.Tensor:
    """Resize [N,C,H,W] (or [N,C,T,H,W], frames folded into the batch) to (height, width).

    `crop="center"` first cuts the input to the target aspect ratio; any other value resizes the whole input.
    """
    if method not in UPSCALE_METHODS:
        raise ValueError(f"unknown upscale method {method!r}; expected one of {', '.join(UPSCALE_METHODS)}")
    shape = tuple(samples.shape)
    if len(shape) > 4:  # [N,C,T...,H,W] -> [N*T,C,H,W]
        samples = samples.reshape(shape[0], shape[1], -1, shape[-2], shape[-1]).movedim(2, 1)
        samples = samples.reshape(-1, shape[1], shape[-2], shape[-1])
    s = center_crop_to_aspect(samples, width, height) if crop == "center" else samples
    if method == "bislerp":
        out = bislerp(s, width, height)
    elif method == "lanczos":
        out = lanczos(s, width, height)
    else:
        out = F.interpolate(s, size=(height, width), mode=method)
    if len(shape) == 4:
        return out
    out = out.reshape((shape[0], -1, shape[1], height, width)).movedim(2, 1)
    return out.reshape(shape[:-2] + (height, width))
