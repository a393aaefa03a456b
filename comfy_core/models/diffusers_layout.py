"""diffusers-layout weight files (UNet2DConditionModel, ControlNetModel, AutoencoderKL) seen in our LDM key layout.

Each converter returns a `RenamedView`: a lazy StateDict whose keys are the LDM names and whose tensors are read from
the diffusers names on demand, so a converted file still loads tensor by tensor without a second copy. Sizes are
never looked up in a table: the block structure (levels, res blocks per level, transformer depths) is counted from
the diffusers keys, and the UNet module map is lora.py's `unet_diffusers_map` (the same map LoRA files use).
Inside attention blocks diffusers and LDM sub-paths coincide (proj_in, transformer_blocks.N.attn1.to_q, ff.net.2 ...).
VAE attention: diffusers stores q/k/v/proj as Linear [C, C] weights where LDM has 1x1 convs; `materialize` accepts
such Linear-stored 1x1 convs and reshapes them.
"""
from __future__ import annotations

from collections.abc import Mapping

from ..errors import ModelLoadError
from .detect import ShapeKeys
from .lora import unet_diffusers_map
from .state_dict import RenamedView, StateDict, TensorDict
from .unet import UNetConfig

# diffusers names outside the down/mid/up blocks -> LDM names (UNet and ControlNet)
_UNET_TOP = {
    "conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0", "class_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0", "conv_out": "out.2",
}
_HINT_BLOCKS = 6  # ControlNetConditioningEmbedding: conv_in, 6 blocks, conv_out = input_hint_block.0, 2..12, 14


# ------------------------------------------------------------------------------------------------ UNet / ControlNet


def is_diffusers_unet(sd: Mapping, prefix: str = "") -> bool:
    return prefix + "conv_in.weight" in sd and prefix + "down_blocks.0.resnets.0.conv1.weight" in sd


def block_layout(k: ShapeKeys) -> UNetConfig:
    """The block structure of a diffusers UNet/ControlNet (levels, res blocks, transformer depths), counted from keys.

    Only the fields `unet_diffusers_map` reads are meaningful; channel widths come later from the converted keys."""
    levels = k.count("down_blocks.{}.resnets.0.conv1.weight")
    if levels == 0:
        raise ModelLoadError(f"{k.source}: diffusers layout without down_blocks.0.resnets.0")
    res = tuple(k.count(f"down_blocks.{i}.resnets.{{}}.conv1.weight") for i in range(levels))
    depth_out = []
    for i in range(k.count("up_blocks.{}.resnets.0.conv1.weight")):
        for j in range(k.count(f"up_blocks.{i}.resnets.{{}}.conv1.weight")):
            depth_out.append(k.count(f"up_blocks.{i}.attentions.{j}.transformer_blocks.{{}}.attn1.to_q.weight"))
    if not depth_out:  # a ControlNet has no up blocks
        depth_out = [0] * sum(r + 1 for r in res)
    return UNetConfig(channel_mult=(1,) * levels, num_res_blocks=res, transformer_depth_output=tuple(depth_out))


def _as_state_dict(sd: StateDict | Mapping) -> StateDict:
    return sd if isinstance(sd, StateDict) else TensorDict(sd)


def _rename(keys: list[str], modules: Mapping[str, str], prefix: str) -> dict[str, str]:
    """LDM key -> diffusers key, for every diffusers key (under `prefix`) whose module path `modules` maps."""
    names: dict[str, str] = {}
    for full in keys:
        if not full.startswith(prefix):
            continue
        parts = full[len(prefix):].split(".")
        for cut in range(len(parts) - 1, 0, -1):  # the longest mapped module path wins
            ldm = modules.get(".".join(parts[:cut]))
            if ldm is not None:
                names[".".join([ldm, *parts[cut:]])] = full
                break
    return names


def unet_from_diffusers(sd: StateDict | Mapping, prefix: str = "", source: str = "state dict") -> RenamedView:
    """A diffusers UNet2DConditionModel state dict (under `prefix`) in the LDM layout (`input_blocks.0.0.weight`...)."""
    layout = block_layout(ShapeKeys(sd, prefix, source))
    modules = {**unet_diffusers_map(layout), **_UNET_TOP}
    return RenamedView(_as_state_dict(sd), _rename(list(sd), modules, prefix))


def is_diffusers_controlnet(sd: Mapping) -> bool:
    return "controlnet_cond_embedding.conv_in.weight" in sd and "controlnet_mid_block.weight" in sd


def controlnet_from_diffusers(sd: StateDict | Mapping, source: str = "state dict") -> RenamedView:
    """A diffusers ControlNetModel state dict in the repacked LDM ControlNet layout (`zero_convs.0.0.weight`...)."""
    k = ShapeKeys(sd, "", source)
    modules = {**unet_diffusers_map(block_layout(k)), **_UNET_TOP,
               "controlnet_cond_embedding.conv_in": "input_hint_block.0",
               "controlnet_cond_embedding.conv_out": f"input_hint_block.{2 * _HINT_BLOCKS + 2}",
               "controlnet_mid_block": "middle_block_out.0"}
    modules.update({f"controlnet_cond_embedding.blocks.{i}": f"input_hint_block.{2 * i + 2}" for i in range(_HINT_BLOCKS)})
    modules.update({f"controlnet_down_blocks.{i}": f"zero_convs.{i}.0"
                    for i in range(k.count("controlnet_down_blocks.{}.weight"))})
    return RenamedView(_as_state_dict(sd), _rename(list(sd), modules, ""))


# ------------------------------------------------------------------------------------------------ VAE

_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
# current and older (query/key/value/proj_attn) diffusers attention names -> LDM AttnBlock names
_VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
             "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}


def is_diffusers_vae(sd: Mapping, prefix: str = "") -> bool:
    return prefix + "encoder.down_blocks.0.resnets.0.conv1.weight" in sd or \
        prefix + "decoder.up_blocks.0.resnets.0.conv1.weight" in sd


def _vae_side(modules: dict[str, str], k: ShapeKeys, side: str) -> None:
    blocks, ldm_blocks, sampler = ("down_blocks", "down", "downsamplers") if side == "encoder" else \
        ("up_blocks", "up", "upsamplers")
    levels = k.count(f"{side}.{blocks}.{{}}.resnets.0.conv1.weight")
    for i in range(levels):
        level = i if side == "encoder" else levels - 1 - i  # diffusers up_blocks.0 is the lowest resolution
        for j in range(k.count(f"{side}.{blocks}.{i}.resnets.{{}}.conv1.weight")):
            for d, ldm in _VAE_RESNET.items():
                modules[f"{side}.{blocks}.{i}.resnets.{j}.{d}"] = f"{side}.{ldm_blocks}.{level}.block.{j}.{ldm}"
        resample = "downsample" if side == "encoder" else "upsample"
        modules[f"{side}.{blocks}.{i}.{sampler}.0.conv"] = f"{side}.{ldm_blocks}.{level}.{resample}.conv"
    for j in range(2):
        for d, ldm in _VAE_RESNET.items():
            modules[f"{side}.mid_block.resnets.{j}.{d}"] = f"{side}.mid.block_{j + 1}.{ldm}"
    for d, ldm in _VAE_ATTN.items():
        modules[f"{side}.mid_block.attentions.0.{d}"] = f"{side}.mid.attn_1.{ldm}"
    for d in ("conv_in", "conv_out"):
        modules[f"{side}.{d}"] = f"{side}.{d}"
    modules[f"{side}.conv_norm_out"] = f"{side}.norm_out"


def vae_from_diffusers(sd: StateDict | Mapping, prefix: str = "", source: str = "state dict") -> RenamedView:
    """A diffusers AutoencoderKL state dict (under `prefix`) in the LDM layout (`encoder.down.0.block.0...`)."""
    k = ShapeKeys(sd, prefix, source)
    modules = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    _vae_side(modules, k, "encoder")
    _vae_side(modules, k, "decoder")
    return RenamedView(_as_state_dict(sd), _rename(list(sd), modules, prefix))
