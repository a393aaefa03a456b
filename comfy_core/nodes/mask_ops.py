"""ComfyUI's comfy_extras mask nodes: colour keys, crops, mask arithmetic, feathering, growing, thresholds,
previews, and Porter-Duff compositing of images with alpha masks.

MASK = float [B,H,W] (a bare [H,W] is accepted) where 1 = selected; as in ComfyUI, a mask used as alpha is
inverted (mask 1 = transparent).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..upscale import common_upscale, repeat_to_batch_size
from .image import PreviewImage
from .inputs import MAX_RESOLUTION, int_input
from .mask import MaskToImage

_MASK = "comfy_extras.nodes_mask"
_COMPOSITING = "comfy_extras.nodes_compositing"


def _batched(mask: torch.Tensor) -> torch.Tensor:
    """[H,W] or [B,H,W] (or more leading dims) -> [B,H,W]."""
    return mask.reshape((-1, mask.shape[-2], mask.shape[-1]))


class ImageColorToMask:
    RETURN_TYPES = ("MASK",)
    FUNCTION = "image_to_mask"
    CATEGORY = "mask"
    RELATIVE_PYTHON_MODULE = _MASK

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE",), "color": int_input(0, 0, 0xFFFFFF, display="color")}}

    def image_to_mask(self, image: torch.Tensor, color: int) -> tuple[torch.Tensor]:
        rgb = (torch.clamp(image, 0, 1.0) * 255.0).round().to(torch.int)  # 8-bit levels, rounded
        packed = (rgb[..., 0] << 16) + (rgb[..., 1] << 8) + rgb[..., 2]  # 0xRRGGBB per pixel
        return ((packed == color).float(),)


class CropMask:
    RETURN_TYPES = ("MASK",)
    FUNCTION = "crop"
    CATEGORY = "mask"
    RELATIVE_PYTHON_MODULE = _MASK

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "mask": ("MASK",),
            "x": int_input(0, 0),
            "y": int_input(0, 0),
            "width": int_input(512, 1),
            "height": int_input(512, 1),
        }}

    def crop(self, mask: torch.Tensor, x: int, y: int, width: int, height: int) -> tuple[torch.Tensor]:
        # a window past the edge is cut short (possibly to zero pixels), as in ComfyUI
        return (_batched(mask)[:, y:y + height, x:x + width],)


class MaskComposite:
    OPERATIONS = ("multiply", "add", "subtract", "and", "or", "xor")
    RETURN_TYPES = ("MASK",)
    FUNCTION = "combine"
    CATEGORY = "mask"
    RELATIVE_PYTHON_MODULE = _MASK

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "destination": ("MASK",),
            "source": ("MASK",),
            "x": int_input(0, 0),
            "y": int_input(0, 0),
            "operation": (list(cls.OPERATIONS),),
        }}

    @staticmethod
    def _apply(dst: torch.Tensor, src: torch.Tensor, operation: str) -> torch.Tensor:
        if operation == "multiply":
            return dst * src
        if operation == "add":
            return dst + src
        if operation == "subtract":
            return dst - src
        logic = {"and": torch.bitwise_and, "or": torch.bitwise_or, "xor": torch.bitwise_xor}.get(operation)
        if logic is None:
            raise ValueError(f"operation must be one of {', '.join(MaskComposite.OPERATIONS)}; got {operation!r}")
        return logic(dst.round().bool(), src.round().bool()).float()  # logic on masks rounded to 0/1

    def combine(self, destination: torch.Tensor, source: torch.Tensor, x: int, y: int,
                operation: str) -> tuple[torch.Tensor]:
        output = _batched(destination).clone()
        source = _batched(source).to(output.device)
        if source.shape[0] not in (1, output.shape[0]):
            raise ValueError(f"a source batch of {source.shape[0]} masks cannot be combined into a destination "
                             f"batch of {output.shape[0]}")
        right = min(x + source.shape[-1], output.shape[-1])
        bottom = min(y + source.shape[-2], output.shape[-2])
        src = source[:, :max(0, bottom - y), :max(0, right - x)]  # the part of the source over the destination
        region = output[:, y:bottom, x:right]
        if region.numel() and src.numel():  # a single source mask applies to every destination mask
            output[:, y:bottom, x:right] = self._apply(region, src, operation)
        return (torch.clamp(output, 0.0, 1.0),)


class FeatherMask:
    RETURN_TYPES = ("MASK",)
    FUNCTION = "feather"
    CATEGORY = "mask"
    RELATIVE_PYTHON_MODULE = _MASK

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        sides = {side: int_input(0, 0) for side in ("left", "top", "right", "bottom")}
        return {"required": {"mask": ("MASK",), **sides}}

    def feather(self, mask: torch.Tensor, left: int, top: int, right: int, bottom: int) -> tuple[torch.Tensor]:
        output = _batched(mask).clone()
        h, w = output.shape[-2:]
        # the i-th pixel (0-based) from a feathered edge is scaled by (i + 1) / width of that edge's ramp
        for n, length, dim, from_end in ((min(left, w), w, 2, False), (min(right, w), w, 2, True),
                                         (min(top, h), h, 1, False), (min(bottom, h), h, 1, True)):
            if n == 0:
                continue
            ramp = torch.ones(length, dtype=output.dtype, device=output.device)
            ramp[:n] = torch.arange(1, n + 1, dtype=output.dtype, device=output.device) / n
            if from_end:
                ramp = ramp.flip(0)
            output *= ramp.view(1, 1, -1) if dim == 2 else ramp.view(1, -1, 1)
        return (output,)


def _grow_step(mask: torch.Tensor, grow: bool, tapered: bool) -> torch.Tensor:
    """One grey dilation (grow) or erosion of [B,H,W] over a 3×3 square, or a plus shape when `tapered`;
    pixels outside the mask are ignored (the same as scipy.ndimage's reflecting border for these shapes)."""
    x = mask if grow else -mask
    padded = F.pad(x[:, None], (1, 1, 1, 1), value=-torch.inf)[:, 0]  # [B,H+2,W+2]
    h, w = mask.shape[-2:]
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if not (tapered and dy and dx)]
    out = torch.stack([padded[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in offsets]).amax(0)
    return out if grow else -out


class GrowMask:
    RETURN_TYPES = ("MASK",)
    FUNCTION = "expand_mask"
    CATEGORY = "mask"
    RELATIVE_PYTHON_MODULE = _MASK

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "mask": ("MASK",),
            "expand": int_input(0, -MAX_RESOLUTION),
            "tapered_corners": ("BOOLEAN", {"default": True}),
        }}

    def expand_mask(self, mask: torch.Tensor, expand: int, tapered_corners: bool) -> tuple[torch.Tensor]:
        out = _batched(mask)
        for _ in range(abs(expand)):
            out = _grow_step(out, expand > 0, tapered_corners)
        return (out.clone() if expand == 0 else out,)


class ThresholdMask:
    RETURN_TYPES = ("MASK",)
    FUNCTION = "image_to_mask"
    CATEGORY = "mask"
    RELATIVE_PYTHON_MODULE = _MASK

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "mask": ("MASK",),
            "value": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01}),
        }}

    def image_to_mask(self, mask: torch.Tensor, value: float) -> tuple[torch.Tensor]:
        return ((mask > value).float(),)


class MaskPreview(PreviewImage):
    RELATIVE_PYTHON_MODULE = _MASK
    CATEGORY = "mask"
    FUNCTION = "execute"
    compress_level = 4  # ComfyUI's MaskPreview keeps SaveImage's level

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"mask": ("MASK",)}, "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def execute(self, mask: torch.Tensor, filename_prefix: str = "ComfyUI", prompt: Any = None,
                extra_pnginfo: dict[str, Any] | None = None) -> dict[str, Any]:
        (preview,) = MaskToImage().mask_to_image(mask)
        return self.save_images(preview, filename_prefix, prompt, extra_pnginfo)


# --- mask/compositing --------------------------------------------------------------------------------------------

PORTER_DUFF_MODES = ["ADD", "CLEAR", "DARKEN", "DST", "DST_ATOP", "DST_IN", "DST_OUT", "DST_OVER", "LIGHTEN",
                     "MULTIPLY", "OVERLAY", "SCREEN", "SRC", "SRC_ATOP", "SRC_IN", "SRC_OUT", "SRC_OVER", "XOR"]


def _porter_duff_premultiplied(mode: str, s: torch.Tensor, sa: torch.Tensor, d: torch.Tensor,
                               da: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(colour, alpha) of premultiplied source s/sa over destination d/da for one Porter-Duff / blend mode
    (Porter & Duff 1984; the blend modes as ComfyUI writes them)."""
    union = sa + da - sa * da
    table = {
        "ADD": lambda: (torch.clamp(s + d, 0, 1), torch.clamp(sa + da, 0, 1)),
        "CLEAR": lambda: (torch.zeros_like(d), torch.zeros_like(da)),
        "DARKEN": lambda: ((1 - da) * s + (1 - sa) * d + torch.minimum(s, d), union),
        "DST": lambda: (d, da),
        "DST_ATOP": lambda: (sa * d + (1 - da) * s, sa),
        "DST_IN": lambda: (d * sa, sa * da),
        "DST_OUT": lambda: ((1 - sa) * d, (1 - sa) * da),
        "DST_OVER": lambda: (d + (1 - da) * s, da + (1 - da) * sa),
        "LIGHTEN": lambda: ((1 - da) * s + (1 - sa) * d + torch.maximum(s, d), union),
        "MULTIPLY": lambda: (s * d, sa * da),
        "OVERLAY": lambda: (torch.where(2 * d < da, 2 * s * d, sa * da - 2 * (da - s) * (sa - d)), union),
        "SCREEN": lambda: (s + d - s * d, union),
        "SRC": lambda: (s, sa),
        "SRC_ATOP": lambda: (da * s + (1 - sa) * d, da),
        "SRC_IN": lambda: (s * da, sa * da),
        "SRC_OUT": lambda: ((1 - da) * s, (1 - da) * sa),
        "SRC_OVER": lambda: (s + (1 - sa) * d, sa + (1 - sa) * da),
        "XOR": lambda: ((1 - da) * s + (1 - sa) * d, (1 - da) * sa + (1 - sa) * da),
    }
    if mode not in table:
        raise ValueError(f"mode must be one of {', '.join(PORTER_DUFF_MODES)}; got {mode!r}")
    return table[mode]()


def porter_duff(src: torch.Tensor, src_mask: torch.Tensor, dst: torch.Tensor, dst_mask: torch.Tensor,
                mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite one image pair [H,W,C] with masks [H,W,1] (1 = transparent); returns (image, mask)."""
    sa, da = 1 - src_mask, 1 - dst_mask
    image, alpha = _porter_duff_premultiplied(mode, src * sa, sa, dst * da, da)
    image = torch.where(alpha > 1e-5, image / alpha, torch.zeros_like(image))  # back to straight colour
    return torch.clamp(image, 0, 1), 1 - alpha


def _fit(plane: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[h,w,C] -> [height,width,C] by bicubic resize with a centre crop."""
    return common_upscale(plane[None].permute(0, 3, 1, 2), width, height, "bicubic", "center").permute(0, 2, 3, 1)[0]


class PorterDuffImageComposite:
    INFO_V3 = True
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "composite"
    CATEGORY = "mask/compositing"
    RELATIVE_PYTHON_MODULE = _COMPOSITING
    DISPLAY_NAME = "Porter-Duff Image Composite"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "source": ("IMAGE", {}),
            "source_alpha": ("MASK", {}),
            "destination": ("IMAGE", {}),
            "destination_alpha": ("MASK", {}),
            "mode": ("COMBO", {"default": "DST", "multiselect": False, "options": list(PORTER_DUFF_MODES)}),
        }}

    def composite(self, source: torch.Tensor, source_alpha: torch.Tensor, destination: torch.Tensor,
                  destination_alpha: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        batch = min(len(source), len(source_alpha), len(destination), len(destination_alpha))
        images, masks = [], []
        for i in range(batch):  # the shortest input sets the batch size
            src, dst = source[i], destination[i]
            if src.shape[-1] != dst.shape[-1]:
                raise ValueError(f"source and destination need the same channel count; got {src.shape[-1]} "
                                 f"and {dst.shape[-1]}")
            src_a, dst_a = source_alpha[i][..., None], destination_alpha[i][..., None]  # [h,w,1]
            if dst_a.shape[:2] != dst.shape[:2]:
                dst_a = _fit(dst_a, dst.shape[0], dst.shape[1])
            if src.shape != dst.shape:
                src = _fit(src, dst.shape[0], dst.shape[1])
            if src_a.shape != dst_a.shape:
                src_a = _fit(src_a, dst_a.shape[0], dst_a.shape[1])
            image, mask = porter_duff(src, src_a, dst, dst_a, mode)
            images.append(image)
            masks.append(mask[..., 0])
        return (torch.stack(images), torch.stack(masks))


class SplitImageWithAlpha:
    INFO_V3 = True
    RETURN_TYPES = ("IMAGE", "MASK")
    FUNCTION = "split_image_with_alpha"
    CATEGORY = "mask/compositing"
    RELATIVE_PYTHON_MODULE = _COMPOSITING
    DISPLAY_NAME = "Split Image with Alpha"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE", {})}}

    def split_image_with_alpha(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = image[..., 3] if image.shape[-1] > 3 else torch.ones_like(image[..., 0])  # RGB: opaque
        return (image[..., :3], 1.0 - alpha)


class JoinImageWithAlpha:
    INFO_V3 = True
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "join_image_with_alpha"
    CATEGORY = "mask/compositing"
    RELATIVE_PYTHON_MODULE = _COMPOSITING
    DISPLAY_NAME = "Join Image with Alpha"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"image": ("IMAGE", {}), "alpha": ("MASK", {})}}

    def join_image_with_alpha(self, image: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor]:
        batch = max(len(image), len(alpha))
        image = repeat_to_batch_size(image, batch)
        alpha = repeat_to_batch_size(_batched(alpha), batch)
        alpha = F.interpolate(alpha[:, None], size=image.shape[1:3], mode="bilinear")[:, 0]  # [B,H,W]
        return (torch.cat((image[..., :3], (1.0 - alpha)[..., None]), dim=-1),)


NODE_CLASS_MAPPINGS = {
    "ImageColorToMask": ImageColorToMask,
    "CropMask": CropMask,
    "MaskComposite": MaskComposite,
    "FeatherMask": FeatherMask,
    "GrowMask": GrowMask,
    "ThresholdMask": ThresholdMask,
    "MaskPreview": MaskPreview,
    "PorterDuffImageComposite": PorterDuffImageComposite,
    "SplitImageWithAlpha": SplitImageWithAlpha,
    "JoinImageWithAlpha": JoinImageWithAlpha,
}
