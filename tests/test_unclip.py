"""unCLIP ADM inputs as ComfyUI v0.3.64 builds them on CPU: SD2.1-unCLIP keeps a mean-0/std-1 noise augmentor
whatever the checkpoint holds, image embeddings are noised with the sampler seed minus 10 (SD2.1 unCLIP and SDXL
revision alike), and merging several embeddings draws its noise by continuing that seeded stream."""
from __future__ import annotations

import math

import fixtures_models as fm
import torch

from comfy_core.models.adm import NoiseAugmentor, unclip_adm
from comfy_core.models.checkpoint import build_diffusion_model, load_checkpoint_file
from comfy_core.models.clip_vision import ClipVisionOutput
from comfy_core.models.state_dict import TensorDict
from comfy_core.models.unet import timestep_embedding


def _abar(level: int) -> float:
    """alpha-bar after `level + 1` steps of the squaredcos_cap_v2 schedule (Nichol & Dhariwal 2021), in float64."""
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    return math.prod(1.0 - min(1.0 - f((i + 1) / 1000) / f(i / 1000), 0.999) for i in range(level + 1))


def _noised(x: torch.Tensor, level: int, noise: torch.Tensor) -> torch.Tensor:
    a = _abar(level)
    return math.sqrt(a) * x + math.sqrt(1.0 - a) * noise


def _entry(embeds: torch.Tensor, strength: float, noise_augmentation: float) -> dict:
    return {"clip_vision_output": ClipVisionOutput(image_embeds=embeds), "strength": strength,
            "noise_augmentation": noise_augmentation}


def _sd2_unclip_model():
    sd = TensorDict(fm.checkpoint_state_dict("sd2_unclip", text=False, vae=False, dtype=torch.float32))
    return build_diffusion_model(sd, device="cpu", dtype=torch.float32, source="sd2_unclip")


def test_sd2_unclip_checkpoint_stats_are_not_loaded(tmp_path):
    sd = fm.checkpoint_state_dict("sd2_unclip", dtype=torch.float32)
    assert sd["noise_augmentor.data_mean"].abs().sum() > 0  # the file does hold (non-trivial) stats
    path = fm.write(tmp_path / "unclip.safetensors", sd)
    model, _, _ = load_checkpoint_file(path, want_clip=False, want_vae=False)
    aug = model.noise_augmentor
    dim = fm.TINY_UNETS["sd2_unclip"].adm_in_channels // 2
    assert aug.timestep_dim == dim
    assert torch.equal(aug.data_mean, torch.zeros(1, dim)) and torch.equal(aug.data_std, torch.ones(1, dim))


def test_sd2_unclip_adm_noises_with_seed_minus_10():
    model = _sd2_unclip_model()
    embeds = torch.randn(1, 64, generator=torch.Generator().manual_seed(3))
    y = model.extra_conds(noise=torch.zeros(1, 4, 8, 8), unclip_conditioning=[_entry(embeds, 0.8, 0.1)],
                          seed=42)["y"]
    level = round(999 * 0.1)
    noise = torch.randn(1, 64, generator=torch.Generator().manual_seed(32))
    expected = torch.cat((_noised(embeds, level, noise), timestep_embedding(torch.tensor([level]), 64)), 1) * 0.8
    assert y.shape == (1, 128)
    assert torch.allclose(y, expected, atol=1e-6)
    no_seed = model.extra_conds(noise=torch.zeros(1, 4, 8, 8), unclip_conditioning=[_entry(embeds, 0.8, 0.1)])["y"]
    noise = torch.randn(1, 64, generator=torch.Generator().manual_seed(-10))  # ComfyUI: kwargs.get("seed", 0) - 10
    assert torch.allclose(no_seed[:, :64], 0.8 * _noised(embeds, level, noise), atol=1e-6)


def test_merged_embeddings_continue_the_seeded_noise_stream():
    """Two entries (the seed workflow's two unCLIPConditioning nodes): each image re-seeds, the merge continues."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(1, 8, generator=g), torch.randn(1, 8, generator=g)
    conds = [_entry(a, 1.0, 0.0), _entry(b, 0.75, 0.2)]
    adm = unclip_adm(conds, NoiseAugmentor(8), seed=5, merge_noise=0.05)
    stream = torch.Generator().manual_seed(5)
    na = torch.randn(1, 8, generator=stream)
    stream.manual_seed(5)
    nb = torch.randn(1, 8, generator=stream)
    n_merge = torch.randn(1, 8, generator=stream)  # no re-seed: the stream after b's draw
    assert torch.equal(na, nb) and not torch.equal(nb, n_merge)
    level_b, level_m = round(999 * 0.2), round(999 * 0.05)
    summed = _noised(a, 0, na) * 1.0 + _noised(b, level_b, nb) * 0.75
    expected = torch.cat((_noised(summed, level_m, n_merge), timestep_embedding(torch.tensor([level_m]), 8)), 1)
    assert torch.allclose(adm, expected, atol=1e-6)
    torch.manual_seed(123)  # torch's global generator plays no part
    again = unclip_adm(conds, NoiseAugmentor(8), seed=5, merge_noise=0.05)
    torch.manual_seed(456)
    assert torch.equal(adm, again) and torch.equal(adm, unclip_adm(conds, NoiseAugmentor(8), seed=5, merge_noise=0.05))


def test_sdxl_revision_with_two_images_merges_at_level_0():
    """SDXL revision merges with noise 0 (ComfyUI's sdxl_pooled passes no merge level) and keeps the first half."""
    model = build_diffusion_model(TensorDict(fm.checkpoint_state_dict("sdxl", text=False, vae=False,
                                                                      dtype=torch.float32)),
                                  device="cpu", dtype=torch.float32, source="sdxl")
    width = fm.POOLED_G
    g = torch.Generator().manual_seed(1)
    two = torch.randn(2, width, generator=g)  # one CLIP_VISION_OUTPUT holding two images
    y = model.extra_conds(noise=torch.zeros(1, 4, 8, 8), unclip_conditioning=[_entry(two, 0.5, 0.0)], seed=100)["y"]
    stream = torch.Generator().manual_seed(90)
    n0 = torch.randn(1, width, generator=stream)
    stream.manual_seed(90)
    n1 = torch.randn(1, width, generator=stream)
    nm = torch.randn(1, width, generator=stream)
    summed = 0.5 * (_noised(two[:1], 0, n0) + _noised(two[1:], 0, n1))
    assert torch.allclose(y[:, :width], _noised(summed, 0, nm), atol=1e-6)
