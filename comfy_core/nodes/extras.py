"""More SD nodes that workflows use: SaveImageWebsocket, Perp-Neg (MODEL patch and GUIDER), InstructPix2Pix
conditioning, the T2I style model, hypernetworks, token merging (ToMe), GLIGEN text boxes, CLIPTextEncodeControlnet
and WebcamCapture, with ComfyUI 0.3.64's schemas.

SaveImageWebsocket sends each image to the prompt's client as the binary websocket frame ComfyUI's
`websockets_api_example_ws_images.py` reads (BE u32 1, BE u32 2 = PNG, PNG bytes), through the progress channel as
ComfyUI does (progress value = image index), whatever the preview method; the frame is never dropped as lossy.
"""
from __future__ import annotations

import io
import time
from typing import Any

import torch

from .. import context
from ..events import OutputImage
from ..images import tensor_to_pil
from ..models.gligen import Gligen, load_gligen
from ..models.hypernetwork import load_hypernetwork
from ..models.style_model import StyleModel, load_style_model
from ..models.tome import TomePatch
from ..models.unet_patches import add_block_patch
from ..sampling.common import CFG_FUNCTION
from ..sampling.perp_neg import PerpNegGuider, perp_neg_cfg_function
from .image import LoadImage
from .inputs import MAX_RESOLUTION, int_input
from .loaders import device_dtype, model_cache, model_files, model_path
from .sampling import cfg_options
from .text import prompt_text, require_clip
from .vae import check_vae, interrupt_check

PERPNEG_MODULE = "comfy_extras.nodes_perpneg"


def png_frame_image(image: torch.Tensor) -> bytes:
    """One IMAGE row [H,W,C] as the PNG ComfyUI sends over the websocket (compress level 1, no metadata)."""
    out = io.BytesIO()
    tensor_to_pil(image).save(out, format="PNG", compress_level=1)
    return out.getvalue()


class SaveImageWebsocket:
    RELATIVE_PYTHON_MODULE = "custom_nodes.websocket_image_save"
    CATEGORY = "api/image"
    RETURN_TYPES = ()
    FUNCTION = "save_images"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)}}

    @classmethod
    def IS_CHANGED(cls, images):
        return time.time()  # ComfyUI's node: the images are sent again on every run

    def save_images(self, images: torch.Tensor):
        ctx = context.current()
        total = images.shape[0]
        for index in range(total):
            ctx.progress(index, total, OutputImage(png_frame_image(images[index])))
        return {}


# -- Perp-Neg -----------------------------------------------------------------------------------------------------
def _neg_scale() -> tuple[str, dict[str, Any]]:
    return ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.01})


class PerpNeg:
    INFO_V3 = True
    DISPLAY_NAME = "Perp-Neg (DEPRECATED by PerpNegGuider)"
    DEPRECATED = True
    EXPERIMENTAL = True
    RELATIVE_PYTHON_MODULE = PERPNEG_MODULE
    CATEGORY = "_for_testing"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL", {}), "empty_conditioning": ("CONDITIONING", {}),
                             "neg_scale": _neg_scale()}}

    def patch(self, model, empty_conditioning: list, neg_scale: float):
        m = model.clone()
        m.model_options[CFG_FUNCTION] = perp_neg_cfg_function(empty_conditioning, float(neg_scale))
        return (m,)


class PerpNegGuiderNode:
    INFO_V3 = True
    EXPERIMENTAL = True
    RELATIVE_PYTHON_MODULE = PERPNEG_MODULE
    CATEGORY = "_for_testing"
    RETURN_TYPES = ("GUIDER",)
    FUNCTION = "get_guider"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL", {}), "positive": ("CONDITIONING", {}),
                             "negative": ("CONDITIONING", {}), "empty_conditioning": ("CONDITIONING", {}),
                             "cfg": ("FLOAT", cfg_options()), "neg_scale": _neg_scale()}}

    def get_guider(self, model, positive, negative, empty_conditioning, cfg, neg_scale):
        guider = PerpNegGuider(model)
        guider.set_conds(positive, negative, empty_conditioning)
        guider.set_cfg(cfg, neg_scale)
        return (guider,)


# -- conditioning -------------------------------------------------------------------------------------------------
def _with_extras(conditioning: list, **extras: Any) -> list:
    """A copy of a CONDITIONING list with `extras` set on every entry (the tensors are shared, not copied)."""
    return [[cond, {**options, **extras}] for cond, options in conditioning]


class InstructPixToPixConditioning:
    INFO_V3 = True
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_ip2p"
    CATEGORY = "conditioning/instructpix2pix"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")
    RETURN_NAMES = ("positive", "negative", "latent")
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}),
                             "vae": ("VAE", {}), "pixels": ("IMAGE", {})}}

    def encode(self, positive: list, negative: list, pixels: torch.Tensor, vae: Any):
        check_vae(vae)
        height, width = (pixels.shape[1] // 8) * 8, (pixels.shape[2] // 8) * 8
        top, left = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2  # centred crop to multiples of 8
        pixels = pixels[:, top:top + height, left:left + width, :3]
        source = vae.encode(pixels, interrupt_check())  # [B,4,H/8,W/8], unscaled (the UNet's c_concat)
        return (_with_extras(positive, concat_latent_image=source),
                _with_extras(negative, concat_latent_image=source),
                {"samples": torch.zeros_like(source)})


class CLIPTextEncodeControlnet:
    INFO_V3 = True
    EXPERIMENTAL = True
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_cond"
    CATEGORY = "_for_testing/conditioning"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        text = prompt_text()
        return {"required": {"clip": ("CLIP", {}), "conditioning": ("CONDITIONING", {}), "text": text}}

    def encode(self, clip, conditioning: list, text: str):
        clip = require_clip(clip, (), "CLIPTextEncodeControlnet")
        cond, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        return (_with_extras(conditioning, cross_attn_controlnet=cond, pooled_output_controlnet=pooled),)


def _load_float32(kind: str, name: str, loader):
    """A small auxiliary model file through the engine's model cache, kept in float32 on the engine's device."""
    path = model_path(kind, name)
    device, _ = device_dtype()
    return model_cache().get_custom(path, kind, lambda: loader(path, device=device), device=device,
                                    dtype=torch.float32)


# -- style model (T2I-Adapter style) ------------------------------------------------------------------------------
class StyleModelLoader:
    CATEGORY = "loaders"
    RETURN_TYPES = ("STYLE_MODEL",)
    FUNCTION = "load_style_model"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"style_model_name": (model_files("style_models"),)}}

    def load_style_model(self, style_model_name: str):
        return (_load_float32("style_models", style_model_name, load_style_model),)


def _style_attention_mask(keys: dict[str, Any], txt: torch.Tensor, n_style: int,
                          bias: float) -> tuple[torch.Tensor, Any]:
    """The conditioning's attention bias grown by `n_style` columns/rows after the text tokens, those set to
    log(bias) (ComfyUI's layout: [text | style | reference image] on both axes; float16)."""
    batch, n_txt = txt.shape[:2]
    ref_shape = keys.get("attention_mask_img_shape", (1, 1))
    n_ref = ref_shape[0] * ref_shape[1]
    mask = keys.get("attention_mask")
    if mask is None:
        mask = torch.zeros((batch, n_txt + n_ref, n_txt + n_ref), dtype=torch.float16)
    if mask.dtype == torch.bool:
        mask = torch.log(mask.to(torch.float16))  # True -> 0, False -> -inf
    total = n_txt + n_style + n_ref
    grown = torch.zeros((batch, total, total), dtype=torch.float16)  # [B, T, T]
    after = n_txt + n_style
    grown[:, :n_txt, :n_txt] = mask[:, :n_txt, :n_txt]
    grown[:, :n_txt, after:] = mask[:, :n_txt, n_txt:]
    grown[:, after:, :n_txt] = mask[:, n_txt:, :n_txt]
    grown[:, after:, after:] = mask[:, n_txt:, n_txt:]
    log_bias = torch.log(torch.tensor([bias]))  # log(0) = -inf: the style tokens are masked out
    grown[:, :n_txt, n_txt:after] = log_bias
    grown[:, after:, n_txt:after] = log_bias
    return grown, ref_shape


class StyleModelApply:
    CATEGORY = "conditioning/style_model"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "apply_stylemodel"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",), "style_model": ("STYLE_MODEL",),
                             "clip_vision_output": ("CLIP_VISION_OUTPUT",),
                             "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.001}),
                             "strength_type": (["multiply", "attn_bias"],)}}

    def apply_stylemodel(self, conditioning: list, style_model: StyleModel, clip_vision_output, strength: float,
                         strength_type: str):
        style = style_model.get_cond(clip_vision_output)  # [B, num_token, D]
        style = style.flatten(0, 1).unsqueeze(0)  # every image's tokens in one row: [1, B·num_token, D]
        if strength_type == "multiply":
            style = style * strength
        out = []
        for txt, keys in conditioning:
            keys = dict(keys)
            if "attention_mask" in keys or (strength_type == "attn_bias" and strength != 1.0):
                bias = strength if strength_type == "attn_bias" else 1.0
                mask, keys["attention_mask_img_shape"] = _style_attention_mask(keys, txt, style.shape[1], bias)
                keys["attention_mask"] = mask.to(txt.device)
            out.append([torch.cat((txt, style.to(txt)), dim=1), keys])
        return (out,)


# -- hypernetworks ------------------------------------------------------------------------------------------------
class HypernetworkLoader:
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_hypernetwork"
    CATEGORY = "loaders"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_hypernetwork"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "hypernetwork_name": (model_files("hypernetworks"),),
                             "strength": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01})}}

    def load_hypernetwork(self, model, hypernetwork_name: str, strength: float):
        patch = load_hypernetwork(model_path("hypernetworks", hypernetwork_name), strength)
        patched = model.clone()
        if patch is not None:
            add_block_patch(patched, "attn1_patch", patch)
            add_block_patch(patched, "attn2_patch", patch)
        return (patched,)


class TomePatchModel:
    INFO_V3 = True
    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_tomesd"
    CATEGORY = "model_patches/unet"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL", {}),
                             "ratio": ("FLOAT", {"default": 0.3, "min": 0.0, "max": 1.0, "step": 0.01})}}

    def patch(self, model, ratio: float):
        tome = TomePatch(ratio)
        patched = model.clone()
        add_block_patch(patched, "attn1_patch", tome.merge)
        add_block_patch(patched, "attn1_output_patch", tome.unmerge)
        return (patched,)


# -- GLIGEN -------------------------------------------------------------------------------------------------------
class GLIGENLoader:
    CATEGORY = "loaders"
    RETURN_TYPES = ("GLIGEN",)
    FUNCTION = "load_gligen"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"gligen_name": (model_files("gligen"),)}}

    def load_gligen(self, gligen_name: str):
        return (_load_float32("gligen", gligen_name, load_gligen),)


class GLIGENTextBoxApply:
    CATEGORY = "conditioning/gligen"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "append"

    @classmethod
    def INPUT_TYPES(cls):
        def box(default: int, minimum: int) -> tuple[str, dict[str, Any]]:
            return int_input(default, minimum, step=8)

        return {"required": {"conditioning_to": ("CONDITIONING",), "clip": ("CLIP",),
                             "gligen_textbox_model": ("GLIGEN",), "text": prompt_text(),
                             "width": box(64, 8), "height": box(64, 8), "x": box(0, 0), "y": box(0, 0)}}

    def append(self, conditioning_to: list, clip, gligen_textbox_model: Gligen, text: str, width: int, height: int,
               x: int, y: int):
        clip = require_clip(clip, (), "GLIGENTextBoxApply")
        # ComfyUI asks for the unprojected pooled output: what SD1's CLIP-L pools (SD1 is GLIGEN's family)
        _, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
        box = (pooled, height // 8, width // 8, y // 8, x // 8)  # latent pixels
        out = []
        for cond, keys in conditioning_to:
            previous = keys["gligen"][2] if "gligen" in keys else []
            out.append([cond, {**keys, "gligen": ("position", gligen_textbox_model, [*previous, box])}])
        return (out,)


# -- image --------------------------------------------------------------------------------------------------------
class WebcamCapture(LoadImage):
    """LoadImage for the frontend's webcam widget: it uploads the frame (already sized) and sends its name."""

    RELATIVE_PYTHON_MODULE = "comfy_extras.nodes_webcam"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "load_capture"
    CATEGORY = "image"

    @classmethod
    def INPUT_TYPES(cls):
        size = int_input(0, 0, MAX_RESOLUTION)
        return {"required": {"image": ("WEBCAM", {}), "width": size, "height": size,
                             "capture_on_queue": ("BOOLEAN", {"default": True})}}

    def load_capture(self, image: str, **_: Any):
        return self.load_image(image)[:1]


NODE_CLASS_MAPPINGS = {
    "SaveImageWebsocket": SaveImageWebsocket,
    "PerpNeg": PerpNeg,
    "PerpNegGuider": PerpNegGuiderNode,
    "InstructPixToPixConditioning": InstructPixToPixConditioning,
    "CLIPTextEncodeControlnet": CLIPTextEncodeControlnet,
    "WebcamCapture": WebcamCapture,
    "StyleModelLoader": StyleModelLoader,
    "StyleModelApply": StyleModelApply,
    "HypernetworkLoader": HypernetworkLoader,
    "TomePatchModel": TomePatchModel,
    "GLIGENLoader": GLIGENLoader,
    "GLIGENTextBoxApply": GLIGENTextBoxApply,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "StyleModelLoader": "Load Style Model",
    "StyleModelApply": "Apply Style Model",
    "WebcamCapture": "Webcam Capture",
}
