"""Tiny models in the real key layouts of CLIP vision towers, the HED annotator and ControlNets.

Weights follow the deterministic rule of shared/tools/make_random_sd15.py (biases zero, other 1-D tensors one,
embeddings N(0, 0.02), everything else N(0, 1/fan_in)), so the same shapes always give the same tensors.
"""
from __future__ import annotations

import math

import torch


def random_tensor(key: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    if len(shape) == 0 or shape == (0,):
        return torch.zeros(shape)
    if key.endswith("bias"):
        return torch.zeros(shape)
    if len(shape) == 1 and "embedding" not in key:
        return torch.ones(shape)
    if "embedding" in key:
        return torch.randn(shape, generator=gen) * 0.02
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return torch.randn(shape, generator=gen) / math.sqrt(fan_in)


def random_state_dict(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: random_tensor(k, tuple(shapes[k]), gen) for k in sorted(shapes)}


# ------------------------------------------------------------------------------------------------ CLIP vision


def clip_vision_shapes(width: int = 32, layers: int = 3, mlp: int = 64, patch: int = 7, image_size: int = 28,
                       projection: int = 24) -> dict[str, tuple[int, ...]]:
    """HF-layout `vision_model.*` + `visual_projection.weight` shapes of a tiny tower."""
    positions = (image_size // patch) ** 2 + 1
    s: dict[str, tuple[int, ...]] = {
        "vision_model.embeddings.class_embedding": (width,),
        "vision_model.embeddings.patch_embedding.weight": (width, 3, patch, patch),
        "vision_model.embeddings.position_embedding.weight": (positions, width),
        "vision_model.pre_layrnorm.weight": (width,), "vision_model.pre_layrnorm.bias": (width,),
        "vision_model.post_layernorm.weight": (width,), "vision_model.post_layernorm.bias": (width,),
        "visual_projection.weight": (projection, width),
    }
    for i in range(layers):
        p = f"vision_model.encoder.layers.{i}."
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s[p + f"self_attn.{n}.weight"] = (width, width)
            s[p + f"self_attn.{n}.bias"] = (width,)
        for n in ("layer_norm1", "layer_norm2"):
            s[p + n + ".weight"] = (width,)
            s[p + n + ".bias"] = (width,)
        s[p + "mlp.fc1.weight"], s[p + "mlp.fc1.bias"] = (mlp, width), (mlp,)
        s[p + "mlp.fc2.weight"], s[p + "mlp.fc2.bias"] = (width, mlp), (width,)
    return s


def tiny_clip_vision(seed: int = 0, **sizes: int) -> dict[str, torch.Tensor]:
    sd = random_state_dict(clip_vision_shapes(**sizes), seed)
    # LayerNorm weights of one are too regular to catch a swapped norm: perturb them deterministically.
    gen = torch.Generator().manual_seed(seed + 1)
    for k in sd:
        if "norm" in k:
            sd[k] = sd[k] + 0.1 * torch.randn(sd[k].shape, generator=gen)
    return sd


def hf_to_openclip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same tower in the OpenCLIP `visual.*` layout (the inverse of what the loader does)."""
    out = {
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
        "visual.proj": sd["visual_projection.weight"].t().contiguous(),
    }
    i = 0
    while f"vision_model.encoder.layers.{i}.layer_norm1.weight" in sd:
        p, q = f"vision_model.encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[q + f"attn.in_proj_{kind}"] = torch.cat([sd[p + f"self_attn.{n}_proj.{kind}"] for n in "qkv"])
            out[q + f"attn.out_proj.{kind}"] = sd[p + f"self_attn.out_proj.{kind}"]
            out[q + f"ln_1.{kind}"] = sd[p + f"layer_norm1.{kind}"]
            out[q + f"ln_2.{kind}"] = sd[p + f"layer_norm2.{kind}"]
            out[q + f"mlp.c_fc.{kind}"] = sd[p + f"mlp.fc1.{kind}"]
            out[q + f"mlp.c_proj.{kind}"] = sd[p + f"mlp.fc2.{kind}"]
        i += 1
    return out


# ------------------------------------------------------------------------------------------------ HED


def hed_shapes(widths: tuple[int, ...] = (4, 8, 8, 16, 16)) -> dict[str, tuple[int, ...]]:
    """`ControlNetHED.pth` keys (norm, block1-5 with 2,2,3,3,3 convs and a 1-channel projection) at small widths."""
    s: dict[str, tuple[int, ...]] = {"norm": (1, 3, 1, 1)}
    c_in = 3
    for k, (width, n) in enumerate(zip(widths, (2, 2, 3, 3, 3)), start=1):
        for j in range(n):
            s[f"block{k}.convs.{j}.weight"] = (width, c_in if j == 0 else width, 3, 3)
            s[f"block{k}.convs.{j}.bias"] = (width,)
        s[f"block{k}.projection.weight"] = (1, width, 1, 1)
        s[f"block{k}.projection.bias"] = (1,)
        c_in = width
    return s


def tiny_hed(seed: int = 0, widths: tuple[int, ...] = (4, 8, 8, 16, 16)) -> dict[str, torch.Tensor]:
    sd = random_state_dict(hed_shapes(widths), seed)
    sd["norm"] = torch.tensor([104.0, 117.0, 123.0]).view(1, 3, 1, 1)  # an image mean in 0..255 units
    gen = torch.Generator().manual_seed(seed + 7)
    for k in sd:  # non-zero biases so that the projections are not symmetric around 0
        if k.endswith("bias"):
            sd[k] = 0.1 * torch.randn(sd[k].shape, generator=gen)
    for k in sd:  # inputs are 0..255: scale the first conv so activations stay O(1)
        if k == "block1.convs.0.weight":
            sd[k] = sd[k] / 64.0
    return sd


def guidance_test_image():
    """A 90x120 uint8 RGB test picture: a light box, a dark bar and mild noise (deterministic)."""
    import numpy as np

    rng = np.random.default_rng(1)
    img = np.zeros((90, 120, 3), np.int64)
    img[20:70, 30:90] = 200
    img[40:50] = 50
    img[:, 100:] = (180, 90, 30)
    return (img + rng.integers(0, 30, img.shape)).clip(0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ ControlNet


def tiny_unet_config(sdxl: bool = False):
    """A two-level UNet config: SD1.5-style (conv proj, 8 heads, no ADM) or SDXL-style (linear proj, ADM y)."""
    from comfy_core.models.unet import UNetConfig

    return UNetConfig(
        in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1),
        transformer_depth=(1, 1), transformer_depth_output=(1, 1, 1, 1), transformer_depth_middle=1,
        context_dim=16, use_linear_in_transformer=sdxl, num_heads=8 if not sdxl else -1,
        num_head_channels=-1 if not sdxl else 64, adm_in_channels=8 + 6 * 256 if sdxl else None,
    )


def _shapes_of(module_factory) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        module = module_factory()
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def tiny_unet_sd(cfg, seed: int = 0) -> dict[str, torch.Tensor]:
    from comfy_core.models.unet import UNetModel

    return random_state_dict(_shapes_of(lambda: UNetModel(cfg)), seed)


def tiny_controlnet_sd(cfg, seed: int = 1, prefix: str = "control_model.") -> dict[str, torch.Tensor]:
    """A ControlNet in the LDM layout whose zero convs are NOT zero (so that its residuals show)."""
    from comfy_core.models.controlnet import ControlNetModel

    sd = random_state_dict(_shapes_of(lambda: ControlNetModel(cfg, 3)), seed)
    return {prefix + k: v for k, v in sd.items()}


def tiny_diffusion_model(cfg, seed: int = 0):
    """A DiffusionModel around a random tiny UNet (family sd1 or sdxl by the config)."""
    from comfy_core.models.detect import ModelSpec
    from comfy_core.models.diffusion import DiffusionModel
    from comfy_core.models.unet import UNetModel

    with torch.device("meta"):
        unet = UNetModel(cfg)
    unet.load_state_dict(tiny_unet_sd(cfg, seed), assign=True)
    family = "sdxl" if cfg.adm_in_channels else "sd1"
    return DiffusionModel(unet.eval().requires_grad_(False), ModelSpec(family, cfg))
