"""Latent arithmetic, batching, transforms, latent operations, .latent files and inpaint-model conditioning.

ComfyUI's comfy_extras.nodes_latent / nodes_rebatch / nodes_sd3 families and the latent nodes of its nodes.py.
Every node returns a shallow copy of its first LATENT input, so `noise_mask` and `batch_index` of that input travel
on unchanged (as in ComfyUI) unless the node says otherwise. A second latent of another size is resized to the first
(bilinear, center crop) and, for the arithmetic nodes, tiled or cut to the first's batch size.
"""
from __future__ import annotations

import json
from typing import Any

import torch

from .. import context
from ..errors import InputFileError, NodeExecutionError
from ..upscale import common_upscale, repeat_to_batch_size
from .inputs import MAX_RESOLUTION, combo_input, int_input
from .latent_operations import LatentSharpen, ReinhardTonemap, with_cfg_operation
from .vae import check_vae, inpaint_pixels, interrupt_check

Latent = dict[str, Any]

LATENT_FORMAT_VERSION_KEY = "latent_format_version_0"
LEGACY_LATENT_SCALE = 1.0 / 0.18215  # files without the version key hold latents scaled by SD1's factor


def match_latent(target: torch.Tensor, latent: torch.Tensor, repeat_batch: bool = True) -> torch.Tensor:
    """`latent` resized to `target`'s spatial size (bilinear, center crop) and, with `repeat_batch`, tiled or cut
    to its batch size (ComfyUI's reshape_latent_to)."""
    if latent.shape[1:] != target.shape[1:]:
        if latent.ndim != target.ndim or latent.shape[1] != target.shape[1]:
            raise NodeExecutionError(f"latents of shapes {list(target.shape)} and {list(latent.shape)} cannot be "
                                     "combined: their channel counts (or dimensions) differ")
        latent = common_upscale(latent, target.shape[-1], target.shape[-2], "bilinear", "center")
    return repeat_to_batch_size(latent, target.shape[0]) if repeat_batch else latent


class _V3LatentNode:
    """Class attributes shared by the V3 nodes of comfy_extras.nodes_latent."""

    RETURN_TYPES: tuple[str, ...] = ("LATENT",)
    FUNCTION = "execute"
    CATEGORY = "latent/advanced"
    INFO_V3 = True
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_latent"


def _two_latents() -> dict[str, Any]:
    return {"samples1": ("LATENT", {}), "samples2": ("LATENT", {})}


class LatentAdd(_V3LatentNode):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": _two_latents()}

    def execute(self, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        s1 = samples1["samples"]
        return ({**samples1, "samples": s1 + match_latent(s1, samples2["samples"])},)


class LatentSubtract(_V3LatentNode):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": _two_latents()}

    def execute(self, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        s1 = samples1["samples"]
        return ({**samples1, "samples": s1 - match_latent(s1, samples2["samples"])},)


class LatentMultiply(_V3LatentNode):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT", {}),
                             "multiplier": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})}}

    def execute(self, samples: Latent, multiplier: float) -> tuple[Latent]:
        return ({**samples, "samples": samples["samples"] * multiplier},)


def _channel_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the channel axis: [B,C,H,W] -> [B,H,W]."""
    return torch.linalg.vector_norm(x, dim=1)


class LatentInterpolate(_V3LatentNode):
    """Interpolates directions and magnitudes (per pixel, over channels) separately.

    As in ComfyUI, the [B,H,W] norms divide the [B,C,H,W] latents by plain broadcasting, which lines the batch axis up
    with the channel axis: batch 1 is the exact per-pixel formula, batch == channels keeps ComfyUI's numbers, and any
    other batch size (where ComfyUI fails) is refused with a clear error."""

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {**_two_latents(),
                             "ratio": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01})}}

    def execute(self, samples1: Latent, samples2: Latent, ratio: float) -> tuple[Latent]:
        s1 = samples1["samples"]
        s2 = match_latent(s1, samples2["samples"])
        m1, m2 = _channel_norm(s1), _channel_norm(s2)
        try:
            torch.broadcast_shapes(s1.shape, m1.shape)
        except RuntimeError as exc:
            raise NodeExecutionError(f"LatentInterpolate works on a batch of 1 (or of as many latents as channels); "
                                     f"got latents of shape {list(s1.shape)}") from exc
        t = torch.nan_to_num(s1 / m1) * ratio + torch.nan_to_num(s2 / m2) * (1.0 - ratio)
        direction = torch.nan_to_num(t / _channel_norm(t))
        return ({**samples1, "samples": direction * (m1 * ratio + m2 * (1.0 - ratio))},)


_CONCAT_DIMS = ["x", "-x", "y", "-y", "t", "-t"]
_AXES = {"x": -1, "y": -2, "t": -3}  # from the end: width, height, then the axis before them


class LatentConcat(_V3LatentNode):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {**_two_latents(), "dim": combo_input(_CONCAT_DIMS)}}

    def execute(self, samples1: Latent, samples2: Latent, dim: str) -> tuple[Latent]:
        if dim not in _CONCAT_DIMS:
            raise NodeExecutionError(f"LatentConcat: unknown dim {dim!r}; expected one of {', '.join(_CONCAT_DIMS)}")
        s1 = samples1["samples"]
        s2 = repeat_to_batch_size(samples2["samples"], s1.shape[0])
        parts = (s2, s1) if dim.startswith("-") else (s1, s2)  # "-x": the second latent goes first (left)
        try:
            joined = torch.cat(parts, dim=_AXES[dim.lstrip("-")])
        except RuntimeError as exc:
            raise NodeExecutionError(f"LatentConcat along {dim}: shapes {list(s1.shape)} and {list(s2.shape)} "
                                     "differ on another axis") from exc
        return ({**samples1, "samples": joined},)


class LatentCut(_V3LatentNode):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "samples": ("LATENT", {}),
            "dim": combo_input(["x", "y", "t"]),
            "index": int_input(0, -MAX_RESOLUTION),
            "amount": int_input(1, 1),
        }}

    def execute(self, samples: Latent, dim: str, index: int, amount: int) -> tuple[Latent]:
        if dim not in _AXES:
            raise NodeExecutionError(f"LatentCut: unknown dim {dim!r}; expected x, y or t")
        s = samples["samples"]
        axis = s.ndim + _AXES[dim]
        size = s.shape[axis]
        if index >= 0:  # clamp into the axis; a negative index counts from the end
            index = min(index, size - 1)
            amount = min(size - index, amount)
        else:
            index = max(index, -size)
            amount = min(-index, amount)
        return ({**samples, "samples": torch.narrow(s, axis, index, amount)},)


class LatentBatchSeedBehavior(_V3LatentNode):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT", {}),
                             "seed_behavior": combo_input(["random", "fixed"], default="fixed")}}

    def execute(self, samples: Latent, seed_behavior: str) -> tuple[Latent]:
        out = dict(samples)
        if seed_behavior == "random":  # each latent gets its own noise again
            out.pop("batch_index", None)
        elif seed_behavior == "fixed":  # every latent gets the noise of the first one
            first = samples.get("batch_index", [0])[0]
            out["batch_index"] = [first] * samples["samples"].shape[0]
        return (out,)


class LatentBatch(_V3LatentNode):
    CATEGORY = "latent/batch"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": _two_latents()}

    def execute(self, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        s1 = samples1["samples"]
        s2 = match_latent(s1, samples2["samples"], repeat_batch=False)
        index = (samples1.get("batch_index", list(range(s1.shape[0])))
                 + samples2.get("batch_index", list(range(s2.shape[0]))))
        return ({**samples1, "samples": torch.cat((s1, s2), dim=0), "batch_index": index},)


# --- latent operations ------------------------------------------------------------------------------------------

class _OperationNode(_V3LatentNode):
    CATEGORY = "latent/advanced/operations"
    EXPERIMENTAL = True


class LatentApplyOperation(_OperationNode):
    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT", {}), "operation": ("LATENT_OPERATION", {})}}

    def execute(self, samples: Latent, operation: Any) -> tuple[Latent]:
        return ({**samples, "samples": operation(latent=samples["samples"])},)


class LatentApplyOperationCFG(_OperationNode):
    RETURN_TYPES = ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"model": ("MODEL", {}), "operation": ("LATENT_OPERATION", {})}}

    def execute(self, model: Any, operation: Any) -> tuple[Any]:
        patched = model.clone()
        patched.model_options = with_cfg_operation(patched.model_options, operation)
        return (patched,)


class LatentOperationTonemapReinhard(_OperationNode):
    RETURN_TYPES = ("LATENT_OPERATION",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"multiplier": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01})}}

    def execute(self, multiplier: float) -> tuple[ReinhardTonemap]:
        return (ReinhardTonemap(multiplier),)


class LatentOperationSharpen(_OperationNode):
    RETURN_TYPES = ("LATENT_OPERATION",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "sharpen_radius": ("INT", {"default": 9, "min": 1, "max": 31, "step": 1}),
            "sigma": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 10.0, "step": 0.1}),
            "alpha": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 5.0, "step": 0.01}),
        }}

    def execute(self, sharpen_radius: int, sigma: float, alpha: float) -> tuple[LatentSharpen]:
        return (LatentSharpen(sharpen_radius, sigma, alpha),)


# --- rebatching -------------------------------------------------------------------------------------------------

class _Run:
    """Latents of one spatial size gathered for rebatching: samples [N,C,H,W], masks [N,1,h,w], noise indices."""

    def __init__(self, samples: torch.Tensor, masks: torch.Tensor, indices: list[int]):
        self.samples, self.masks, self.indices = samples, masks, indices

    def take(self, n: int) -> Latent:
        """The first n entries as a LATENT (all of them when fewer); they leave the run."""
        out = {"samples": self.samples[:n], "noise_mask": self.masks[:n], "batch_index": self.indices[:n]}
        self.samples, self.masks, self.indices = self.samples[n:], self.masks[n:], self.indices[n:]
        return out


def _rebatch_entry(latent: Latent, offset: int) -> _Run:
    """One input LATENT as a run; a missing mask is all ones at pixel size, a short mask list is tiled."""
    samples = latent["samples"]
    b = samples.shape[0]
    mask = latent.get("noise_mask")
    if mask is None:
        mask = torch.ones((b, 1, samples.shape[2] * 8, samples.shape[3] * 8))
    if mask.shape[0] < b:
        mask = mask.repeat((b - 1) // mask.shape[0] + 1, 1, 1, 1)[:b]
    indices = latent.get("batch_index", [offset + i for i in range(b)])
    return _Run(samples, mask, list(indices))


def _join(first: _Run, second: _Run) -> _Run:
    try:
        return _Run(torch.cat((first.samples, second.samples)), torch.cat((first.masks, second.masks)),
                    first.indices + second.indices)
    except RuntimeError as exc:
        raise NodeExecutionError(f"RebatchLatents: latents {list(first.samples.shape)} and "
                                 f"{list(second.samples.shape)} (noise masks {list(first.masks.shape)} and "
                                 f"{list(second.masks.shape)}) cannot share a batch") from exc


class RebatchLatents:
    """Regroups a list of latent batches into batches of `batch_size` (ComfyUI's LatentRebatch): latents are
    gathered in order, a change of spatial size closes the current group early, and a batch whose noise mask is
    all ones loses it."""

    RETURN_TYPES = ("LATENT",)
    OUTPUT_IS_LIST = (True,)
    INPUT_IS_LIST = True
    FUNCTION = "rebatch"
    CATEGORY = "latent/batch"
    INFO_V3 = True
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_rebatch"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"latents": ("LATENT", {}), "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})}}

    def rebatch(self, latents: list[Latent], batch_size: list[int]) -> tuple[list[Latent]]:
        size = batch_size[0]
        out: list[Latent] = []
        current: _Run | None = None
        processed = 0
        for latent in latents:
            entry = _rebatch_entry(latent, processed)
            processed += len(entry.indices)
            if current is None or current.samples.shape[0] == 0:
                current = entry
            elif entry.samples.shape[-2:] != current.samples.shape[-2:]:
                out.append(current.take(size))  # as ComfyUI: only one batch of the old size is kept
                current = entry
            else:
                current = _join(current, entry)
            if current.samples.shape[0] > size:
                for _ in range(current.samples.shape[0] // size):
                    out.append(current.take(size))
        if current is not None and current.samples.shape[0] > 0:
            out.append(current.take(size))
        for batch in out:
            if batch["noise_mask"].mean() == 1.0:
                del batch["noise_mask"]
        return (out,)


# --- transforms (nodes.py) --------------------------------------------------------------------------------------

_ROTATIONS = {"none": 0, "90 degrees": 1, "180 degrees": 2, "270 degrees": 3}


class LatentRotate:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "rotate"
    CATEGORY = "latent/transform"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",), "rotation": (list(_ROTATIONS),)}}

    def rotate(self, samples: Latent, rotation: str) -> tuple[Latent]:
        quarter_turns = _ROTATIONS.get(rotation, 0)  # clockwise: rot90 from the W axis towards the H axis
        return ({**samples, "samples": torch.rot90(samples["samples"], k=quarter_turns, dims=[3, 2])},)


class LatentFlip:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "flip"
    CATEGORY = "latent/transform"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",), "flip_method": (["x-axis: vertically", "y-axis: horizontally"],)}}

    def flip(self, samples: Latent, flip_method: str) -> tuple[Latent]:
        axis = 2 if flip_method.startswith("x") else 3 if flip_method.startswith("y") else None
        if axis is None:
            return (dict(samples),)
        return ({**samples, "samples": torch.flip(samples["samples"], dims=[axis])},)


class LatentCrop:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "crop"
    CATEGORY = "latent/transform"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",), "width": int_input(512, 64, step=8),
                             "height": int_input(512, 64, step=8), "x": int_input(0, 0, step=8),
                             "y": int_input(0, 0, step=8)}}

    def crop(self, samples: Latent, width: int, height: int, x: int, y: int) -> tuple[Latent]:
        s = samples["samples"]
        # pixel units -> latent pixels; the corner stays at least 8 latent pixels (64 px) inside the latent
        x, y = min(x // 8, s.shape[3] - 8), min(y // 8, s.shape[2] - 8)
        return ({**samples, "samples": s[:, :, y:y + height // 8, x:x + width // 8]},)


class LatentBlend:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "blend"
    CATEGORY = "_for_testing"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples1": ("LATENT",), "samples2": ("LATENT",),
                             "blend_factor": ("FLOAT", {"default": 0.5, "min": 0, "max": 1, "step": 0.01})}}

    def blend(self, samples1: Latent, samples2: Latent, blend_factor: float) -> tuple[Latent]:
        s1, s2 = samples1["samples"], samples2["samples"]
        if s1.shape != s2.shape:  # only the spatial size is matched (bicubic, center crop); batches broadcast
            s2 = common_upscale(s2, s1.shape[3], s1.shape[2], "bicubic", "center")
        try:
            blended = s1 * blend_factor + s2 * (1 - blend_factor)
        except RuntimeError as exc:
            raise NodeExecutionError(f"LatentBlend: latents of shapes {list(s1.shape)} and {list(s2.shape)} cannot "
                                     "be blended (batch sizes must be equal or 1, channels equal)") from exc
        return ({**samples1, "samples": blended},)


# --- files ------------------------------------------------------------------------------------------------------

def _latent_files() -> list[str]:
    ctx = context.current_or_none()
    if ctx is None:  # object_info outside an engine: no folder to list
        return []
    return [name for name in ctx.storage.list_input_files() if name.endswith(".latent")]


class SaveLatent:
    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "_for_testing"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"samples": ("LATENT",), "filename_prefix": ("STRING", {"default": "latents/ComfyUI"})},
                "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def save(self, samples: Latent, filename_prefix: str = "ComfyUI", prompt: Any = None,
             extra_pnginfo: dict[str, Any] | None = None) -> dict[str, Any]:
        from safetensors.torch import save_file

        ctx = context.current()
        target = ctx.storage.save_image_path(filename_prefix)
        metadata = None
        if ctx.config.save_metadata:  # ComfyUI's metadata: JSON text per key, "" when there is no prompt
            metadata = {"prompt": "" if prompt is None else json.dumps(prompt)}
            metadata.update({key: json.dumps(value) for key, value in (extra_pnginfo or {}).items()})
        file = f"{target.filename}_{target.counter:05}_.latent"
        tensors = {"latent_tensor": samples["samples"].contiguous(), LATENT_FORMAT_VERSION_KEY: torch.tensor([])}
        save_file(tensors, str(target.full_folder / file), metadata=metadata)
        return {"ui": {"latents": [{"filename": file, "subfolder": target.subfolder, "type": "output"}]}}


class LoadLatent:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "load"
    CATEGORY = "_for_testing"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"latent": [_latent_files()]}}

    def load(self, latent: str) -> tuple[Latent]:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = context.current().storage.resolve_annotated(latent, "input", must_exist=True)
        try:
            tensors = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise InputFileError(f"{latent} is not a readable .latent (safetensors) file: {exc}") from exc
        if "latent_tensor" not in tensors:
            raise InputFileError(f"{latent} holds no 'latent_tensor'; it is not a latent saved by SaveLatent")
        scale = 1.0 if LATENT_FORMAT_VERSION_KEY in tensors else LEGACY_LATENT_SCALE
        return ({"samples": tensors["latent_tensor"].float() * scale},)

    @classmethod
    def IS_CHANGED(cls, latent: str) -> str:
        from ..storage import sha256_file

        return sha256_file(context.current().storage.resolve_annotated(latent, "input", must_exist=True))

    @classmethod
    def VALIDATE_INPUTS(cls, latent: str) -> bool | str:
        if not isinstance(latent, str) or not context.current().storage.exists_annotated(latent, "input"):
            return f"Invalid latent file: {latent}"
        return True


# --- SD3 and inpaint models -------------------------------------------------------------------------------------

class EmptySD3LatentImage:
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "generate"
    CATEGORY = "latent/sd3"
    INFO_V3 = True
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_sd3"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"width": int_input(1024, 16, step=16), "height": int_input(1024, 16, step=16),
                             "batch_size": ("INT", {"default": 1, "min": 1, "max": 4096})}}

    def generate(self, width: int, height: int, batch_size: int = 1) -> tuple[Latent]:
        return ({"samples": torch.zeros([batch_size, 16, height // 8, width // 8])},)  # SD3's 16-channel latent


class InpaintModelConditioning:
    """Conditioning for inpaint models: the image with the masked area made grey, encoded, and the mask travel
    on both conditionings (`concat_latent_image`, `concat_mask`: the model's extra input channels); the latent is
    the whole image encoded, with the mask as its noise mask when asked."""

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    FUNCTION = "encode"
    CATEGORY = "conditioning/inpaint"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "vae": ("VAE",), "pixels": ("IMAGE",),
            "mask": ("MASK",),
            "noise_mask": ("BOOLEAN", {"default": True, "tooltip": (
                "Also set the mask as the latent's noise mask, so that only the masked area is sampled; helps some "
                "models and hurts others.")}),
        }}

    def encode(self, positive: list, negative: list, pixels: torch.Tensor, vae: Any, mask: torch.Tensor,
               noise_mask: bool = True) -> tuple[list, list, Latent]:
        from .conditioning import set_values

        check_vae(vae)
        grey, mask = inpaint_pixels(pixels, mask, vae.downscale_ratio)
        concat_latent = vae.encode(grey, interrupt_check())
        latent: Latent = {"samples": vae.encode(pixels, interrupt_check())}  # the encoder center-crops as above
        if noise_mask:
            latent["noise_mask"] = mask
        values = {"concat_latent_image": concat_latent, "concat_mask": mask}
        return set_values(positive, values), set_values(negative, values), latent


NODE_CLASS_MAPPINGS = {
    "LatentAdd": LatentAdd,
    "LatentSubtract": LatentSubtract,
    "LatentMultiply": LatentMultiply,
    "LatentInterpolate": LatentInterpolate,
    "LatentConcat": LatentConcat,
    "LatentCut": LatentCut,
    "LatentBatchSeedBehavior": LatentBatchSeedBehavior,
    "LatentBatch": LatentBatch,
    "LatentApplyOperation": LatentApplyOperation,
    "LatentApplyOperationCFG": LatentApplyOperationCFG,
    "LatentOperationTonemapReinhard": LatentOperationTonemapReinhard,
    "LatentOperationSharpen": LatentOperationSharpen,
    "RebatchLatents": RebatchLatents,
    "LatentRotate": LatentRotate,
    "LatentFlip": LatentFlip,
    "LatentCrop": LatentCrop,
    "LatentBlend": LatentBlend,
    "SaveLatent": SaveLatent,
    "LoadLatent": LoadLatent,
    "EmptySD3LatentImage": EmptySD3LatentImage,
    "InpaintModelConditioning": InpaintModelConditioning,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "RebatchLatents": "Rebatch Latents",
    "LatentRotate": "Rotate Latent",
    "LatentFlip": "Flip Latent",
    "LatentCrop": "Crop Latent",
    "LatentBlend": "Latent Blend",
}
