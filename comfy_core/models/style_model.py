"""T2I-Adapter style model (ComfyUI's comfy/t2i_adapter StyleAdapter, loaded by comfy.sd.load_style_model).

A CLIP vision tower's last hidden state [B, 1+HW, width] gets `num_token` learned style tokens appended, runs
through a few pre-LN transformer blocks, and the style tokens come out projected to the UNet's context width:
[B, num_token, context_dim], extra cross-attention tokens for StyleModelApply.

Sizes come from the file's shapes (the real one: width 1024, 8 tokens, 3 layers, context 768); the head count is
fixed at 8 as in ComfyUI. Flux "redux" files are not supported (SD families only).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelLoadError
from .checkpoint import open_model_file

STYLE_HEADS = 8  # ComfyUI builds StyleAdapter(num_head=8) whatever the file


class _LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back (the fp16-safe variant the adapter uses)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class _Block(nn.Module):
    """Pre-LN residual attention block (CLIP's ResidualAttentionBlock, QuickGELU MLP); sequence-first input."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = _LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, width * 4))
        self.mlp.add_module("c_proj", nn.Linear(width * 4, width))
        self.ln_2 = _LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))  # QuickGELU


class StyleAdapter(nn.Module):
    def __init__(self, width: int, context_dim: int, layers: int, num_token: int, heads: int = STYLE_HEADS):
        super().__init__()
        self.num_token = num_token
        self.transformer_layes = nn.Sequential(*[_Block(width, heads) for _ in range(layers)])  # (sic) file keys
        self.style_embedding = nn.Parameter(torch.zeros(1, num_token, width))
        self.ln_post = _LayerNorm(width)
        self.ln_pre = _LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, context_dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        style = self.style_embedding.to(hidden).expand(hidden.shape[0], -1, -1)  # [B, num_token, width]
        x = self.ln_pre(torch.cat([hidden, style], dim=1))
        x = self.transformer_layes(x.permute(1, 0, 2)).permute(1, 0, 2)  # NLD -> LND -> NLD
        return self.ln_post(x[:, -self.num_token:, :]) @ self.proj.to(x)


class StyleModel:
    """STYLE_MODEL socket value: `get_cond(clip_vision_output)` -> style tokens [B, num_token, context_dim]."""

    def __init__(self, adapter: StyleAdapter):
        self.model = adapter

    def get_cond(self, clip_vision_output) -> torch.Tensor:
        hidden = clip_vision_output.last_hidden_state
        param = self.model.proj
        with torch.inference_mode():
            return self.model(hidden.to(param.device, param.dtype))

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.parameters())


def style_model_from_state_dict(sd: Mapping[str, torch.Tensor], source: str = "state dict") -> StyleModel:
    if "style_embedding" not in sd:
        what = "a Flux redux model" if "redux_down.weight" in sd else "no 'style_embedding'"
        raise ModelLoadError(f"invalid style model {source}: {what} (T2I style adapters are supported)")
    _, num_token, width = sd["style_embedding"].shape
    layers = len({k.split(".")[1] for k in sd if k.startswith("transformer_layes.")})
    adapter = StyleAdapter(width, sd["proj"].shape[1], layers, num_token)
    try:
        adapter.load_state_dict({k: sd[k] for k in sd})
    except RuntimeError as e:
        raise ModelLoadError(f"invalid style model {source}: {e}") from None
    return StyleModel(adapter.eval().requires_grad_(False))


def load_style_model(path: str | Path, *, device: torch.device | str = "cpu") -> StyleModel:
    """Kept in float32 whatever the engine's dtype: ComfyUI runs the adapter unconverted (its LayerNorms are
    float32 anyway)."""
    sd = open_model_file(path)
    try:
        model = style_model_from_state_dict(sd, str(path))
    finally:
        sd.close()
    model.model.to(device=device, dtype=torch.float32)
    return model
