"""The embedded default: a small random-weight checkpoint in the real SD1 key layout, and a txt2img workflow for it.

The checkpoint is written once (deterministically: fixed seed, fixed sizes) into the engine's checkpoints folder.
Its weights are random, so its pictures are noise: it exists to try the whole machinery (detection, loading,
tokenizer, CLIP, UNet, sampler, VAE, SaveImage) on a machine without any downloaded model.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .models.clip_text import HFClipText, TextConfig
from .models.unet import UNetConfig, UNetModel
from .models.vae import AutoencoderKL, VAEConfig

log = logging.getLogger(__name__)

DEMO_NAME = "comfy-core-demo-sd1.safetensors"
DEMO_SEED = 20240229
TEXT = TextConfig(layout="hf", width=64, layers=2, heads=4, mlp=256, vocab=49408, positions=77,
                  activation="quick_gelu", projection=None)
UNET = UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=(1, 1), transformer_depth=(1, 1),
                  transformer_depth_output=(1, 1, 1, 1), transformer_depth_middle=1, context_dim=TEXT.width,
                  num_heads=8, num_head_channels=-1)
VAE = VAEConfig(ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1)
PREFIXES = {"model.diffusion_model.": lambda: UNetModel(UNET), "first_stage_model.": lambda: AutoencoderKL(VAE),
            "cond_stage_model.transformer.": lambda: HFClipText(TEXT)}


def demo_state_dict() -> dict[str, torch.Tensor]:
    """Every tensor of the demo checkpoint (fp16, as distributed checkpoints are), from seeded default inits."""
    torch.manual_seed(DEMO_SEED)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, build in PREFIXES.items():
        for key, value in build().state_dict().items():
            tensors[prefix + key] = value.detach().to(torch.float16 if value.is_floating_point() else value.dtype)
    return tensors


def ensure_demo_checkpoint(folders) -> Path:
    """The demo checkpoint's path in the first checkpoints folder, writing it the first time."""
    existing = folders.full_path("checkpoints", DEMO_NAME)
    if existing is not None:
        return existing
    target = Path(folders.dirs("checkpoints")[0]) / DEMO_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    save_file({k: v.contiguous() for k, v in demo_state_dict().items()}, str(partial),
              metadata={"comfy_core": "random-weight demo checkpoint (SD1 layout)"})
    partial.replace(target)
    log.info("wrote the demo checkpoint %s", target)
    return target


def demo_prompt(ckpt_name: str, text: str = "a photo of a cat", seed: int = 42, steps: int = 8) -> dict[str, Any]:
    """txt2img, 256×256, euler / normal, cfg 7: the same graph shape as ComfyUI's default workflow."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry, low quality", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 256, "height": 256, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "comfy-core-demo", "images": ["8", 0]}},
    }
