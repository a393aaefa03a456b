"""Tiny random-weight model files in the REAL checkpoint key layouts (SD1.x, SD2.x eps/v, SDXL base/refiner,
SD1.5 inpaint, SD2 unCLIP-style, standalone UNet/VAE files, kohya LoRAs).

Layouts are the real ones shrunk as /work/shared/layouts/README.md describes ("really tiny"): fewer levels, res
blocks and transformer blocks, narrower channels (multiples of 32; 64 for the 64-channel-head families), the same key
names. The key lists come from our modules, whose full-size key sets tests/test_detect.py checks against the real
layouts (tests/data/model_layouts.json.gz). Text encoders come from tests/fixtures_text.py. Every value is random
(biases and norms too) so a mis-mapped tensor changes outputs. Each file is < 10 MB and builds in well under 2 s.
"""
from __future__ import annotations

import math
from pathlib import Path

import fixtures_text
import torch
from safetensors.torch import save_file

from comfy_core.models.unet import UNetConfig, UNetModel
from comfy_core.models.vae import AutoencoderKL, VAEConfig

UNET_PREFIX, VAE_PREFIX = "model.diffusion_model.", "first_stage_model."
POOLED_G = fixtures_text.CLIP_G_WIDTH  # tiny bigG projection width (text_projection is square in the fixture)

TINY_UNETS: dict[str, UNetConfig] = {
    "sd1": UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                      transformer_depth_output=(1, 1, 1, 1), transformer_depth_middle=1,
                      context_dim=fixtures_text.CLIP_L_WIDTH, num_heads=8, num_head_channels=-1),
    "sd2": UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                      transformer_depth_output=(1, 1, 1, 1), transformer_depth_middle=1,
                      context_dim=fixtures_text.CLIP_H_WIDTH, num_heads=-1, num_head_channels=64,
                      use_linear_in_transformer=True),
    "sdxl": UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(0, 2),
                       transformer_depth_output=(2, 2, 0, 0), transformer_depth_middle=2,
                       context_dim=fixtures_text.CLIP_L_WIDTH + fixtures_text.CLIP_G_WIDTH, num_heads=-1,
                       num_head_channels=64, use_linear_in_transformer=True, adm_in_channels=POOLED_G + 6 * 256),
    "sdxl_refiner": UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=(1, 1),
                               transformer_depth=(0, 1), transformer_depth_output=(1, 1, 0, 0),
                               transformer_depth_middle=1, context_dim=fixtures_text.CLIP_G_WIDTH, num_heads=-1,
                               num_head_channels=64, use_linear_in_transformer=True,
                               adm_in_channels=POOLED_G + 5 * 256),
    "sd2_unclip": UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                             transformer_depth_output=(1, 1, 1, 1), transformer_depth_middle=1,
                             context_dim=fixtures_text.CLIP_H_WIDTH, num_heads=-1, num_head_channels=64,
                             use_linear_in_transformer=True, adm_in_channels=2 * 64),
}
TINY_UNETS["sd1_inpaint"] = UNetConfig(**{**TINY_UNETS["sd1"].__dict__, "in_channels": 9})
TINY_VAE = VAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1)
TEXT = {"sd1": fixtures_text.tiny_sd1_text, "sd1_inpaint": fixtures_text.tiny_sd1_text,
        "sd2": fixtures_text.tiny_sd2_text, "sd2_unclip": fixtures_text.tiny_sd2_text,
        "sdxl": fixtures_text.tiny_sdxl_text, "sdxl_refiner": fixtures_text.tiny_refiner_text}


def randomize(keys_shapes: dict[str, torch.Size], seed: int, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Deterministic random values: matrices/convs N(0, 1/fan_in), 1-D weights 1 + N(0, 0.1²), biases N(0, 0.02²)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(keys_shapes):
        shape = tuple(keys_shapes[key])
        if len(shape) >= 2:
            t = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("bias"):
            t = 0.02 * torch.randn(shape, generator=g)
        else:
            t = 1.0 + 0.1 * torch.randn(shape, generator=g)
        out[key] = t.to(dtype).contiguous()
    return out


def _shapes(module_factory) -> dict[str, torch.Size]:
    with torch.device("meta"):
        module = module_factory()
    return {k: v.shape for k, v in module.state_dict().items()}


def unet_state_dict(family: str = "sd1", *, seed: int = 0, dtype: torch.dtype = torch.float32, v_pred_std: float | None = None,
                    prefix: str = "") -> dict[str, torch.Tensor]:
    """Tiny UNet tensors; `v_pred_std` sets the std of the last output transformer's norm1.bias (SD2 v heuristic)."""
    cfg = TINY_UNETS[family]
    sd = randomize(_shapes(lambda: UNetModel(cfg)), seed, dtype)
    if v_pred_std is not None:
        n = max(i for i, d in enumerate(cfg.transformer_depth_output) if d > 0)
        key = f"output_blocks.{n}.1.transformer_blocks.0.norm1.bias"
        g = torch.Generator().manual_seed(seed + 1)
        b = torch.randn(sd[key].shape, generator=g)
        sd[key] = (b / b.std(unbiased=False) * v_pred_std).to(dtype)
    return {prefix + k: v for k, v in sd.items()}


def vae_state_dict(*, seed: int = 1, dtype: torch.dtype = torch.float32, prefix: str = "") -> dict[str, torch.Tensor]:
    sd = randomize(_shapes(lambda: AutoencoderKL(TINY_VAE)), seed, dtype)
    return {prefix + k: v for k, v in sd.items()}


def checkpoint_state_dict(family: str = "sd1", *, text: bool = True, vae: bool = True, v_pred_std: float | None = None,
                          v_pred_key: bool = False, dtype: torch.dtype = torch.float16, seed: int = 0
                          ) -> dict[str, torch.Tensor]:
    """A whole tiny checkpoint: model.diffusion_model.* + first_stage_model.* + the family's text encoders."""
    sd = unet_state_dict(family, seed=seed, dtype=dtype, v_pred_std=v_pred_std, prefix=UNET_PREFIX)
    if vae:
        sd.update(vae_state_dict(seed=seed + 100, dtype=dtype, prefix=VAE_PREFIX))
    if text:
        sd.update(TEXT[family](dtype=dtype))
    if family == "sd2_unclip":
        g = torch.Generator().manual_seed(seed + 7)
        sd["noise_augmentor.data_mean"] = torch.randn(1, 64, generator=g)
        sd["noise_augmentor.data_std"] = 1.0 + 0.1 * torch.rand(1, 64, generator=g)
    if v_pred_key:
        sd["v_pred"] = torch.tensor([])
    return sd


def write(path: str | Path, sd: dict[str, torch.Tensor]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def write_checkpoint(path: str | Path, family: str = "sd1", **kw) -> Path:
    return write(path, checkpoint_state_dict(family, **kw))


def kohya_lora_state_dict(
    family: str = "sd1", *, rank: int = 4, alpha: float | None = 2.0, seed: int = 5, conv: bool = False,
    text: bool = True, dtype: torch.dtype = torch.float16,
) -> dict[str, torch.Tensor]:
    """A kohya LoRA for the tiny `family` UNet (+ its text encoders): diffusers-style lora_unet_* names for every
    transformer linear / 1x1 proj (LoCon resnet convs too with `conv`), lora_te*_ for every text-encoder linear."""
    from comfy_core.models.lora import unet_diffusers_map

    cfg = TINY_UNETS[family]
    shapes = _shapes(lambda: UNetModel(cfg))
    names: dict[str, tuple] = {}
    for d, ldm in unet_diffusers_map(cfg).items():
        if ".attentions." in d or d.startswith("mid_block.attentions"):
            for k, shape in shapes.items():
                if k.startswith(ldm + ".") and k.endswith(".weight") and len(shape) >= 2 and ".norm" not in k:
                    names["lora_unet_" + (d + k[len(ldm):-len(".weight")]).replace(".", "_")] = shape
        elif conv and ldm + ".weight" in shapes and len(shapes[ldm + ".weight"]) >= 2:
            names["lora_unet_" + d.replace(".", "_")] = shapes[ldm + ".weight"]
    if text:
        width = fixtures_text.CLIP_L_WIDTH if family.startswith("sd1") else None
        if width is not None:
            for layer in range(3):
                for lin, shape in (("self_attn_q_proj", (width, width)), ("self_attn_k_proj", (width, width)),
                                   ("self_attn_v_proj", (width, width)), ("self_attn_out_proj", (width, width)),
                                   ("mlp_fc1", (4 * width, width)), ("mlp_fc2", (width, 4 * width))):
                    names[f"lora_te_text_model_encoder_layers_{layer}_{lin}"] = shape
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name in sorted(names):
        shape = tuple(names[name])
        kernel = shape[2:]
        sd[name + ".lora_down.weight"] = (torch.randn((rank, shape[1]) + kernel, generator=g) / math.sqrt(shape[1])).to(dtype)
        sd[name + ".lora_up.weight"] = (torch.randn((shape[0], rank) + (1,) * len(kernel), generator=g) * 0.1).to(dtype)
        if alpha is not None:
            sd[name + ".alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return sd
