"""ComfyUI's comfy_extras image nodes: compositing, noise, batches, filters, transforms, Canny, animated saving.

IMAGE = float32 [B,H,W,C] in 0..1. The pixel math lives in `comfy_core.image_filters`; these classes are the node
schemas (ComfyUI 0.3.64's, V1 or V3 as ComfyUI ships each) and the glue.
"""
from __future__ import annotations

import json
from typing import Any, ClassVar

import torch
from PIL import Image, PngImagePlugin

from .. import context, image_filters
from ..images import tensor_to_pil
from .image import LoadImage, check_choice, pad_alpha, resize_image
from .inputs import int_input
from .latent import composite_masked

_IMAGES = "comfy_extras.nodes_images"
_POST = "comfy_extras.nodes_post_processing"
_MORPHOLOGY = "comfy_extras.nodes_morphology"
_SEED_MAX = 0xFFFFFFFFFFFFFFFF


def _combo(options: list[str], **extra: Any) -> tuple[str, dict[str, Any]]:
    """A V3 combo input spec as ComfyUI reports it."""
    return ("COMBO", {**extra, "multiselect": False, "options": list(options)})


# --- image -------------------------------------------------------------------------------------------------------


class LoadImageOutput(LoadImage):
    DESCRIPTION = ("Loads an image from the output folder; the refresh button re-lists the folder and picks its "
                   "first (newest) image, handy for feeding a result back in.")
    EXPERIMENTAL = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        # no fixed list: the frontend fetches the choices from the route named here, as annotated "x.png [output]"
        return {"required": {"image": ("COMBO", {
            "image_upload": True, "image_folder": "output",
            "remote": {"route": "/internal/files/output", "refresh_button": True, "control_after_refresh": "first"},
        })}}


class ImageCompositeMasked:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "composite"
    CATEGORY = "image"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_mask"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "destination": ("IMAGE",),
                "source": ("IMAGE",),
                "x": int_input(0, 0),
                "y": int_input(0, 0),
                "resize_source": ("BOOLEAN", {"default": False}),
            },
            "optional": {"mask": ("MASK",)},
        }

    def composite(self, destination: torch.Tensor, source: torch.Tensor, x: int, y: int, resize_source: bool,
                  mask: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        if destination.shape[-1] < source.shape[-1]:
            source = source[..., :destination.shape[-1]]
        elif destination.shape[-1] > source.shape[-1]:  # an RGB source over RGBA pastes opaque pixels
            source = pad_alpha(source)
        canvas = destination.clone().movedim(-1, 1)  # [B,C,H,W]
        source = source.movedim(-1, 1)
        if x < 0 or y < 0:  # ComfyUI's slicing breaks here; paste the visible part at the edge instead
            source, mask = _crop_before_origin(source, mask, x, y, canvas.shape[-2:] if resize_source else None)
            if source.numel() == 0:
                return (canvas.movedim(1, -1),)
            x, y, resize_source = max(x, 0), max(y, 0), False
        out = composite_masked(canvas, source, x, y, mask, 1, resize_source)
        return (out.movedim(1, -1),)


def _crop_before_origin(source: torch.Tensor, mask: torch.Tensor | None, x: int, y: int,
                        size: torch.Size | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Drop the rows/columns of `source` [B,C,h,w] (and of `mask`, first stretched to the source) that a negative
    offset puts left of / above the canvas; `size` resizes the source first (resize_source)."""
    if size is not None:
        source = torch.nn.functional.interpolate(source, size=size, mode="bilinear")
    if mask is not None:
        mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).to(source)  # [B,1,h,w]
        mask = torch.nn.functional.interpolate(mask, size=source.shape[-2:], mode="bilinear")
        mask = mask[..., max(0, -y):, max(0, -x):]
    return source[..., max(0, -y):, max(0, -x):], mask


class ImageAddNoise:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "add_noise"
    CATEGORY = "image"
    RELATIVE_PYTHON_MODULE = _IMAGES

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE",),
            "seed": ("INT", {"default": 0, "min": 0, "max": _SEED_MAX, "control_after_generate": True,
                             "tooltip": "Seed of the gaussian noise; the same seed gives the same grain."}),
            "strength": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}),
        }}

    def add_noise(self, image: torch.Tensor, seed: int, strength: float) -> tuple[torch.Tensor]:
        # CPU generator seeded like torch.manual_seed(seed), so the grain matches ComfyUI's on any device
        generator = torch.Generator("cpu").manual_seed(seed)
        noise = torch.randn(image.size(), generator=generator, device="cpu").to(image)
        return (torch.clip(image + strength * noise, min=0.0, max=1.0),)


class GetImageSize:
    DESCRIPTION = "Outputs the width, height and batch size of an image."
    RETURN_TYPES = ("INT", "INT", "INT")
    RETURN_NAMES = ("width", "height", "batch_size")
    FUNCTION = "get_size"
    CATEGORY = "image"
    RELATIVE_PYTHON_MODULE = _IMAGES

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",)}, "hidden": {"unique_id": "UNIQUE_ID"}}

    def get_size(self, image: torch.Tensor, unique_id: str | None = None) -> tuple[int, int, int]:
        return (image.shape[2], image.shape[1], image.shape[0])


# --- image/batch -------------------------------------------------------------------------------------------------


class RebatchImages:
    INFO_V3 = True
    INPUT_IS_LIST = True
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_IS_LIST = (True,)
    FUNCTION = "rebatch"
    CATEGORY = "image/batch"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_rebatch"
    DISPLAY_NAME = "Rebatch Images"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"images": ("IMAGE", {}), "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})}}

    def rebatch(self, images: list[torch.Tensor], batch_size: list[int]) -> tuple[list[torch.Tensor]]:
        size = batch_size[0]
        frames = [frame[None] for batch in images for frame in batch]  # every image as its own [1,H,W,C]
        return ([torch.cat(frames[i:i + size], dim=0) for i in range(0, len(frames), size)],)


class RepeatImageBatch:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "repeat"
    CATEGORY = "image/batch"
    RELATIVE_PYTHON_MODULE = _IMAGES

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",), "amount": ("INT", {"default": 1, "min": 1, "max": 4096})}}

    def repeat(self, image: torch.Tensor, amount: int) -> tuple[torch.Tensor]:
        return (image.repeat((amount, 1, 1, 1)),)


class ImageFromBatch:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "frombatch"
    CATEGORY = "image/batch"
    RELATIVE_PYTHON_MODULE = _IMAGES

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE",),
            "batch_index": ("INT", {"default": 0, "min": 0, "max": 4095}),
            "length": ("INT", {"default": 1, "min": 1, "max": 4096}),
        }}

    def frombatch(self, image: torch.Tensor, batch_index: int, length: int) -> tuple[torch.Tensor]:
        start = min(image.shape[0] - 1, batch_index)  # an index past the end picks the last image
        length = min(image.shape[0] - start, length)
        return (image[start:start + length].clone(),)


class ImageRGBToYUV:
    INFO_V3 = True
    RETURN_TYPES = ("IMAGE", "IMAGE", "IMAGE")
    RETURN_NAMES = ("Y", "U", "V")
    FUNCTION = "execute"
    CATEGORY = "image/batch"
    RELATIVE_PYTHON_MODULE = _MORPHOLOGY

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE", {})}}

    def execute(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ycc = image_filters.rgb_to_ycbcr(image[..., :3])
        # each plane as a grey image of the input's shape (an expanded view, as in ComfyUI)
        return tuple(ycc[..., i:i + 1].expand_as(image) for i in range(3))


class ImageYUVToRGB:
    INFO_V3 = True
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "execute"
    CATEGORY = "image/batch"
    RELATIVE_PYTHON_MODULE = _MORPHOLOGY

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"Y": ("IMAGE", {}), "U": ("IMAGE", {}), "V": ("IMAGE", {})}}

    def execute(self, Y: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor]:
        planes = [p.mean(dim=-1, keepdim=True) for p in (Y, U, V)]  # grey images back to one channel each
        return (image_filters.ycbcr_to_rgb(torch.cat(planes, dim=-1)),)


# --- image/postprocessing ----------------------------------------------------------------------------------------


class ImageBlur:
    INFO_V3 = True
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "blur"
    CATEGORY = "image/postprocessing"
    RELATIVE_PYTHON_MODULE = _POST

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE", {}),
            "blur_radius": ("INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
            "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}),
        }}

    def blur(self, image: torch.Tensor, blur_radius: int, sigma: float) -> tuple[torch.Tensor]:
        if blur_radius == 0:
            return (image,)
        return (image_filters.gaussian_blur(image.movedim(-1, 1), blur_radius, sigma).movedim(1, -1),)


class ImageQuantize:
    INFO_V3 = True
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "quantize"
    CATEGORY = "image/postprocessing"
    RELATIVE_PYTHON_MODULE = _POST

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE", {}),
            "colors": ("INT", {"default": 256, "min": 1, "max": 256, "step": 1}),
            "dither": _combo(image_filters.DITHER_MODES),
        }}

    def quantize(self, image: torch.Tensor, colors: int, dither: str) -> tuple[torch.Tensor]:
        check_choice("dither", dither, image_filters.DITHER_MODES)
        result = torch.stack([image_filters.quantize(rgb, colors, dither) for rgb in image[..., :3]])
        if image.shape[-1] == 4:  # alpha passes through untouched
            result = torch.cat((result, image[..., 3:]), dim=-1)
        return (result,)


class ImageSharpen:
    INFO_V3 = True
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "sharpen"
    CATEGORY = "image/postprocessing"
    RELATIVE_PYTHON_MODULE = _POST

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE", {}),
            "sharpen_radius": ("INT", {"default": 1, "min": 1, "max": 31, "step": 1}),
            "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.01}),
            "alpha": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.01}),
        }}

    def sharpen(self, image: torch.Tensor, sharpen_radius: int, sigma: float, alpha: float) -> tuple[torch.Tensor]:
        if sharpen_radius == 0:
            return (image,)
        out = image_filters.sharpen(image.movedim(-1, 1), sharpen_radius, sigma, alpha)
        return (out.movedim(1, -1),)


class Morphology:
    INFO_V3 = True
    OPERATIONS = ("erode", "dilate", "open", "close", "gradient", "bottom_hat", "top_hat")
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "process"
    CATEGORY = "image/postprocessing"
    RELATIVE_PYTHON_MODULE = _MORPHOLOGY

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE", {}),
            "operation": _combo(cls.OPERATIONS),
            "kernel_size": ("INT", {"default": 3, "min": 3, "max": 999, "step": 1}),
        }}

    def process(self, image: torch.Tensor, operation: str, kernel_size: int) -> tuple[torch.Tensor]:
        check_choice("operation", operation, list(self.OPERATIONS))
        op = image_filters.MORPHOLOGY_OPS[operation]
        return (op(image.movedim(-1, 1), kernel_size).movedim(1, -1),)


# --- image/transform ---------------------------------------------------------------------------------------------

_STITCH_COLORS: dict[str, tuple[float, ...]] = {
    "white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0),
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
}


def _extend_batch(image: torch.Tensor, batch: int) -> torch.Tensor:
    """Pad a batch to `batch` images by repeating its last image."""
    missing = batch - image.shape[0]
    return torch.cat([image, image[-1:].repeat(missing, 1, 1, 1)]) if missing > 0 else image


def _center_pad(image: torch.Tensor, dim: int, size: int, value: float) -> torch.Tensor:
    """Pad [B,H,W,C] along dim 1 (height) or 2 (width) to `size`, the odd pixel going to the bottom/right."""
    extra = size - image.shape[dim]
    if extra <= 0:
        return image
    before, after = extra // 2, extra - extra // 2
    pad = (0, 0, 0, 0, before, after) if dim == 1 else (0, 0, before, after)
    return torch.nn.functional.pad(image, pad, mode="constant", value=value)


def _add_channels(image: torch.Tensor, channels: int) -> torch.Tensor:
    """Give an image with fewer channels extra channels of ones (an opaque alpha)."""
    missing = channels - image.shape[-1]
    if missing <= 0:
        return image
    return torch.cat([image, torch.ones(*image.shape[:-1], missing, device=image.device)], dim=-1)


def _spacer(shape: tuple[int, int, int, int], color: str, device: torch.device) -> torch.Tensor:
    """A [B,H,W,C] band of the spacing colour; a 4th channel is opaque."""
    band = torch.zeros(shape, device=device)
    rgb = _STITCH_COLORS[color]
    for i in range(min(3, shape[-1])):
        band[..., i] = rgb[i]
    if shape[-1] == 4:
        band[..., 3] = 1.0
    return band


class ImageStitch:
    DESCRIPTION = ("Joins image2 onto a side of image1 (right, down, left or up), optionally resizing it to fit and "
                   "separating the two with a coloured band. Without image2, image1 passes through.")
    DIRECTIONS = ("right", "down", "left", "up")
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "stitch"
    CATEGORY = "image/transform"
    RELATIVE_PYTHON_MODULE = _IMAGES

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image1": ("IMAGE",),
                "direction": (list(cls.DIRECTIONS), {"default": "right"}),
                "match_image_size": ("BOOLEAN", {"default": True}),
                "spacing_width": ("INT", {"default": 0, "min": 0, "max": 1024, "step": 2}),
                "spacing_color": (list(_STITCH_COLORS), {"default": "white"}),
            },
            "optional": {"image2": ("IMAGE",)},
        }

    def stitch(self, image1: torch.Tensor, direction: str, match_image_size: bool, spacing_width: int,
               spacing_color: str, image2: torch.Tensor | None = None) -> tuple[torch.Tensor]:
        if image2 is None:
            return (image1,)
        batch = max(image1.shape[0], image2.shape[0])
        image1, image2 = _extend_batch(image1, batch), _extend_batch(image2, batch)
        horizontal = direction in ("left", "right")
        if match_image_size:  # scale image2 (lanczos) to image1's height or width, keeping its aspect ratio
            h1, w1 = image1.shape[1:3]
            aspect = image2.shape[2] / image2.shape[1]
            size = (int(h1 * aspect), h1) if horizontal else (w1, int(w1 / aspect))
            image2 = resize_image(image2, size[0], size[1], "lanczos")
        else:  # centre the smaller one across the joint, padded with the spacing grey level (0 for colours)
            rgb = _STITCH_COLORS[spacing_color]
            value = rgb[0] if len(set(rgb)) == 1 else 0.0
            dim = 1 if horizontal else 2
            size = max(image1.shape[dim], image2.shape[dim])
            image1, image2 = _center_pad(image1, dim, size, value), _center_pad(image2, dim, size, value)
        channels = max(image1.shape[-1], image2.shape[-1])
        image1, image2 = _add_channels(image1, channels), _add_channels(image2, channels)
        parts = [image2, image1] if direction in ("left", "up") else [image1, image2]
        if spacing_width > 0:
            width = spacing_width + spacing_width % 2  # always even
            if horizontal:
                shape = (batch, max(image1.shape[1], image2.shape[1]), width, channels)
            else:
                shape = (batch, width, max(image1.shape[2], image2.shape[2]), channels)
            parts.insert(1, _spacer(shape, spacing_color, image1.device))
        return (torch.cat(parts, dim=2 if horizontal else 1),)


class ResizeAndPadImage:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "resize_and_pad"
    CATEGORY = "image/transform"
    RELATIVE_PYTHON_MODULE = _IMAGES

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE",),
            "target_width": int_input(512, 1),
            "target_height": int_input(512, 1),
            "padding_color": (["white", "black"],),
            "interpolation": (["area", "bicubic", "nearest-exact", "bilinear", "lanczos"],),
        }}

    def resize_and_pad(self, image: torch.Tensor, target_width: int, target_height: int, padding_color: str,
                       interpolation: str) -> tuple[torch.Tensor]:
        b, h, w, c = image.shape
        scale = min(target_width / w, target_height / h)  # fit inside, keep the aspect ratio
        new_w, new_h = int(w * scale), int(h * scale)
        resized = resize_image(image, new_w, new_h, interpolation)
        out = torch.full((b, target_height, target_width, c), 0.0 if padding_color == "black" else 1.0,
                         dtype=image.dtype, device=image.device)
        top, left = (target_height - new_h) // 2, (target_width - new_w) // 2
        out[:, top:top + new_h, left:left + new_w, :] = resized
        return (out,)


class ImageRotate:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "rotate"
    CATEGORY = "image/transform"
    RELATIVE_PYTHON_MODULE = _IMAGES

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",), "rotation": (["none", "90 degrees", "180 degrees", "270 degrees"],)}}

    def rotate(self, image: torch.Tensor, rotation: str) -> tuple[torch.Tensor]:
        turns = {"90": 1, "180": 2, "270": 3}.get(rotation.split(" ")[0], 0)
        return (torch.rot90(image, k=turns, dims=[2, 1]),)  # dims (W, H): clockwise


class ImageFlip:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "flip"
    CATEGORY = "image/transform"
    RELATIVE_PYTHON_MODULE = _IMAGES

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",), "flip_method": (["x-axis: vertically", "y-axis: horizontally"],)}}

    def flip(self, image: torch.Tensor, flip_method: str) -> tuple[torch.Tensor]:
        if flip_method.startswith("x"):
            return (torch.flip(image, dims=[1]),)  # upside down
        if flip_method.startswith("y"):
            return (torch.flip(image, dims=[2]),)  # mirror
        return (image,)


# --- image/upscaling, image/preprocessors --------------------------------------------------------------------------


class ImageScaleToMaxDimension:
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "upscale"
    CATEGORY = "image/upscaling"
    RELATIVE_PYTHON_MODULE = _IMAGES

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE",),
            # ComfyUI lists "bilinear" twice; kept so saved workflows and the schema match
            "upscale_method": (["area", "lanczos", "bilinear", "nearest-exact", "bilinear", "bicubic"],),
            "largest_size": int_input(512, 0),
        }}

    def upscale(self, image: torch.Tensor, upscale_method: str, largest_size: int) -> tuple[torch.Tensor]:
        height, width = image.shape[1], image.shape[2]
        if height > width:
            width, height = round(width / height * largest_size), largest_size
        elif width > height:
            width, height = largest_size, round(height / width * largest_size)
        else:
            width = height = largest_size
        return (resize_image(image, width, height, upscale_method),)


class Canny:
    INFO_V3 = True
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "detect_edge"
    CATEGORY = "image/preprocessors"
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_canny"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "image": ("IMAGE", {}),
            "low_threshold": ("FLOAT", {"default": 0.4, "min": 0.01, "max": 0.99, "step": 0.01}),
            "high_threshold": ("FLOAT", {"default": 0.8, "min": 0.01, "max": 0.99, "step": 0.01}),
        }}

    def detect_edge(self, image: torch.Tensor, low_threshold: float, high_threshold: float) -> tuple[torch.Tensor]:
        edges = image_filters.canny(image.movedim(-1, 1), low_threshold, high_threshold)  # [B,1,H,W]
        return (edges.repeat(1, 3, 1, 1).movedim(1, -1),)


# --- image/animation ---------------------------------------------------------------------------------------------


def _webp_exif(first: Image.Image, prompt: Any, extra_pnginfo: dict[str, Any] | None) -> Image.Exif:
    """ComfyUI's WEBP metadata: "prompt:<json>" in EXIF Model (0x0110), each extra_pnginfo entry as "key:<json>"
    from Make (0x010F) downwards."""
    exif = first.getexif()
    if prompt is not None:
        exif[0x0110] = f"prompt:{json.dumps(prompt)}"
    for offset, (key, value) in enumerate((extra_pnginfo or {}).items()):
        exif[0x010F - offset] = f"{key}:{json.dumps(value)}"
    return exif


def _apng_info(prompt: Any, extra_pnginfo: dict[str, Any] | None) -> PngImagePlugin.PngInfo:
    """ComfyUI's APNG metadata: private `comf` chunks "key\\0json" after the image data."""
    info = PngImagePlugin.PngInfo()
    entries = ([("prompt", prompt)] if prompt is not None else []) + list((extra_pnginfo or {}).items())
    for key, value in entries:
        info.add(b"comf", key.encode("latin-1") + b"\0" + json.dumps(value).encode("latin-1"), after_idat=True)
    return info


class _SaveAnimated:
    """Shared part of the animated savers: one file for the whole batch in the output folder."""

    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True
    CATEGORY = "image/animation"
    RELATIVE_PYTHON_MODULE = _IMAGES
    SUFFIX = ""

    @staticmethod
    def _common_inputs() -> dict[str, Any]:
        return {
            "images": ("IMAGE",),
            "filename_prefix": ("STRING", {"default": "ComfyUI"}),
            "fps": ("FLOAT", {"default": 6.0, "min": 0.01, "max": 1000.0, "step": 0.01}),
        }

    def _write(self, images: torch.Tensor, filename_prefix: str, prompt: Any, extra_pnginfo: Any,
               save: Any) -> dict[str, Any]:
        """Resolve the next file name, convert the frames, call `save(frames, path, prompt, extra)`."""
        ctx = context.current()
        if not ctx.config.save_metadata:
            prompt, extra_pnginfo = None, None
        target = ctx.storage.save_image_path(filename_prefix, images[0].shape[1], images[0].shape[0])
        frames = [tensor_to_pil(image) for image in images]
        file = f"{target.filename}_{target.counter:05}_.{self.SUFFIX}"
        save(frames, target.full_folder / file, prompt, extra_pnginfo)
        return {"filename": file, "subfolder": target.subfolder, "type": "output"}


class SaveAnimatedWEBP(_SaveAnimated):
    METHODS: ClassVar[dict[str, int]] = {"default": 4, "fastest": 0, "slowest": 6}
    SUFFIX = "webp"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                **cls._common_inputs(),
                "lossless": ("BOOLEAN", {"default": True}),
                "quality": ("INT", {"default": 80, "min": 0, "max": 100}),
                "method": (list(cls.METHODS),),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save_images(self, images: torch.Tensor, fps: float, filename_prefix: str, lossless: bool, quality: int,
                    method: str, prompt: Any = None, extra_pnginfo: Any = None) -> dict[str, Any]:
        def save(frames, path, prompt, extra):
            frames[0].save(path, save_all=True, duration=int(1000.0 / fps), append_images=frames[1:],
                           exif=_webp_exif(frames[0], prompt, extra), lossless=lossless, quality=quality,
                           method=self.METHODS.get(method))

        result = self._write(images, filename_prefix, prompt, extra_pnginfo, save)
        return {"ui": {"images": [result], "animated": (len(images) != 1,)}}


class SaveAnimatedPNG(_SaveAnimated):
    SUFFIX = "png"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {**cls._common_inputs(), "compress_level": ("INT", {"default": 4, "min": 0, "max": 9})},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save_images(self, images: torch.Tensor, fps: float, compress_level: int, filename_prefix: str = "ComfyUI",
                    prompt: Any = None, extra_pnginfo: Any = None) -> dict[str, Any]:
        def save(frames, path, prompt, extra):
            frames[0].save(path, format="PNG", pnginfo=_apng_info(prompt, extra), compress_level=compress_level,
                           save_all=True, duration=int(1000.0 / fps), append_images=frames[1:])

        result = self._write(images, filename_prefix, prompt, extra_pnginfo, save)
        return {"ui": {"images": [result], "animated": (True,)}}


NODE_CLASS_MAPPINGS = {
    "LoadImageOutput": LoadImageOutput,
    "ImageCompositeMasked": ImageCompositeMasked,
    "ImageAddNoise": ImageAddNoise,
    "GetImageSize": GetImageSize,
    "RebatchImages": RebatchImages,
    "RepeatImageBatch": RepeatImageBatch,
    "ImageFromBatch": ImageFromBatch,
    "ImageRGBToYUV": ImageRGBToYUV,
    "ImageYUVToRGB": ImageYUVToRGB,
    "ImageBlur": ImageBlur,
    "ImageQuantize": ImageQuantize,
    "ImageSharpen": ImageSharpen,
    "Morphology": Morphology,
    "ImageStitch": ImageStitch,
    "ResizeAndPadImage": ResizeAndPadImage,
    "ImageRotate": ImageRotate,
    "ImageFlip": ImageFlip,
    "ImageScaleToMaxDimension": ImageScaleToMaxDimension,
    "Canny": Canny,
    "SaveAnimatedWEBP": SaveAnimatedWEBP,
    "SaveAnimatedPNG": SaveAnimatedPNG,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadImageOutput": "Load Image (from Outputs)",
    "GetImageSize": "Get Image Size",
    "Morphology": "ImageMorphology",
    "ImageStitch": "Image Stitch",
}
