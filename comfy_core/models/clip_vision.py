"""CLIP vision towers (OpenAI ViT-L/14, OpenCLIP ViT-H/14 and ViT-bigG/14) as ComfyUI's CLIP_VISION.

Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision" (arXiv:2103.00020).

Files come in two layouts: Hugging Face transformers (`vision_model.*` + `visual_projection.weight`) and OpenCLIP /
OpenAI (`visual.*`, also found under `embedder.model.visual.` inside SD2.1 unCLIP checkpoints). The OpenCLIP layout is
renamed to the HF one on load. Every size is read from tensor shapes, so tiny test towers load too; what the weights do
not store (heads, activation) follows ComfyUI's configs: 16 heads always, quick_gelu only for OpenAI's ViT-L.

`ClipVisionModel.encode_image(image, crop)` gives a `ClipVisionOutput` with ComfyUI's CLIP_VISION_OUTPUT fields:
`image_embeds` [B, proj], `last_hidden_state` [B, T, width], `penultimate_hidden_states` [B, T, width].
"""
from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError
from .clip_text import Embedding
from .state_dict import open_state_dict

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_LAYER_KEY = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")
_OPENCLIP_MARKER = "transformer.resblocks.0.attn.in_proj_weight"


@dataclass(frozen=True)
class VisionConfig:
    """Sizes of a vision tower; `variant` is ComfyUI's config name ("g", "h", "vitl", "vitl_336") or "custom"."""

    width: int
    layers: int
    heads: int
    mlp: int
    patch: int
    image_size: int
    projection: int
    act: str  # "gelu" | "quick_gelu"
    variant: str
    eps: float = 1e-5


# ---------------------------------------------------------------------------------------------------- key layouts


def openclip_to_hf(sd: Mapping[str, torch.Tensor], prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """Rename an OpenCLIP/OpenAI `visual.*` state dict to the HF layout (q/k/v split from `in_proj`)."""
    renames = {
        "class_embedding": "vision_model.embeddings.class_embedding",
        "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "ln_pre.weight": "vision_model.pre_layrnorm.weight",  # sic: HF's spelling
        "ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "ln_post.weight": "vision_model.post_layernorm.weight",
        "ln_post.bias": "vision_model.post_layernorm.bias",
    }
    block = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
             "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
    out: dict[str, torch.Tensor] = {}
    for key in sd:
        if not key.startswith(prefix):
            continue
        name, value = key[len(prefix):], sd[key]
        if name in renames:
            out[renames[name]] = value
        elif name == "proj":
            out["visual_projection.weight"] = value.t().contiguous()  # [width, proj] -> [proj, width]
        elif name.startswith("transformer.resblocks."):
            index, rest = name[len("transformer.resblocks."):].split(".", 1)
            base = f"vision_model.encoder.layers.{index}."
            if rest.startswith("attn.in_proj_"):
                kind = rest.rsplit("_", 1)[1]  # weight | bias
                for part, chunk in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                    out[f"{base}self_attn.{part}_proj.{kind}"] = chunk.contiguous()
                continue
            module, param = rest.rsplit(".", 1)
            out[base + block.get(module, module) + "." + param] = value
    return out


def find_vision_prefix(sd: Mapping[str, torch.Tensor]) -> str | None:
    """Where a vision tower sits in a file: "" (vision files), "embedder.model." (SD2.1 unCLIP), or None."""
    for prefix in ("", "embedder.model.", "conditioner.embedders.0.model."):
        if prefix + "visual." + _OPENCLIP_MARKER in sd or prefix + "vision_model.embeddings.class_embedding" in sd:
            return prefix
    return None


def to_hf_layout(sd: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The HF-layout vision state dict of a file in either layout, under an optional outer prefix."""
    if prefix + "visual." + _OPENCLIP_MARKER in sd:
        return openclip_to_hf(sd, prefix + "visual.")
    if prefix and prefix + _OPENCLIP_MARKER in sd:  # prefix already ends in "visual."
        return openclip_to_hf(sd, prefix)
    keep = (prefix + "vision_model.", prefix + "visual_projection.")
    return {k[len(prefix):]: sd[k] for k in sd if k.startswith(keep)}  # reads only the vision tensors


def _heads_for(width: int) -> int:
    """ComfyUI's vision configs all use 16 heads; tiny towers fall back to the largest divisor <= 16."""
    return max(h for h in range(1, 17) if width % h == 0)


def detect_config(sd: dict[str, torch.Tensor]) -> VisionConfig:
    """Sizes from shapes; the variant name by depth as ComfyUI chooses its JSON config (48 G, 32 H, 24 L)."""
    try:
        width = sd["vision_model.embeddings.class_embedding"].shape[0]
        patch = sd["vision_model.embeddings.patch_embedding.weight"].shape[-1]
        positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
        mlp = sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
        projection = sd["visual_projection.weight"].shape[0]
    except KeyError as e:
        raise ModelLoadError(f"not a CLIP vision model: missing tensor {e.args[0]!r}") from None
    layers = 1 + max(int(m.group(1)) for k in sd if (m := _LAYER_KEY.match(k)))
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ModelLoadError(f"CLIP vision position embedding has {positions} rows, not a square grid + 1")
    variant = {48: "g", 32: "h", 24: "vitl"}.get(layers, "custom")
    if variant == "vitl" and positions == 577:
        variant = "vitl_336"
    act = "quick_gelu" if variant.startswith("vitl") else "gelu"  # OpenAI ViT-L was trained with quick_gelu
    heads = 16 if variant != "custom" else _heads_for(width)
    return VisionConfig(width, layers, heads, mlp, patch, grid * patch, projection, act, variant)


# ---------------------------------------------------------------------------------------------------- modules


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (p(x).view(B, T, self.heads, C // self.heads).transpose(1, 2)  # [B, h, T, d]
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = h * torch.sigmoid(1.702 * h) if self.act == "quick_gelu" else F.gelu(h)
        return self.fc2(h)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.self_attn = Attention(cfg.width, cfg.heads)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = MLP(cfg.width, cfg.mlp, cfg.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))  # pre-norm residual blocks
        return x + self.mlp(self.layer_norm2(x))


class Embeddings(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.empty(cfg.width))
        self.patch_embedding = nn.Conv2d(3, cfg.width, cfg.patch, stride=cfg.patch, bias=False)
        self.position_embedding = Embedding((cfg.image_size // cfg.patch) ** 2 + 1, cfg.width)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # [B, 3, H, W] -> [B, N, C]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1) + self.position_embedding.weight.to(x.dtype)


class Encoder(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))


class VisionTransformer(nn.Module):
    """HF `CLIPVisionModel.vision_model` (keys `vision_model.*`)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.encoder = Encoder(cfg)
        self.post_layernorm = nn.LayerNorm(cfg.width, eps=cfg.eps)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(last hidden state, output of layer N-2, post-normed CLS token)."""
        x = self.pre_layrnorm(self.embeddings(pixels))
        penultimate = x
        for i, layer in enumerate(self.encoder.layers):
            x = layer(x)
            if i == len(self.encoder.layers) - 2:
                penultimate = x
        return x, penultimate, self.post_layernorm(x[:, 0, :])


class CLIPVisionModelProjection(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.config = cfg
        self.vision_model = VisionTransformer(cfg)
        self.visual_projection = nn.Linear(cfg.width, cfg.projection, bias=False)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        last, penultimate, pooled = self.vision_model(pixels)
        return last, penultimate, self.visual_projection(pooled)


# ---------------------------------------------------------------------------------------------------- preprocessing


def clip_preprocess(image: torch.Tensor, size: int = 224, mean: tuple[float, ...] = CLIP_MEAN,
                    std: tuple[float, ...] = CLIP_STD, crop: bool = True) -> torch.Tensor:
    """IMAGE [B, H, W, C] in 0..1 -> normalised pixels [B, 3, size, size], as ComfyUI's `clip_preprocess`.

    Shortest side to `size` (bicubic, antialiased) then a centre crop, or a plain resize to size x size when `crop`
    is False; values are snapped to 1/255 steps before the mean/std normalisation.
    """
    image = image[..., :3].movedim(-1, 1)  # [B, 3, H, W]
    if image.shape[2] != size or image.shape[3] != size:
        if crop:
            scale = size / min(image.shape[2], image.shape[3])
            target = (round(scale * image.shape[2]), round(scale * image.shape[3]))
        else:
            target = (size, size)
        image = F.interpolate(image, size=target, mode="bicubic", antialias=True)
        top, left = (image.shape[2] - size) // 2, (image.shape[3] - size) // 2
        image = image[:, :, top:top + size, left:left + size]
    image = torch.clip(255.0 * image, 0, 255).round() / 255.0
    mean_t = torch.tensor(mean, device=image.device, dtype=image.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, device=image.device, dtype=image.dtype).view(3, 1, 1)
    return (image - mean_t) / std_t


# ---------------------------------------------------------------------------------------------------- public API


class ClipVisionOutput:
    """ComfyUI's CLIP_VISION_OUTPUT: attributes that can also be read and written as items (`out["image_embeds"]`)."""

    image_embeds: torch.Tensor
    last_hidden_state: torch.Tensor
    penultimate_hidden_states: torch.Tensor

    def __init__(self, **fields: Any):
        for key, value in fields.items():
            setattr(self, key, value)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def __contains__(self, key: str) -> bool:
        return hasattr(self, key)


class ClipVisionModel:
    """A loaded CLIP vision tower (ComfyUI's CLIP_VISION object): `encode_image(image, crop=True)`."""

    def __init__(self, model: CLIPVisionModelProjection, device: torch.device, dtype: torch.dtype):
        self.model = model.eval().requires_grad_(False)
        self.config = model.config
        self.device, self.dtype = device, dtype
        self.image_size, self.image_mean, self.image_std = self.config.image_size, CLIP_MEAN, CLIP_STD

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor, crop: bool = True) -> ClipVisionOutput:
        pixels = clip_preprocess(image.to(self.device, torch.float32), self.image_size, crop=crop)
        last, penultimate, embeds = self.model(pixels.to(self.dtype))
        out = ClipVisionOutput(
            last_hidden_state=last.float().cpu(),
            image_embeds=embeds.float().cpu(),
            penultimate_hidden_states=penultimate.float().cpu(),
        )
        out.image_sizes = [image.shape[1:3]] * image.shape[0]
        return out

    def get_sd(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


def clip_vision_from_state_dict(sd: Mapping[str, torch.Tensor], prefix: str = "", *,
                                device: torch.device | str = "cpu",
                                dtype: torch.dtype = torch.float32) -> ClipVisionModel:
    """Build a tower from a state dict in either layout; extra keys (e.g. `text_model.*`) are ignored."""
    sd = to_hf_layout(sd, prefix)
    cfg = detect_config(sd)
    with torch.device("meta"):
        model = CLIPVisionModelProjection(cfg)
    expected = model.state_dict().keys()
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ModelLoadError(f"CLIP vision weights incomplete: {len(missing)} tensors missing, e.g. {missing[:3]}")
    model.load_state_dict({k: sd[k].to(dtype) for k in expected}, assign=True)
    log.info("CLIP vision %s: %d layers, width %d, projection %d", cfg.variant, cfg.layers, cfg.width,
             cfg.projection)
    return ClipVisionModel(model.to(device), torch.device(device), dtype)


def load_clip_vision(path: str, *, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> ClipVisionModel:
    """Load a CLIP vision file (safetensors or torch pickle) in the HF or OpenCLIP layout."""
    sd = open_state_dict(path)
    try:
        return clip_vision_from_state_dict(sd, device=device, dtype=dtype)
    except ModelLoadError as e:
        raise ModelLoadError(f"{path}: {e}") from None
    finally:
        sd.close()
