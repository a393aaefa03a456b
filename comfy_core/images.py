"""Pixels in and out: tensor <-> PIL, ComfyUI-compatible PNG saving and image loading, preview encoding.

IMAGE tensors are float32 [B,H,W,C] in 0..1, MASK tensors [B,H,W]. Loading refuses images whose pixel count exceeds
a cap (checked from the header before any decoding), so a small "decompression bomb" cannot exhaust memory.
"""
from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence, PngImagePlugin, UnidentifiedImageError

from .errors import InputFileError

# PIL's own warning threshold; one frame may not have more pixels than this (about 9459x9459).
MAX_PIXELS = 89_478_485
# all frames of an animation together
MAX_TOTAL_PIXELS = 4 * MAX_PIXELS


@contextmanager
def open_image(source: str | os.PathLike | IO[bytes], max_pixels: int = MAX_PIXELS) -> Iterator[Image.Image]:
    """Open an image lazily with PIL; unreadable or oversized images raise `InputFileError` (400)."""
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "upload"
    try:
        img = Image.open(source)
    except FileNotFoundError as exc:
        raise InputFileError(f"image not found: {name}", status=404) from exc
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        raise InputFileError(f"cannot read image {name}: {exc}", status=400) from exc
    try:
        width, height = img.size
        if width * height > max_pixels:
            raise InputFileError(
                f"image {name} is {width}x{height}, more than the {max_pixels} pixels allowed", status=400
            )
        yield img
    finally:
        img.close()


# --- tensor <-> PIL -----------------------------------------------------------------------------------------------


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[H,W,C] float in 0..1 -> uint8 array, truncating like ComfyUI: uint8(clip(255*x, 0, 255))."""
    array = 255.0 * image.detach().to("cpu", torch.float32).numpy()
    return np.clip(array, 0, 255).astype(np.uint8)


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """One image [H,W,C] (C = 1, 3 or 4) as a PIL image (L, RGB or RGBA)."""
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an image tensor [H,W,1|3|4], got shape {tuple(image.shape)}")
    array = to_uint8(image)
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """A PIL image as IMAGE [1,H,W,3] (converted to RGB) in 0..1."""
    array = np.asarray(img.convert("RGB")).astype(np.float32) / 255.0
    return torch.from_numpy(array)[None]


# --- saving -------------------------------------------------------------------------------------------------------


def png_info(prompt: Any = None, extra_pnginfo: dict[str, Any] | None = None) -> PngImagePlugin.PngInfo:
    """tEXt chunks as ComfyUI writes them: `prompt` and one per extra_pnginfo key, Python's default json.dumps."""
    info = PngImagePlugin.PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(key, json.dumps(value))
    return info


def save_png(
    image: torch.Tensor,
    path: str | os.PathLike,
    *,
    prompt: Any = None,
    extra_pnginfo: dict[str, Any] | None = None,
    compress_level: int = 4,
) -> None:
    """Save one image [H,W,3|4] as PNG with ComfyUI's pixel conversion and metadata chunks."""
    img = tensor_to_pil(image)
    img.save(path, format="PNG", pnginfo=png_info(prompt, extra_pnginfo), compress_level=compress_level)


# --- loading ------------------------------------------------------------------------------------------------------


def _scale_mode_i(frame: Image.Image) -> Image.Image:
    """16/32-bit integer frames (mode I) are divided by 255 before RGB conversion, as ComfyUI does."""
    return frame.point(lambda v: v * (1 / 255)) if frame.mode == "I" else frame


def _frame_mask(frame: Image.Image) -> torch.Tensor | None:
    """1 - alpha of a frame (also from palette transparency), or None when it has no alpha."""
    if "A" in frame.getbands():
        alpha = frame.getchannel("A")
    elif frame.mode == "P" and "transparency" in frame.info:
        alpha = frame.convert("RGBA").getchannel("A")
    else:
        return None
    return 1.0 - torch.from_numpy(np.asarray(alpha).astype(np.float32) / 255.0)


def load_image(path: str | os.PathLike, max_pixels: int = MAX_PIXELS) -> tuple[torch.Tensor, torch.Tensor]:
    """LoadImage: (IMAGE [N,H,W,3], MASK [N,H,W]) from every frame of the first frame's size.

    EXIF orientation is applied; MPO files give their first frame only. A frame without alpha gets a 64x64 zero mask
    (ComfyUI's placeholder); in a mixed animation those become zeros of the frame size so the batch can stack.
    """
    images: list[torch.Tensor] = []
    masks: list[torch.Tensor | None] = []
    with open_image(path, max_pixels) as img:
        size = None
        for frame in ImageSequence.Iterator(img):
            frame = _scale_mode_i(ImageOps.exif_transpose(frame))
            rgb = frame.convert("RGB")
            size = size or rgb.size
            if rgb.size != size:
                continue
            if (len(images) + 1) * size[0] * size[1] > MAX_TOTAL_PIXELS:
                raise InputFileError(f"image {os.fspath(path)} has too many frames", status=400)
            images.append(torch.from_numpy(np.asarray(rgb).astype(np.float32) / 255.0)[None])
            masks.append(_frame_mask(frame))
            if img.format == "MPO":
                break
    if not images:
        raise InputFileError(f"image {os.fspath(path)} has no frames", status=400)
    if all(m is None for m in masks):
        mask = torch.zeros((len(masks), 64, 64), dtype=torch.float32)
    else:
        w, h = size
        mask = torch.stack([m if m is not None else torch.zeros((h, w)) for m in masks])
    return torch.cat(images, dim=0), mask


_CHANNELS = {"alpha": "A", "red": "R", "green": "G", "blue": "B"}


def load_image_mask(path: str | os.PathLike, channel: str, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """LoadImageMask: one channel of the first frame as MASK [1,H,W] in 0..1; the alpha channel is inverted."""
    band = _CHANNELS.get(channel, channel[:1].upper())
    with open_image(path, max_pixels) as img:
        frame = ImageOps.exif_transpose(img)
        if frame.getbands() != ("R", "G", "B", "A"):
            frame = _scale_mode_i(frame).convert("RGBA")
        if band not in frame.getbands():
            return torch.zeros((1, 64, 64), dtype=torch.float32)
        mask = torch.from_numpy(np.asarray(frame.getchannel(band)).astype(np.float32) / 255.0)
    if band == "A":
        mask = 1.0 - mask
    return mask[None]


# --- previews -----------------------------------------------------------------------------------------------------


def encode_preview(img: Image.Image | torch.Tensor, fmt: str = "JPEG", max_size: int | None = 512) -> bytes:
    """A latent/step preview as ComfyUI sends it: fit into max_size (bilinear), JPEG/PNG/WEBP quality 95."""
    if isinstance(img, torch.Tensor):
        img = tensor_to_pil(img[0] if img.ndim == 4 else img)
    if max_size is not None:
        img = ImageOps.contain(img, (max_size, max_size), Image.Resampling.BILINEAR)
    if fmt.upper() == "JPEG" and img.mode not in ("RGB", "L"):
        img = img.convert("RGB")
    out = io.BytesIO()
    img.save(out, format=fmt.upper(), quality=95, compress_level=1)
    return out.getvalue()


def view_preview(path: str | os.PathLike, preview: str, channel: str | None = None) -> tuple[bytes, str]:
    """/view with `preview=fmt;quality`: (bytes, content type). Only webp/jpeg; any 'a' in an explicit channel
    forces webp (an absent channel does not); quality is the last `;` part when all digits, else 90."""
    parts = preview.split(";")
    fmt = parts[0] if parts[0] in ("webp", "jpeg") else "webp"
    if "a" in (channel or ""):
        fmt = "webp"
    quality = int(parts[-1]) if parts[-1].isdigit() else 90
    with open_image(path) as img:
        if fmt == "jpeg" or channel == "rgb":
            img = img.convert("RGB")
        elif img.mode not in ("RGB", "RGBA", "L", "LA"):
            img = img.convert("RGBA")
        out = io.BytesIO()
        img.save(out, format=fmt, quality=quality)
    return out.getvalue(), f"image/{fmt}"


def view_channel(path: str | os.PathLike, channel: str) -> bytes:
    """/view with channel=rgb (the RGB planes) or channel=a (black RGBA carrying the source alpha) as PNG bytes."""
    with open_image(path) as img:
        if channel == "rgb":
            result = Image.merge("RGB", img.split()[:3]) if img.mode == "RGBA" else img.convert("RGB")
        elif channel == "a":
            alpha = img.getchannel("A") if img.mode == "RGBA" else Image.new("L", img.size, 255)
            result = Image.new("RGBA", img.size)
            result.putalpha(alpha)
        else:
            raise InputFileError(f"unknown channel {channel!r}", status=400)
        out = io.BytesIO()
        result.save(out, format="PNG")
    return out.getvalue()


def read_png_text(path: str | os.PathLike | Path) -> dict[str, str]:
    """The tEXt/iTXt chunks of a PNG (e.g. the `prompt` and `workflow` ComfyUI embeds)."""
    with open_image(path) as img:
        return dict(getattr(img, "text", {}))
