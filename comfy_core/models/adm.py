"""The UNet's ADM (`y`) input: SDXL's pooled text + Fourier size/crop/aesthetic features, and unCLIP image embeddings.

SDXL (Podell et al. 2023, sec. 2.2): y = [pooled bigG | emb(h) | emb(w) | emb(crop_h) | emb(crop_w) | emb(th) | emb(tw)]
with emb = the 256-wide sinusoidal timestep embedding; the refiner uses [h, w, crop_h, crop_w, aesthetic_score].
unCLIP (Ramesh et al. 2022): a CLIP image embedding, noised to a chosen level by a small DDPM forward process
(`NoiseAugmentor`), concatenated with the embedding of that noise level and scaled by the strength.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ComfyCoreError
from .unet import timestep_embedding

FOURIER_DIM = 256


def size_features(values: Sequence[float], batch: int) -> torch.Tensor:
    """[len(values)*256] Fourier features of the size/crop/aesthetic scalars, repeated to [batch, n*256]."""
    embs = [timestep_embedding(torch.tensor([float(v)]), FOURIER_DIM) for v in values]  # each [1, 256]
    return torch.flatten(torch.cat(embs)).unsqueeze(0).repeat(batch, 1)


def squaredcos_betas(timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021 cosine schedule: beta_i = 1 - abar((i+1)/T)/abar(i/T), abar(t) = cos²((t+.008)/1.008·π/2)."""
    abar = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.tensor([min(1 - abar((i + 1) / timesteps) / abar(i / timesteps), max_beta) for i in range(timesteps)],
                        dtype=torch.float64)


class NoiseAugmentor:
    """CLIP-embedding noise augmentation: x -> sqrt(abar_t)·x + sqrt(1-abar_t)·noise in the data's normalised space."""

    max_noise_level = 1000

    def __init__(self, timestep_dim: int, data_mean: torch.Tensor | None = None, data_std: torch.Tensor | None = None):
        self.timestep_dim = timestep_dim
        alphas_cumprod = torch.cumprod(1.0 - squaredcos_betas(self.max_noise_level), dim=0)
        self.sqrt_ac = alphas_cumprod.sqrt().float()
        self.sqrt_1m_ac = (1.0 - alphas_cumprod).sqrt().float()
        self.data_mean = data_mean.float() if data_mean is not None else torch.zeros(1, timestep_dim)
        self.data_std = data_std.float() if data_std is not None else torch.ones(1, timestep_dim)

    def __call__(self, x: torch.Tensor, noise_level: int,
                 generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, D] -> (noised x [B, D], noise-level embedding [1, timestep_dim]); noise drawn from `generator`
        (None: torch's default generator, as ComfyUI does for an unseeded call)."""
        x = (x.float() - self.data_mean) / self.data_std
        noise = torch.randn(x.size(), dtype=x.dtype, generator=generator)
        t = noise_level
        z = self.sqrt_ac[t] * x + self.sqrt_1m_ac[t] * noise
        z = z * self.data_std + self.data_mean
        return z, timestep_embedding(torch.tensor([noise_level]), self.timestep_dim)


def _image_embeds(output: Any) -> torch.Tensor:
    embeds = getattr(output, "image_embeds", None)
    if embeds is None and isinstance(output, dict):
        embeds = output.get("image_embeds")
    if embeds is None:
        raise ComfyCoreError("unCLIP conditioning has no CLIP vision image_embeds")
    return embeds


def unclip_adm(conds: Sequence[dict], augmentor: NoiseAugmentor, seed: int | None, merge_noise: float = 0.0) -> torch.Tensor:
    """Sum of strength·[noised embedding | level embedding] over every image of every unCLIP entry; several entries
    are merged by noising their sum again at `merge_noise`.

    Noise stream (ComfyUI on CPU): every image re-seeds one generator with `seed` and draws its noise; the merge
    step draws WITHOUT re-seeding, so it continues that generator after the last image's draw. (ComfyUI seeds the
    global torch generator and lets the merge use the global one; a private generator gives the same numbers.)
    """
    gen = torch.Generator() if seed is not None else None
    outs = []
    for cond in conds:
        for embed in _image_embeds(cond["clip_vision_output"]):
            level = round((augmentor.max_noise_level - 1) * cond["noise_augmentation"])
            if gen is not None:
                gen.manual_seed(seed)
            c, level_emb = augmentor(embed.reshape(1, -1), level, gen)
            outs.append(torch.cat((c, level_emb), 1) * cond["strength"])
    if not outs:
        raise ComfyCoreError("empty unCLIP conditioning")
    adm = outs[0]
    if len(outs) > 1:
        summed = torch.stack(outs).sum(0)
        level = round((augmentor.max_noise_level - 1) * merge_noise)
        c, level_emb = augmentor(summed[:, :augmentor.timestep_dim], level, gen)
        adm = torch.cat((c, level_emb), 1)
    return adm
