"""GLIGEN (Li et al. 2023) text-box grounding for SD1.x UNets, as ComfyUI's comfy/gligen.py runs it.

A GLIGEN file holds one gated self-attention "fuser" per UNet SpatialTransformer (keys `<block>.<n>....fuser.*`)
plus a `position_net`. For each conditioning entry with boxes, the position net turns every (text embedding, box)
pair into an object token; in every transformer block, between self- and cross-attention, the fuser of that
SpatialTransformer attends over [visual tokens ‖ object tokens] and adds the visual part back with tanh-gates:

    x += tanh(α_attn) · Attn(LN([x, Linear(objs)]))[:N_visual]
    x += tanh(α_dense) · FF(LN(x))

Boxes are given in latent pixels and normalised by the latent size of the model call; up to 30 objects, the
unused slots filled with the learnt null embeddings.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError
from .checkpoint import open_model_file
from .unet import CrossAttention, FeedForward

MAX_OBJECTS = 30
FOURIER_FREQS = 8
BLOCK_GROUPS = ("input_blocks", "middle_block", "output_blocks")


class GatedSelfAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        self.linear = nn.Linear(context_dim, query_dim)
        self.attn = CrossAttention(query_dim, None, heads, dim_head)
        self.ff = FeedForward(query_dim)
        self.norm1, self.norm2 = nn.LayerNorm(query_dim), nn.LayerNorm(query_dim)
        self.alpha_attn = nn.Parameter(torch.tensor(0.0))
        self.alpha_dense = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor, objs: torch.Tensor) -> torch.Tensor:
        n_visual = x.shape[1]
        joint = self.norm1(torch.cat([x, self.linear(objs)], dim=1))  # [B, N_visual + objects, C]
        x = x + torch.tanh(self.alpha_attn) * self.attn(joint)[:, :n_visual]
        return x + torch.tanh(self.alpha_dense) * self.ff(self.norm2(x))


def fourier_embed(boxes: torch.Tensor, freqs: int = FOURIER_FREQS, temperature: float = 100.0) -> torch.Tensor:
    """[..., 4] -> [..., 4·2·freqs]: sin and cos of each coordinate at temperature^(i/freqs), per frequency."""
    bands = temperature ** (torch.arange(freqs, dtype=torch.float32) / freqs)
    parts = [f(band * boxes) for band in bands.tolist() for f in (torch.sin, torch.cos)]
    return torch.cat(parts, dim=-1)


class PositionNet(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: int = 512):
        super().__init__()
        self.position_dim = FOURIER_FREQS * 2 * 4  # sin & cos of x1, y1, x2, y2
        self.linears = nn.Sequential(nn.Linear(in_dim + self.position_dim, hidden), nn.SiLU(),
                                     nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))
        self.null_positive_feature = nn.Parameter(torch.zeros(in_dim))
        self.null_position_feature = nn.Parameter(torch.zeros(self.position_dim))

    def forward(self, boxes: torch.Tensor, masks: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """boxes [B, n, 4], masks [B, n] (1 = a real object), embeddings [B, n, in_dim] -> objects [B, n, out]."""
        masks = masks.unsqueeze(-1)
        null_text = self.null_positive_feature.to(boxes).view(1, 1, -1)
        null_box = self.null_position_feature.to(boxes).view(1, 1, -1)
        embeddings = embeddings * masks + (1 - masks) * null_text
        positions = fourier_embed(boxes) * masks + (1 - masks) * null_box
        return self.linears(torch.cat([embeddings, positions], dim=-1))


class Gligen(nn.Module):
    """The GLIGEN socket value: fusers in SpatialTransformer order, the position net and the text width."""

    def __init__(self, fusers: list[GatedSelfAttention], position_net: PositionNet, key_dim: int):
        super().__init__()
        self.module_list = nn.ModuleList(fusers)
        self.position_net = position_net
        self.key_dim = key_dim

    def memory_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def position_patch(self, latent_shape: torch.Size, boxes: list[tuple], device: torch.device):
        """The "middle_patch" for one model call on latents of `latent_shape` [B, C, h, w]; `boxes` are
        (text embedding [1, key_dim], height, width, y, x) in latent pixels."""
        batch, _, h, w = latent_shape
        count = min(len(boxes), MAX_OBJECTS)
        coords = torch.zeros(MAX_OBJECTS, 4)
        embeddings = torch.zeros(MAX_OBJECTS, self.position_net.null_positive_feature.shape[0])  # = key_dim in SD1
        masks = torch.zeros(MAX_OBJECTS)
        for i, (embedding, bh, bw, y, x) in enumerate(boxes[:count]):
            coords[i] = torch.tensor([x / w, y / h, (x + bw) / w, (y + bh) / h])
            embeddings[i] = embedding.reshape(-1).float().cpu()
            masks[i] = 1.0
        param = self.position_net.null_positive_feature
        with torch.no_grad():
            objs = self.position_net(*(t.unsqueeze(0).repeat(batch, *([1] * t.ndim)).to(param)
                                       for t in (coords, masks, embeddings)))  # [B, 30, out_dim]

        def middle_patch(x: torch.Tensor, extra: dict[str, Any]) -> torch.Tensor:
            fuser = self.module_list[extra["transformer_index"]]
            return fuser.to(x.device, x.dtype)(x, objs.to(x.device, x.dtype))

        return middle_patch


def _fuser(sd: Mapping[str, torch.Tensor], keys: list[tuple[str, str]], source: str) -> GatedSelfAttention:
    weights = {short: sd[full] for full, short in keys}
    if "linear.weight" not in weights:
        raise ModelLoadError(f"{source}: GLIGEN fuser without linear.weight")
    query_dim, key_dim = weights["linear.weight"].shape
    heads, dim_head = (8, query_dim // 8) if key_dim == 768 else (query_dim // 64, 64)  # SD1 vs SD2 head layout
    fuser = GatedSelfAttention(query_dim, key_dim, heads, dim_head)
    missing, _ = fuser.load_state_dict(weights, strict=False)
    if missing:
        raise ModelLoadError(f"{source}: GLIGEN fuser is missing {missing[:3]}")
    return fuser


def gligen_from_state_dict(sd: Mapping[str, torch.Tensor], source: str = "state dict") -> Gligen:
    names = list(sd)
    fusers, key_dim = [], 768
    for group in BLOCK_GROUPS:
        for number in range(20):
            tag = f"{group}.{number}."
            keys = [(k, k.split(".fuser.")[-1]) for k in names if tag in k and ".fuser." in k]
            if keys:
                fusers.append(_fuser(sd, keys, source))
                key_dim = fusers[-1].linear.in_features
    if "position_net.null_positive_feature" not in sd or not fusers:
        raise ModelLoadError(f"{source}: not a GLIGEN model (no position_net / fuser weights)")
    net = PositionNet(sd["position_net.null_positive_feature"].shape[0], sd["position_net.linears.4.weight"].shape[0])
    prefix = "position_net."
    missing, _ = net.load_state_dict({k[len(prefix):]: sd[k] for k in names if k.startswith(prefix)}, strict=False)
    if missing:
        raise ModelLoadError(f"{source}: GLIGEN position net is missing {missing[:3]}")
    return Gligen(fusers, net, key_dim).eval().requires_grad_(False)


def load_gligen(path: str | Path, *, device: torch.device | str = "cpu") -> Gligen:
    sd = open_model_file(path)
    try:
        model = gligen_from_state_dict(sd, str(path))
    finally:
        sd.close()
    return model.to(device)


def gligen_middle_patch(gligen: tuple, latent_shape: torch.Size, device: torch.device):
    """The middle_patch of a conditioning entry's "gligen" value ("position", model, boxes) for one model call."""
    kind, model, boxes = gligen
    return model.position_patch(latent_shape, boxes if kind == "position" else [], device)
