"""Image nodes that need no model: load, save, preview, resize, pad, crop, blend, batch.

IMAGE = float32 [B,H,W,C] in 0..1 (C = 3, sometimes 4). File access goes through the engine's `Storage`.
"""
from __future__ import annotations

import math
import secrets
from typing import Any

import torch

from .. import context
from ..images import load_image, load_image_mask, save_png
from ..storage import sha256_file
from ..upscale import common_upscale
from .inputs import CROP_METHODS, int_input

IMAGE_UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
_PREVIEW_LETTERS = "abcdefghijklmnopqrstupvxyz"  # ComfyUI's alphabet, 'w' missing and 'p' twice


def _storage():
    return context.current().storage


def _file_sha256(name: str) -> str:
    return sha256_file(_storage().resolve_annotated(name, "input", must_exist=True))


def resize_image(image: torch.Tensor, width: int, height: int, method: str, crop: str = "disabled") -> torch.Tensor:
    """`common_upscale` for IMAGE [B,H,W,C] (it works on [B,C,H,W])."""
    return common_upscale(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


def _scaled_size(image: torch.Tensor, scale_by: float) -> tuple[int, int]:
    """(width, height) of `image` [B,H,W,C] scaled by `scale_by`, rounded."""
    return round(image.shape[2] * scale_by), round(image.shape[1] * scale_by)


def _input_choices(images_only: bool) -> list[str]:
    ctx = context.current_or_none()
    if ctx is None:  # object_info outside an engine: no folder to list
        return []
    return ctx.storage.list_input_images() if images_only else ctx.storage.list_input_files()


# --- files -----------------------------------------------------------------------------------------------------


class SaveImage:
    DESCRIPTION = "Writes the images as PNG files into the engine's output folder."
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image"

    kind = "output"
    compress_level = 4

    def __init__(self) -> None:
        self.prefix_append = ""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to write."}),
                "filename_prefix": ("STRING", {"default": "ComfyUI", "tooltip": (
                    "File name prefix; may contain a subfolder and %width%, %height%, %year%... tokens.")}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save_images(self, images: torch.Tensor, filename_prefix: str = "ComfyUI", prompt: Any = None,
                    extra_pnginfo: dict[str, Any] | None = None) -> dict[str, Any]:
        ctx = context.current()
        height, width = images[0].shape[0], images[0].shape[1]
        target = ctx.storage.save_image_path(filename_prefix + self.prefix_append, width, height, self.kind)
        if not ctx.config.save_metadata:
            prompt, extra_pnginfo = None, None
        counter, results = target.counter, []
        for batch_number, image in enumerate(images):
            ctx.check_interrupted()
            name = target.filename.replace("%batch_num%", str(batch_number))
            file = f"{name}_{counter:05}_.png"
            save_png(image, target.full_folder / file, prompt=prompt, extra_pnginfo=extra_pnginfo,
                     compress_level=self.compress_level)
            results.append({"filename": file, "subfolder": target.subfolder, "type": self.kind})
            counter += 1
        return {"ui": {"images": results}}


class PreviewImage(SaveImage):
    DESCRIPTION = SaveImage.DESCRIPTION  # ComfyUI reports the parent's description here too
    kind = "temp"
    compress_level = 1

    def __init__(self) -> None:
        # One random suffix per node instance, so previews of different nodes never share a counter.
        self.prefix_append = "_temp_" + "".join(secrets.choice(_PREVIEW_LETTERS) for _ in range(5))

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"images": ("IMAGE",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}


class LoadImage:
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "load_image"
    CATEGORY = "image"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": (_input_choices(images_only=True), {"image_upload": True})}}

    def load_image(self, image: str) -> tuple[torch.Tensor, torch.Tensor]:
        return load_image(_storage().resolve_annotated(image, "input", must_exist=True))

    @classmethod
    def IS_CHANGED(cls, image: str) -> str:
        return _file_sha256(image)

    @classmethod
    def VALIDATE_INPUTS(cls, image: str) -> bool | str:
        if not isinstance(image, str) or not _storage().exists_annotated(image, "input"):
            return f"Invalid image file: {image}"
        return True


class LoadImageMask:
    RETURN_TYPES = ("MASK",)
    FUNCTION = "load_image"
    CATEGORY = "mask"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": (_input_choices(images_only=False), {"image_upload": True}),
            "channel": (["alpha", "red", "green", "blue"],),
        }}

    def load_image(self, image: str, channel: str) -> tuple[torch.Tensor]:
        return (load_image_mask(_storage().resolve_annotated(image, "input", must_exist=True), channel),)

    @classmethod
    def IS_CHANGED(cls, image: str, channel: str | None = None) -> str:
        return _file_sha256(image)

    @classmethod
    def VALIDATE_INPUTS(cls, image: str) -> bool | str:
        return LoadImage.VALIDATE_INPUTS(image)


# --- generating and resizing -----------------------------------------------------------------------------------


class EmptyImage:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "generate"
    CATEGORY = "image"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "width": int_input(512, 1),
            "height": int_input(512, 1),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096}),
            "color": int_input(0, 0, 0xFFFFFF, display="color"),
        }}

    def generate(self, width: int, height: int, batch_size: int = 1, color: int = 0) -> tuple[torch.Tensor]:
        channels = [((color >> shift) & 0xFF) / 0xFF for shift in (16, 8, 0)]  # r, g, b
        planes = [torch.full([batch_size, height, width, 1], v) for v in channels]
        return (torch.cat(planes, dim=-1),)


class ImageScale:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE",),
            "upscale_method": (IMAGE_UPSCALE_METHODS,),
            "width": int_input(512, 0),
            "height": int_input(512, 0),
            "crop": (CROP_METHODS,),
        }}

    def upscale(self, image: torch.Tensor, upscale_method: str, width: int, height: int,
                crop: str) -> tuple[torch.Tensor]:
        if width == 0 and height == 0:
            return (image,)
        if width == 0:  # keep the aspect ratio
            width = max(1, round(image.shape[2] * height / image.shape[1]))
        elif height == 0:
            height = max(1, round(image.shape[1] * width / image.shape[2]))
        return (resize_image(image, width, height, upscale_method, crop),)


class ImageScaleBy:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE",),
            "upscale_method": (IMAGE_UPSCALE_METHODS,),
            "scale_by": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}),
        }}

    def upscale(self, image: torch.Tensor, upscale_method: str, scale_by: float) -> tuple[torch.Tensor]:
        return (resize_image(image, *_scaled_size(image, scale_by), upscale_method),)


class ImageScaleToTotalPixels:
    INFO_V3 = True
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_post_processing"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE", {}),
            "upscale_method": ("COMBO", {"multiselect": False, "options": list(IMAGE_UPSCALE_METHODS)}),
            "megapixels": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01}),
        }}

    def upscale(self, image: torch.Tensor, upscale_method: str, megapixels: float) -> tuple[torch.Tensor]:
        check_choice("upscale_method", upscale_method, IMAGE_UPSCALE_METHODS)
        total = int(megapixels * 1024 * 1024)  # a "megapixel" is 2^20 pixels here
        scale_by = math.sqrt(total / (image.shape[2] * image.shape[1]))
        return (resize_image(image, *_scaled_size(image, scale_by), upscale_method),)


def check_choice(name: str, value: str, choices: list[str]) -> None:
    """V3 combos are not checked by prompt validation (as in ComfyUI), so the node checks its own."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


# --- pixel operations ------------------------------------------------------------------------------------------


class ImageInvert:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "invert"
    CATEGORY = "image"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",)}}

    def invert(self, image: torch.Tensor) -> tuple[torch.Tensor]:
        return (1.0 - image,)


def pad_alpha(image: torch.Tensor) -> torch.Tensor:
    """RGB -> RGBA with alpha 1."""
    return torch.nn.functional.pad(image, (0, 1), mode="constant", value=1.0)


class ImageBatch:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "batch"
    CATEGORY = "image"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image1": ("IMAGE",), "image2": ("IMAGE",)}}

    def batch(self, image1: torch.Tensor, image2: torch.Tensor) -> tuple[torch.Tensor]:
        if image1.shape[-1] != image2.shape[-1]:  # mixing RGB and RGBA: give the RGB one an opaque alpha
            if image1.shape[-1] > image2.shape[-1]:
                image2 = pad_alpha(image2)
            else:
                image1 = pad_alpha(image1)
        if image1.shape[1:] != image2.shape[1:]:  # resize the second to the first's size
            image2 = resize_image(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
        return (torch.cat((image1, image2), dim=0),)


def _outpaint_feather(h: int, w: int, sides: tuple[int, int, int, int], feathering: int) -> torch.Tensor:
    """Mask values over the original image [h,w]: ((f - d) / f)^2 within f pixels of a padded side, else 0.

    `d` is the distance to the nearest side that gets padding (sides = top, bottom, left, right amounts).
    """
    top, bottom, left, right = sides
    if not (feathering > 0 and feathering * 2 < h and feathering * 2 < w):
        return torch.zeros((h, w), dtype=torch.float32)
    i = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w)
    j = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w)
    far_h, far_w = torch.full_like(i, h), torch.full_like(j, w)
    d = torch.minimum(
        torch.minimum(i if top else far_h, (h - i) if bottom else far_h),
        torch.minimum(j if left else far_w, (w - j) if right else far_w),
    )
    v = (feathering - d) / feathering
    return torch.where(d < feathering, v * v, torch.zeros_like(v)).to(torch.float32)


class ImagePadForOutpaint:
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "expand_image"
    CATEGORY = "image"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE",),
            "left": int_input(0, 0, step=8),
            "top": int_input(0, 0, step=8),
            "right": int_input(0, 0, step=8),
            "bottom": int_input(0, 0, step=8),
            "feathering": int_input(40, 0),
        }}

    def expand_image(self, image: torch.Tensor, left: int, top: int, right: int, bottom: int,
                     feathering: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, w, c = image.shape
        out = torch.full((b, h + top + bottom, w + left + right, c), 0.5, dtype=torch.float32)  # grey canvas
        out[:, top:top + h, left:left + w, :] = image
        mask = torch.ones((h + top + bottom, w + left + right), dtype=torch.float32)
        mask[top:top + h, left:left + w] = _outpaint_feather(h, w, (top, bottom, left, right), feathering)
        return (out, mask.unsqueeze(0))


class ImageCrop:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "crop"
    CATEGORY = "image/transform"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_images"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE",),
            "width": int_input(512, 1),
            "height": int_input(512, 1),
            "x": int_input(0, 0),
            "y": int_input(0, 0),
        }}

    def crop(self, image: torch.Tensor, width: int, height: int, x: int, y: int) -> tuple[torch.Tensor]:
        x, y = min(x, image.shape[2] - 1), min(y, image.shape[1] - 1)  # at least one pixel stays
        return (image[:, y:y + height, x:x + width, :],)


BLEND_MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]


def _soft_light_g(x: torch.Tensor) -> torch.Tensor:
    # the W3C soft-light helper D(x)
    return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))


def blend(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    """Separable blend modes of b over a (W3C compositing formulas; 'difference' is signed, as in ComfyUI)."""
    if mode == "normal":
        return b
    if mode == "multiply":
        return a * b
    if mode == "screen":
        return 1 - (1 - a) * (1 - b)
    if mode == "overlay":
        return torch.where(a <= 0.5, 2 * a * b, 1 - 2 * (1 - a) * (1 - b))
    if mode == "soft_light":
        return torch.where(b <= 0.5, a - (1 - 2 * b) * a * (1 - a), a + (2 * b - 1) * (_soft_light_g(a) - a))
    if mode == "difference":
        return a - b
    raise ValueError(f"blend_mode must be one of {', '.join(BLEND_MODES)}; got {mode!r}")


def image_alpha_fix(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Match channel counts: drop the source's extra channels, or give an RGB destination an opaque alpha."""
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., :destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        destination = pad_alpha(destination)
    return destination, source


class ImageBlend:
    INFO_V3 = True
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "blend_images"
    CATEGORY = "image/postprocessing"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_post_processing"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image1": ("IMAGE", {}),
            "image2": ("IMAGE", {}),
            "blend_factor": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}),
            "blend_mode": ("COMBO", {"multiselect": False, "options": list(BLEND_MODES)}),
        }}

    def blend_images(self, image1: torch.Tensor, image2: torch.Tensor, blend_factor: float,
                     blend_mode: str) -> tuple[torch.Tensor]:
        image1, image2 = image_alpha_fix(image1, image2)
        image2 = image2.to(image1.device)
        if image1.shape != image2.shape:  # fit image2 to image1 (center crop + bicubic)
            image2 = resize_image(image2, image1.shape[2], image1.shape[1], "bicubic", "center")
        blended = blend(image1, image2, blend_mode)
        return (torch.clamp(image1 * (1 - blend_factor) + blended * blend_factor, 0, 1),)


NODE_CLASS_MAPPINGS = {
    "SaveImage": SaveImage,
    "PreviewImage": PreviewImage,
    "LoadImage": LoadImage,
    "LoadImageMask": LoadImageMask,
    "EmptyImage": EmptyImage,
    "ImageScale": ImageScale,
    "ImageScaleBy": ImageScaleBy,
    "ImageScaleToTotalPixels": ImageScaleToTotalPixels,
    "ImageInvert": ImageInvert,
    "ImageBatch": ImageBatch,
    "ImagePadForOutpaint": ImagePadForOutpaint,
    "ImageCrop": ImageCrop,
    "ImageBlend": ImageBlend,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "SaveImage": "Save Image",
    "PreviewImage": "Preview Image",
    "LoadImage": "Load Image",
    "LoadImageMask": "Load Image (as Mask)",
    "ImageScale": "Upscale Image",
    "ImageScaleBy": "Upscale Image By",
    "ImageInvert": "Invert Image",
    "ImageBatch": "Batch Images",
    "ImagePadForOutpaint": "Pad Image for Outpainting",
    "ImageCrop": "Image Crop",
}
