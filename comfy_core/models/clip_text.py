"""CLIP text transformers (Radford et al. 2021) in the two checkpoint layouts Stable Diffusion files use.

- `HFClipText`: Hugging Face `CLIPTextModel` names (`text_model.encoder.layers.N.self_attn.q_proj`...): OpenAI CLIP-L/14
  in SD1 (`cond_stage_model.transformer.`) and SDXL (`conditioner.embedders.0.transformer.`), and standalone files.
- `OpenClipText`: OpenCLIP names (`transformer.resblocks.N.attn.in_proj_weight`...): ViT-H/14 in SD2
  (`cond_stage_model.model.`), ViT-bigG/14 in SDXL (`conditioner.embedders.1.model.`) and the refiner.

Parameter names are the checkpoint keys minus their prefix, so loading is `load_state_dict` and a LoRA can address a
weight by its checkpoint key. Every size is read from tensor shapes (`detect_config`), so tiny test models run through
the same code. Weights may be stored in fp16; every op casts them to the activations' dtype (float32), which is how
ComfyUI runs CLIP ("manual cast").
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelLoadError

Layout = Literal["hf", "openclip"]
Activation = Literal["quick_gelu", "gelu"]


@dataclass(frozen=True)
class TextConfig:
    layout: Layout
    width: int
    layers: int
    heads: int
    mlp: int
    vocab: int
    positions: int
    activation: Activation
    projection: int | None  # text_projection output width; None when the file has no projection


def heads_for_width(width: int) -> int:
    """64-wide heads as in every released CLIP text tower; tiny widths (not a multiple of 64) use 16-wide heads."""
    if width % 64 == 0:
        return width // 64
    return width // 16 if width % 16 == 0 else 1


# --- ops that keep weights in their storage dtype and compute in the input's dtype --------------------------------


class CastLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class Embedding(nn.Embedding):
    """nn.Embedding without the random init on the meta device: the weights come from a file, and normal_ on a meta
    tensor runs through torch._refs, whose first use imports torch._dynamo (~2 s of a process's first model load)."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class CastLayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def _activation(name: Activation):
    if name == "quick_gelu":  # OpenAI CLIP's sigmoid approximation
        return lambda x: x * torch.sigmoid(1.702 * x)
    return F.gelu


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    B, T, C = q.shape
    q, k, v = (t.view(B, T, heads, C // heads).transpose(1, 2) for t in (q, k, v))  # [B, h, T, d]
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return y.transpose(1, 2).reshape(B, T, C)


# --- Hugging Face layout --------------------------------------------------------------------------------------------


class HFAttention(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.heads = cfg.heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (CastLinear(cfg.width, cfg.width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(_causal_attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads))


class HFMLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.fc1 = CastLinear(cfg.width, cfg.mlp)
        self.fc2 = CastLinear(cfg.mlp, cfg.width)
        self.act = _activation(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class HFLayer(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.layer_norm1 = CastLayerNorm(cfg.width)
        self.self_attn = HFAttention(cfg)
        self.layer_norm2 = CastLayerNorm(cfg.width)
        self.mlp = HFMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class HFEmbeddings(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.token_embedding = Embedding(cfg.vocab, cfg.width)
        self.position_embedding = Embedding(cfg.positions, cfg.width)


class HFEncoder(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.layers = nn.ModuleList(HFLayer(cfg) for _ in range(cfg.layers))


class HFTextModel(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.embeddings = HFEmbeddings(cfg)
        self.encoder = HFEncoder(cfg)
        self.final_layer_norm = CastLayerNorm(cfg.width)


class TextTransformer(nn.Module):
    """What the encoders share: token lookup, the residual stack with an optional tap, final LN, EOS pooling."""

    cfg: TextConfig

    # layout hooks
    def token_weight(self) -> torch.Tensor: raise NotImplementedError
    def position_weight(self) -> torch.Tensor: raise NotImplementedError
    def blocks(self) -> nn.ModuleList: raise NotImplementedError
    def final_norm(self) -> nn.Module: raise NotImplementedError
    def project(self, pooled: torch.Tensor) -> torch.Tensor | None: raise NotImplementedError

    def embed_tokens(self, ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[B, T] ids -> [B, T, width] token embeddings (no positions yet)."""
        return F.embedding(ids, self.token_weight()).to(dtype)

    def forward(self, tokens_embed: torch.Tensor, eos_index: torch.Tensor, layer: int | None = None,
                norm_hidden: bool = True) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """tokens_embed [B, T, C] -> (final-LN'd last layer [B,T,C], tapped hidden layer or None,
        pooled = final-LN'd state at `eos_index` [B, C], projected pooled [B, P] or None)."""
        x = tokens_embed + self.position_weight()[: tokens_embed.shape[1]].to(tokens_embed.dtype)
        blocks = self.blocks()
        tap = None if layer is None else (layer if layer >= 0 else len(blocks) + layer)
        hidden = None
        for i, block in enumerate(blocks):
            x = block(x)
            if i == tap:
                hidden = x.clone()
        norm = self.final_norm()
        x = norm(x)
        if hidden is not None and norm_hidden:
            hidden = norm(hidden)
        pooled = x[torch.arange(x.shape[0], device=x.device), eos_index]
        return x, hidden, pooled, self.project(pooled)


class HFClipText(TextTransformer):
    """transformers' CLIPTextModel(WithProjection) key layout."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.text_model = HFTextModel(cfg)
        if cfg.projection is not None:
            self.text_projection = CastLinear(cfg.width, cfg.projection, bias=False)

    def token_weight(self) -> torch.Tensor:
        return self.text_model.embeddings.token_embedding.weight

    def position_weight(self) -> torch.Tensor:
        return self.text_model.embeddings.position_embedding.weight

    def blocks(self) -> nn.ModuleList:
        return self.text_model.encoder.layers

    def final_norm(self) -> nn.Module:
        return self.text_model.final_layer_norm

    def project(self, pooled: torch.Tensor) -> torch.Tensor | None:
        return self.text_projection(pooled) if self.cfg.projection is not None else None


# --- OpenCLIP layout ------------------------------------------------------------------------------------------------


class OpenClipAttention(nn.Module):
    """nn.MultiheadAttention's parameter layout: q, k, v rows stacked in `in_proj_weight` [3C, C]."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.heads = cfg.heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * cfg.width, cfg.width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * cfg.width))
        self.out_proj = CastLinear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = F.linear(x, self.in_proj_weight.to(x.dtype), self.in_proj_bias.to(x.dtype))
        q, k, v = qkv.chunk(3, dim=-1)
        return self.out_proj(_causal_attention(q, k, v, self.heads))


class OpenClipMLP(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.c_fc = CastLinear(cfg.width, cfg.mlp)
        self.c_proj = CastLinear(cfg.mlp, cfg.width)
        self.act = _activation(cfg.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class OpenClipBlock(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.ln_1 = CastLayerNorm(cfg.width)
        self.attn = OpenClipAttention(cfg)
        self.ln_2 = CastLayerNorm(cfg.width)
        self.mlp = OpenClipMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class OpenClipStack(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.resblocks = nn.ModuleList(OpenClipBlock(cfg) for _ in range(cfg.layers))


class OpenClipText(TextTransformer):
    """open_clip's text tower key layout; `text_projection` [C, P] is applied as x @ P."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.token_embedding = Embedding(cfg.vocab, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.positions, cfg.width))
        self.transformer = OpenClipStack(cfg)
        self.ln_final = CastLayerNorm(cfg.width)
        if cfg.projection is not None:
            self.text_projection = nn.Parameter(torch.empty(cfg.width, cfg.projection))

    def token_weight(self) -> torch.Tensor:
        return self.token_embedding.weight

    def position_weight(self) -> torch.Tensor:
        return self.positional_embedding

    def blocks(self) -> nn.ModuleList:
        return self.transformer.resblocks

    def final_norm(self) -> nn.Module:
        return self.ln_final

    def project(self, pooled: torch.Tensor) -> torch.Tensor | None:
        if self.cfg.projection is None:
            return None
        return pooled @ self.text_projection.to(pooled.dtype)


# --- names for LoRA key maps -------------------------------------------------------------------------------------

_OPENCLIP_TO_HF = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                   "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def hf_parameter_map(model: TextTransformer) -> dict[str, tuple[str, slice | None]]:
    """HF CLIPTextModel parameter name (what LoRA key maps address, e.g. `text_model.encoder.layers.0.self_attn.
    q_proj.weight`) -> (this module's parameter name, rows of it or None). For OpenCLIP modules q/k/v are row
    blocks of `in_proj_weight`/`in_proj_bias`; `text_projection` (transposed in OpenCLIP) is not mapped."""
    if isinstance(model, HFClipText):
        return {name: (name, None) for name in model.state_dict()}
    C = model.cfg.width
    out: dict[str, tuple[str, slice | None]] = {
        "text_model.embeddings.token_embedding.weight": ("token_embedding.weight", None),
        "text_model.embeddings.position_embedding.weight": ("positional_embedding", None),
        "text_model.final_layer_norm.weight": ("ln_final.weight", None),
        "text_model.final_layer_norm.bias": ("ln_final.bias", None),
    }
    for i in range(model.cfg.layers):
        src, dst = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for a, b in _OPENCLIP_TO_HF.items():
            for s in ("weight", "bias"):
                out[f"{dst}{b}.{s}"] = (f"{src}{a}.{s}", None)
        for j, n in enumerate("qkv"):
            for s in ("weight", "bias"):
                out[f"{dst}self_attn.{n}_proj.{s}"] = (f"{src}attn.in_proj_{s}", slice(j * C, (j + 1) * C))
    return out


# --- shapes -> config -----------------------------------------------------------------------------------------------

# Keys some files carry that inference does not use.
IGNORED_KEYS = ("text_model.embeddings.position_ids", "logit_scale", "attn_mask")

_HF_TOKEN = "text_model.embeddings.token_embedding.weight"
_OC_TOKEN = "token_embedding.weight"


def detect_layout(keys: Collection[str]) -> Layout | None:
    if _HF_TOKEN in keys:
        return "hf"
    if _OC_TOKEN in keys and "positional_embedding" in keys:
        return "openclip"
    return None


def _count_layers(keys: Collection[str], stem: str) -> int:
    indices = {int(k[len(stem):].split(".", 1)[0]) for k in keys if k.startswith(stem)}
    if not indices or indices != set(range(max(indices) + 1)):
        raise ModelLoadError(f"text encoder layers under '{stem}' are missing or not numbered 0..N-1")
    return len(indices)


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise ModelLoadError(f"text encoder tensor '{key}' is missing")
    getter = getattr(sd, "shape", None)  # lazy state dicts answer shapes from the header
    return tuple(getter(key)) if callable(getter) else tuple(sd[key].shape)


def detect_config(sd: Mapping[str, torch.Tensor], activation: Activation, keys: Collection[str] | None = None) -> TextConfig:
    """All sizes from tensor shapes of a text-encoder state dict (keys without the checkpoint prefix)."""
    keys = set(sd.keys()) if keys is None else keys
    layout = detect_layout(keys)
    if layout is None:
        raise ModelLoadError(f"not a CLIP text encoder: neither '{_HF_TOKEN}' nor '{_OC_TOKEN}' + "
                             "'positional_embedding' found")
    if layout == "hf":
        vocab, width = _shape(sd, _HF_TOKEN)
        positions = _shape(sd, "text_model.embeddings.position_embedding.weight")[0]
        layers = _count_layers(keys, "text_model.encoder.layers.")
        mlp = _shape(sd, "text_model.encoder.layers.0.mlp.fc1.weight")[0]
        proj = _shape(sd, "text_projection.weight")[0] if "text_projection.weight" in keys else None
    else:
        vocab, width = _shape(sd, _OC_TOKEN)
        positions = _shape(sd, "positional_embedding")[0]
        layers = _count_layers(keys, "transformer.resblocks.")
        mlp = _shape(sd, "transformer.resblocks.0.mlp.c_fc.weight")[0]
        proj = _shape(sd, "text_projection")[1] if "text_projection" in keys else None
    return TextConfig(layout, width, layers, heads_for_width(width), mlp, vocab, positions, activation, proj)


def build_text_model(cfg: TextConfig) -> TextTransformer:
    """The module on the meta device (no memory); fill it with `load_weights`."""
    with torch.device("meta"):
        return HFClipText(cfg) if cfg.layout == "hf" else OpenClipText(cfg)


def load_weights(model: TextTransformer, sd: Mapping[str, torch.Tensor], *, device: torch.device | str,
                 dtype: torch.dtype) -> TextTransformer:
    """Read exactly the module's parameters from `sd` (float tensors cast to `dtype`), checking every shape."""
    expected = model.state_dict(keep_vars=True)
    missing = [k for k in expected if k not in sd]
    if missing:
        raise ModelLoadError(f"text encoder tensors missing: {', '.join(missing[:8])}"
                             + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else ""))
    tensors = {}
    for key, param in expected.items():
        t = sd[key]
        if tuple(t.shape) != tuple(param.shape):
            raise ModelLoadError(f"text encoder tensor '{key}' has shape {list(t.shape)}, expected {list(param.shape)}")
        if not t.is_floating_point():
            raise ModelLoadError(f"text encoder tensor '{key}' is not a float tensor ({t.dtype})")
        tensors[key] = t.to(device=device, dtype=dtype)
    model.load_state_dict(tensors, strict=True, assign=True)
    model.requires_grad_(False)
    return model.eval()
