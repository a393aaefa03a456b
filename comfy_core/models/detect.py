"""Which model is in a state dict, from key names and tensor shapes only (plus one tensor for SD2's v-pred guess).

Works for full-size and tiny models alike: every size is read from shapes, never looked up in a table.

Families (ComfyUI config names in brackets):
- "sd1"          SD1.x [SD15]: conv proj_in/out, no ADM input, 8 heads.
- "sd2"          SD2.x [SD20]: linear proj_in/out, no ADM, 64-channel heads; eps or v (see `_sd2_prediction`).
- "sd2_unclip"   SD2.1 unCLIP [SD21UnclipL/H]: SD2 UNet + ADM input (CLIP image embedding + noise level).
- "sdxl"         SDXL base [SDXL]: ADM = pooled bigG + 6x256 Fourier features, no attention at level 0.
- "sdxl_refiner" [SDXLRefiner]: ADM = pooled bigG + 5x256; context = bigG width = pooled width.
Inpaint variants have in_channels 9 (x + mask + masked-image latent); InstructPix2Pix ones 8 (x + source latent).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..errors import ModelLoadError
from .unet import UNetConfig
from .vae import VAEConfig

log = logging.getLogger(__name__)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
FOURIER_DIM = 256  # SDXL's per-scalar (size/crop/aesthetic) embedding width, hard-coded in SGM/ComfyUI

Family = Literal["sd1", "sd2", "sd2_unclip", "sdxl", "sdxl_refiner"]


@dataclass(frozen=True)
class ModelSpec:
    family: Family
    unet: UNetConfig
    prediction: Literal["eps", "v"] = "eps"
    ztsnr: bool = False  # zero terminal SNR flag (`ztsnr` key next to `v_pred`)

    @property
    def inpaint(self) -> bool:
        return self.unet.in_channels == self.unet.out_channels * 2 + 1

    @property
    def ip2p(self) -> bool:
        """InstructPix2Pix: the edited image's latent is concatenated to the input (ComfyUI's *_instructpix2pix)."""
        return self.unet.in_channels == self.unet.out_channels * 2

    @property
    def comfy_name(self) -> str:
        if self.family == "sd2_unclip":
            return "SD21UnclipH" if self.unet.adm_in_channels == 2048 else "SD21UnclipL"
        return {"sd1": "SD15", "sd2": "SD20", "sdxl": "SDXL", "sdxl_refiner": "SDXLRefiner"}[self.family]

    @property
    def pooled_dim(self) -> int | None:
        """Width of the pooled text embedding the ADM input starts with (SDXL family)."""
        adm = self.unet.adm_in_channels
        if self.family == "sdxl":
            return adm - 6 * FOURIER_DIM
        if self.family == "sdxl_refiner":
            return adm - 5 * FOURIER_DIM
        return None


class ShapeKeys:
    """Shape lookups on a state dict (or a plain dict of tensors) under a key prefix, with the file named in errors."""

    def __init__(self, sd: Mapping, prefix: str, source: str):
        self.sd, self.prefix, self.source = sd, prefix, source
        self.keys = set(sd.keys())

    def has(self, key: str) -> bool:
        return self.prefix + key in self.keys

    def shape(self, key: str) -> tuple[int, ...]:
        full = self.prefix + key
        if full not in self.keys:
            raise ModelLoadError(f"{self.source}: missing tensor {full!r}")
        shape = getattr(self.sd, "shape", None)
        return tuple(shape(full)) if shape is not None else tuple(self.sd[full].shape)

    def count(self, fmt: str) -> int:
        """Number of consecutive i with fmt.format(i) present."""
        n = 0
        while self.has(fmt.format(n)):
            n += 1
        return n


def find_unet_prefix(sd: Mapping) -> str | None:
    """`model.diffusion_model.` (checkpoints), `` (standalone UNet files), or None when there is no UNet."""
    for prefix in (UNET_PREFIX, "", "diffusion_model.", "model."):
        if prefix + "input_blocks.0.0.weight" in sd:
            return prefix
    return None


def find_vae_prefix(sd: Mapping) -> str | None:
    for prefix in (VAE_PREFIX, "", "vae."):
        if prefix + "decoder.conv_in.weight" in sd:
            return prefix
    return None


def input_levels(k: ShapeKeys, mc: int) -> tuple[list[int], list[int], list[int]]:
    """Walk input_blocks: (channel_mult, num_res_blocks per level, transformer depth per res block)."""
    mults, res_blocks, depths = [], [], []
    n, blocks, mult = 1, 0, None
    while True:
        if k.has(f"input_blocks.{n}.0.op.weight"):  # a downsample closes the level
            if mult is None:
                raise ModelLoadError(f"{k.source}: input_blocks.{n} downsamples before any res block")
            mults.append(mult)
            res_blocks.append(blocks)
            blocks = 0
        elif k.has(f"input_blocks.{n}.0.in_layers.0.weight"):
            mult = k.shape(f"input_blocks.{n}.0.out_layers.3.weight")[0] // mc
            blocks += 1
            depths.append(k.count(f"input_blocks.{n}.1.transformer_blocks.{{}}.attn1.to_q.weight"))
        else:
            break
        n += 1
    if mult is None:
        raise ModelLoadError(f"{k.source}: UNet has no res blocks (missing input_blocks.1.0.*)")
    mults.append(mult)
    res_blocks.append(blocks)
    return mults, res_blocks, depths


def _first_transformer(k: ShapeKeys) -> str | None:
    for key in sorted(k.keys):
        if key.startswith(k.prefix) and key.endswith(".transformer_blocks.0.attn2.to_k.weight"):
            return key[len(k.prefix):-len("transformer_blocks.0.attn2.to_k.weight")]
    return None


def encoder_config(k: ShapeKeys, what: str = "UNet") -> dict[str, Any]:
    """The UNetConfig fields that the encoder half (input blocks, middle block, ADM input) determines; a UNet and a
    ControlNet (a copy of that half) share them. Heads by family: SD1 8 heads, everything else 64-channel heads."""
    mc, in_ch = k.shape("input_blocks.0.0.weight")[:2]
    adm = k.shape("label_emb.0.0.weight")[1] if k.has("label_emb.0.0.weight") else None
    mults, res_blocks, depth_in = input_levels(k, mc)
    depth_mid = k.count("middle_block.1.transformer_blocks.{}.attn1.to_q.weight") if k.has("middle_block.1.norm.weight") else -1
    first = _first_transformer(k)
    if first is None:
        raise ModelLoadError(f"{k.source}: {what} has no cross-attention (no *.transformer_blocks.0.attn2.to_k.weight)")
    linear = len(k.shape(first + "proj_in.weight")) == 2
    sd1_like = not linear and adm is None
    return dict(
        in_channels=in_ch, model_channels=mc, channel_mult=tuple(mults), num_res_blocks=tuple(res_blocks),
        transformer_depth=tuple(depth_in), transformer_depth_middle=depth_mid,
        context_dim=k.shape(first + "transformer_blocks.0.attn2.to_k.weight")[1], use_linear_in_transformer=linear,
        num_heads=8 if sd1_like else -1, num_head_channels=-1 if sd1_like else 64, adm_in_channels=adm,
    )


def detect_unet_config(sd: Mapping, prefix: str, source: str = "state dict") -> UNetConfig:
    """UNetConfig from the UNet keys under `prefix`: the encoder's fields plus the output blocks."""
    k = ShapeKeys(sd, prefix, source)
    out_ch = k.shape("out.2.weight")[0]
    encoder = encoder_config(k)
    n_out = sum(r + 1 for r in encoder["num_res_blocks"])
    if not k.has(f"output_blocks.{n_out - 1}.0.in_layers.0.weight") or k.has(f"output_blocks.{n_out}.0.in_layers.0.weight"):
        raise ModelLoadError(f"{source}: expected {n_out} UNet output blocks (output_blocks.0..{n_out - 1})")
    depth_out = [k.count(f"output_blocks.{n}.1.transformer_blocks.{{}}.attn1.to_q.weight") for n in range(n_out)]
    return UNetConfig(out_channels=out_ch, transformer_depth_output=tuple(depth_out), **encoder)


def _family(cfg: UNetConfig) -> Family:
    if cfg.adm_in_channels is None:
        return "sd2" if cfg.use_linear_in_transformer else "sd1"
    if cfg.transformer_depth and cfg.transformer_depth[0] > 0:
        return "sd2_unclip"  # SD2-style attention at the first level; SDXL never has it
    if cfg.adm_in_channels - 5 * FOURIER_DIM == cfg.context_dim:
        return "sdxl_refiner"  # refiner context = bigG width = pooled width
    if cfg.adm_in_channels > 6 * FOURIER_DIM:
        return "sdxl"
    raise ModelLoadError(f"unknown UNet with ADM input {cfg.adm_in_channels} and context {cfg.context_dim}")


def _last_transformer_output(cfg: UNetConfig) -> int | None:
    for n in reversed(range(len(cfg.transformer_depth_output))):
        if cfg.transformer_depth_output[n] > 0:
            return n
    return None


def _sd2_prediction(sd: Mapping, prefix: str, cfg: UNetConfig) -> Literal["eps", "v"]:
    """SD2 768-v has no marker in its weights: ComfyUI guesses v when the population std of the last output
    transformer's norm1.bias (output_blocks.11.1 in full size) exceeds 0.09, for 4-channel models only."""
    if cfg.in_channels != 4:
        return "eps"
    n = _last_transformer_output(cfg)
    key = f"{prefix}output_blocks.{n}.1.transformer_blocks.0.norm1.bias"
    if n is None or key not in sd:
        return "eps"
    bias = sd[key].float()
    return "v" if torch.std(bias, unbiased=False).item() > 0.09 else "eps"


def detect_model(sd: Mapping, prefix: str | None = None, source: str = "state dict") -> ModelSpec:
    """Family, UNet config and prediction type of the diffusion model in `sd` (a checkpoint or a UNet file)."""
    prefix = find_unet_prefix(sd) if prefix is None else prefix
    if prefix is None:
        raise ModelLoadError(f"{source}: no diffusion model found (no '{UNET_PREFIX}input_blocks.0.0.weight')")
    cfg = detect_unet_config(sd, prefix, source)
    try:
        family = _family(cfg)
    except ModelLoadError as e:
        raise ModelLoadError(f"{source}: {e}") from None
    if cfg.in_channels not in (cfg.out_channels, cfg.out_channels * 2, cfg.out_channels * 2 + 1):
        raise ModelLoadError(f"{source}: unsupported UNet input channels {cfg.in_channels} "
                             "(want 4, 8 for InstructPix2Pix or 9 for inpaint)")
    if "v_pred" in sd:  # ComfyUI writes this marker when it saves a v-prediction model
        prediction: Literal["eps", "v"] = "v"
    elif family in ("sd2", "sd2_unclip"):
        prediction = _sd2_prediction(sd, prefix, cfg)
    else:
        prediction = "eps"
    return ModelSpec(family=family, unet=cfg, prediction=prediction, ztsnr="ztsnr" in sd)


def detect_vae_config(sd: Mapping, prefix: str, source: str = "state dict") -> VAEConfig:
    """VAEConfig of an LDM-layout AutoencoderKL under `prefix`."""
    k = ShapeKeys(sd, prefix, source)
    if k.has("encoder.down_blocks.0.resnets.0.conv1.weight") or k.has("decoder.up_blocks.0.resnets.0.conv1.weight"):
        raise ModelLoadError(f"{source}: diffusers-layout VAE files are not supported; use the LDM/ComfyUI layout")
    ch = k.shape("encoder.conv_in.weight")[0]
    levels = k.count("encoder.down.{}.block.0.conv1.weight")
    if levels == 0:
        raise ModelLoadError(f"{source}: VAE encoder has no levels (missing {prefix}encoder.down.0.block.0.conv1.weight)")
    ch_mult = tuple(k.shape(f"encoder.down.{i}.block.0.conv2.weight")[0] // ch for i in range(levels))
    z = k.shape("decoder.conv_in.weight")[1]
    cfg = VAEConfig(
        ch=ch, ch_mult=ch_mult, num_res_blocks=k.count("encoder.down.0.block.{}.conv1.weight"), z_channels=z,
        embed_dim=k.shape("post_quant_conv.weight")[1], in_channels=k.shape("encoder.conv_in.weight")[1],
        out_ch=k.shape("decoder.conv_out.weight")[0], double_z=k.shape("encoder.conv_out.weight")[0] == 2 * z,
    )
    if k.count("decoder.up.0.block.{}.conv1.weight") != cfg.num_res_blocks + 1:
        raise ModelLoadError(f"{source}: VAE decoder should have {cfg.num_res_blocks + 1} res blocks per level")
    return cfg
