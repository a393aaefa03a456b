"""LDM -> diffusers key renaming for test files (the inverse direction of comfy_core.models.diffusers_layout, written
independently from diffusers' naming rules: UNet2DConditionModel, ControlNetModel, AutoencoderKL)."""
from __future__ import annotations

import re

import torch

_RES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj", "out_layers.0": "norm2",
        "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_TOP = {"input_blocks.0.0": "conv_in", "time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
        "label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2", "out.0": "conv_norm_out",
        "out.2": "conv_out", "middle_block_out.0": "controlnet_mid_block",
        "input_hint_block.0": "controlnet_cond_embedding.conv_in",
        "input_hint_block.14": "controlnet_cond_embedding.conv_out"}


def _resnet(rest: str) -> str:
    for ldm, d in _RES.items():
        if rest.startswith(ldm + "."):
            return d + rest[len(ldm):]
    raise KeyError(rest)


def unet_key(key: str, nrb: int, levels: int) -> str:
    """One LDM UNet/ControlNet key in diffusers naming (uniform `nrb` res blocks per level)."""
    for ldm, d in _TOP.items():
        if key.startswith(ldm + "."):
            return d + key[len(ldm):]
    if m := re.match(r"input_hint_block\.(\d+)\.(.*)", key):
        return f"controlnet_cond_embedding.blocks.{int(m[1]) // 2 - 1}.{m[2]}"
    if m := re.match(r"zero_convs\.(\d+)\.0\.(.*)", key):
        return f"controlnet_down_blocks.{m[1]}.{m[2]}"
    if m := re.match(r"input_blocks\.(\d+)\.(\d)\.(.*)", key):
        n, sub, rest = int(m[1]) - 1, int(m[2]), m[3]
        level, j = divmod(n, nrb + 1)
        if j == nrb:
            return f"down_blocks.{level}.downsamplers.0.conv.{rest.removeprefix('op.')}"
        return f"down_blocks.{level}.resnets.{j}.{_resnet(rest)}" if sub == 0 else f"down_blocks.{level}.attentions.{j}.{rest}"
    if m := re.match(r"middle_block\.(\d)\.(.*)", key):
        sub, rest = int(m[1]), m[2]
        return f"mid_block.attentions.0.{rest}" if sub == 1 else f"mid_block.resnets.{sub // 2}.{_resnet(rest)}"
    if m := re.match(r"output_blocks\.(\d+)\.(\d)\.(.*)", key):
        n, sub, rest = int(m[1]), int(m[2]), m[3]
        i, j = divmod(n, nrb + 1)
        if sub == 0:
            return f"up_blocks.{i}.resnets.{j}.{_resnet(rest)}"
        if rest.startswith("conv."):
            return f"up_blocks.{i}.upsamplers.0.{rest}"
        return f"up_blocks.{i}.attentions.{j}.{rest}"
    raise KeyError(key)


def to_diffusers_unet(sd: dict[str, torch.Tensor], nrb: int, levels: int) -> dict[str, torch.Tensor]:
    return {unet_key(k, nrb, levels): v for k, v in sd.items()}


_VRES = {"nin_shortcut": "conv_shortcut"}
_VATT = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def vae_key(key: str, levels: int) -> str:
    if m := re.match(r"(encoder|decoder)\.(down|up)\.(\d+)\.(block|downsample|upsample)\.(.*)", key):
        side, _, level, kind, rest = m[1], m[2], int(m[3]), m[4], m[5]
        blocks = "down_blocks" if side == "encoder" else "up_blocks"
        i = level if side == "encoder" else levels - 1 - level
        if kind == "block":
            j, name = rest.split(".", 1)
            head, tail = name.split(".", 1)
            return f"{side}.{blocks}.{i}.resnets.{j}.{_VRES.get(head, head)}.{tail}"
        return f"{side}.{blocks}.{i}.{kind}rs.0.{rest}"  # downsample -> downsamplers.0
    if m := re.match(r"(encoder|decoder)\.mid\.block_(\d)\.(\w+)\.(.*)", key):
        return f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{_VRES.get(m[3], m[3])}.{m[4]}"
    if m := re.match(r"(encoder|decoder)\.mid\.attn_1\.(\w+)\.(.*)", key):
        return f"{m[1]}.mid_block.attentions.0.{_VATT[m[2]]}.{m[3]}"
    return key.replace("norm_out", "conv_norm_out")


def to_diffusers_vae(sd: dict[str, torch.Tensor], levels: int) -> dict[str, torch.Tensor]:
    """Attention q/k/v/proj_out become Linear [C, C] weights, as diffusers stores them."""
    out = {}
    for k, v in sd.items():
        dk = vae_key(k, levels)
        out[dk] = v.flatten(1) if ".mid_block.attentions." in dk and v.ndim == 4 else v
    return out
