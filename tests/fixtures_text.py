"""Tiny random text encoders in the real checkpoint key layouts, for composing tiny checkpoints in tests.

Each function returns {checkpoint key: tensor} under a given prefix. Sizes are free (the loader reads them from
shapes); the vocabulary (49408) and 77 positions stay real so the real tokenizer works. Weights are deterministic
for a given seed; biases and norms are random too so a mis-mapped tensor changes the output.

    tiny_clip_l(prefix)        HF CLIPTextModel layout (SD1 "cond_stage_model.transformer.", SDXL
                               "conditioner.embedders.0.transformer.", standalone "")
    tiny_openclip(prefix)      OpenCLIP layout (SD2 "cond_stage_model.model.", SDXL "conditioner.embedders.1.model.",
                               refiner "conditioner.embedders.0.model.", standalone "")
    tiny_sd1_text() / tiny_sd2_text() / tiny_sdxl_text() / tiny_refiner_text()   the text part of a whole checkpoint
"""
from __future__ import annotations

import torch

VOCAB, POSITIONS = 49408, 77
CLIP_L_WIDTH, CLIP_G_WIDTH, CLIP_H_WIDTH = 32, 48, 64  # tiny widths; SDXL context = 32 + 48 = 80


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _linear(g: torch.Generator, out: int, inp: int) -> torch.Tensor:
    return torch.randn(out, inp, generator=g) / inp**0.5


def _norm(g: torch.Generator, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    return 1.0 + 0.1 * torch.randn(width, generator=g), 0.1 * torch.randn(width, generator=g)


def _finish(sd: dict[str, torch.Tensor], prefix: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {prefix + k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}


def tiny_clip_l(prefix: str = "", *, width: int = CLIP_L_WIDTH, layers: int = 3, mlp: int | None = None,
                projection: int | None = None, position_ids: bool = False, seed: int = 0,
                dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """HF-layout CLIP text model (`text_model.*`, optional `text_projection.weight` [projection, width])."""
    g, mlp = _gen(seed), mlp or 4 * width
    sd = {"text_model.embeddings.token_embedding.weight": 0.02 * torch.randn(VOCAB, width, generator=g),
          "text_model.embeddings.position_embedding.weight": 0.01 * torch.randn(POSITIONS, width, generator=g)}
    if position_ids:
        sd["text_model.embeddings.position_ids"] = torch.arange(POSITIONS)[None]
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}."
        for n in ("layer_norm1", "layer_norm2"):
            sd[p + n + ".weight"], sd[p + n + ".bias"] = _norm(g, width)
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[p + f"self_attn.{n}.weight"] = _linear(g, width, width)
            sd[p + f"self_attn.{n}.bias"] = 0.02 * torch.randn(width, generator=g)
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = _linear(g, mlp, width), 0.02 * torch.randn(mlp, generator=g)
        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = _linear(g, width, mlp), 0.02 * torch.randn(width, generator=g)
    sd["text_model.final_layer_norm.weight"], sd["text_model.final_layer_norm.bias"] = _norm(g, width)
    if projection:
        sd["text_projection.weight"] = _linear(g, projection, width)
    return _finish(sd, prefix, dtype)


def tiny_openclip(prefix: str = "", *, width: int = CLIP_G_WIDTH, layers: int = 3, mlp: int | None = None,
                  projection: int | None = None, seed: int = 1, dtype: torch.dtype = torch.float16
                  ) -> dict[str, torch.Tensor]:
    """OpenCLIP-layout text tower (`transformer.resblocks.*`, `text_projection` [width, projection] used as x @ P)."""
    g, mlp, projection = _gen(seed), mlp or 4 * width, projection or width
    sd = {"token_embedding.weight": 0.02 * torch.randn(VOCAB, width, generator=g),
          "positional_embedding": 0.01 * torch.randn(POSITIONS, width, generator=g),
          "logit_scale": torch.tensor(4.6052)}
    for i in range(layers):
        p = f"transformer.resblocks.{i}."
        for n in ("ln_1", "ln_2"):
            sd[p + n + ".weight"], sd[p + n + ".bias"] = _norm(g, width)
        sd[p + "attn.in_proj_weight"] = _linear(g, 3 * width, width)
        sd[p + "attn.in_proj_bias"] = 0.02 * torch.randn(3 * width, generator=g)
        sd[p + "attn.out_proj.weight"] = _linear(g, width, width)
        sd[p + "attn.out_proj.bias"] = 0.02 * torch.randn(width, generator=g)
        sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"] = _linear(g, mlp, width), 0.02 * torch.randn(mlp, generator=g)
        sd[p + "mlp.c_proj.weight"] = _linear(g, width, mlp)
        sd[p + "mlp.c_proj.bias"] = 0.02 * torch.randn(width, generator=g)
    sd["ln_final.weight"], sd["ln_final.bias"] = _norm(g, width)
    sd["text_projection"] = _linear(g, projection, width).T.contiguous()
    return _finish(sd, prefix, dtype)


def tiny_sd1_text(**kw) -> dict[str, torch.Tensor]:
    """SD1.x: CLIP-L (width 32) at cond_stage_model.transformer."""
    return tiny_clip_l("cond_stage_model.transformer.", **kw)


def tiny_sd2_text(**kw) -> dict[str, torch.Tensor]:
    """SD2.x: OpenCLIP-H stand-in (width 64) at cond_stage_model.model."""
    return tiny_openclip("cond_stage_model.model.", width=kw.pop("width", CLIP_H_WIDTH), **kw)


def tiny_sdxl_text(*, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """SDXL base: CLIP-L (32) at conditioner.embedders.0.transformer. + bigG stand-in (48) at embedders.1.model."""
    sd = tiny_clip_l("conditioner.embedders.0.transformer.", position_ids=True, dtype=dtype)
    sd.update(tiny_openclip("conditioner.embedders.1.model.", dtype=dtype))
    return sd


def tiny_refiner_text(*, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """SDXL refiner: bigG stand-in (48) at conditioner.embedders.0.model."""
    return tiny_openclip("conditioner.embedders.0.model.", dtype=dtype)
