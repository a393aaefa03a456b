"""VAE: tiny encode/decode shapes and conventions, tiling (blend weights, equality with the whole pass for a
linear stand-in), the pixel_space VAE, and (slow) ComfyUI parity of VAEDecode on the random SD1.5 checkpoint."""
from __future__ import annotations

from pathlib import Path

import fixtures_models as fm
import pytest
import torch
from safetensors.torch import load_file

from comfy_core.models.checkpoint import build_vae
from comfy_core.models.state_dict import TensorDict, open_state_dict
from comfy_core.models.vae import VAE, PixelSpaceVAE, _feather_mask, tiled_apply

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def vae() -> VAE:
    return build_vae(TensorDict(fm.vae_state_dict()), device="cpu", dtype=torch.float32, source="tiny")


def test_decode_encode_shapes_and_range(vae):
    latent = torch.randn(2, 4, 5, 6)
    img = vae.decode(latent)
    assert img.shape == (2, 40, 48, 3) and img.dtype == torch.float32
    assert img.min() >= 0 and img.max() <= 1
    z = vae.encode(img)
    assert z.shape == (2, 4, 5, 6)


def test_decode_matches_module_and_comfy_conventions(vae):
    latent = torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        raw = vae.model.decoder(vae.model.post_quant_conv(latent))
    assert torch.allclose(vae.decode(latent), ((raw + 1) / 2).clamp(0, 1).movedim(1, -1))


def test_encode_is_the_posterior_mean_of_2x_minus_1(vae):
    img = torch.rand(1, 32, 32, 3)
    with torch.no_grad():
        moments = vae.model.quant_conv(vae.model.encoder(img.movedim(-1, 1) * 2 - 1))
    assert torch.allclose(vae.encode(img), moments[:, :4], atol=1e-6)


def test_encode_center_crops_to_multiple_of_8_and_ignores_alpha(vae):
    img = torch.rand(1, 37, 42, 4)
    z = vae.encode(img)
    assert z.shape == (1, 4, 4, 5)
    assert torch.allclose(z, vae.encode(img[:, 2:34, 1:41, :3]))


def test_feather_mask_ramps():
    m = _feather_mask(torch.Size([1, 1, 6, 8]), 2, torch.device("cpu"))
    assert m[0, 0, 3].tolist() == [0.5, 1, 1, 1, 1, 1, 1, 0.5]
    assert m[0, 0, 0, 0] == 0.25


def test_tiled_apply_of_a_pointwise_fn_equals_the_whole():
    x = torch.randn(1, 4, 20, 27)
    up = lambda t: torch.nn.functional.interpolate(t, scale_factor=8.0, mode="nearest")[:, :3] * 2
    tiled = tiled_apply(x, up, (8, 8), 2, 8, 3)
    assert torch.allclose(tiled, up(x), atol=1e-5)
    calls = []
    tiled_apply(x, lambda t: calls.append(t.shape) or up(t), (8, 8), 2, 8, 3)
    assert len(calls) > 1 and all(s[2] <= 8 and s[3] <= 8 for s in calls)


def test_decode_tiled_close_to_whole_for_one_tile(vae):
    latent = torch.randn(1, 4, 6, 6)
    assert torch.allclose(vae.decode_tiled(latent, tile=64, overlap=8), vae.decode(latent), atol=1e-5)


def test_decode_and_encode_tiled_shapes_and_progress(vae):
    latent = torch.randn(1, 4, 10, 6)
    seen = []
    img = vae.decode_tiled(latent, tile=8, overlap=2, progress=lambda v, t: seen.append((v, t)))
    assert img.shape == (1, 80, 48, 3) and 0 <= img.min() and img.max() <= 1
    assert seen[-1][0] == seen[-1][1] and len(seen) == seen[-1][1]
    whole = vae.decode(latent)
    assert (img - whole).abs().mean() < 0.1  # seams blend: close to the untiled result on average
    z = vae.encode_tiled(img, tile=64, overlap=16)
    assert z.shape == (1, 4, 10, 6)


def test_pixel_space_vae():
    pv = PixelSpaceVAE()
    img = torch.rand(1, 5, 7, 3)
    z = pv.encode(img)
    assert z.shape == (1, 3, 5, 7) and torch.allclose(z, img.movedim(-1, 1) * 2 - 1)
    assert torch.allclose(pv.decode(z), img, atol=1e-6)


def test_linear_stored_attention_weights_load(tmp_path):
    """Some converted VAE files store the mid attention q/k/v/proj_out as [C, C] linears; they load as 1x1 convs."""
    sd = fm.vae_state_dict()
    for n in ("q", "k", "v", "proj_out"):
        for part in ("encoder", "decoder"):
            key = f"{part}.mid.attn_1.{n}.weight"
            sd[key] = sd[key][:, :, 0, 0]
    vae2 = build_vae(TensorDict(sd), device="cpu", dtype=torch.float32, source="linear")
    ref = build_vae(TensorDict(fm.vae_state_dict()), device="cpu", dtype=torch.float32, source="conv")
    latent = torch.randn(1, 4, 4, 4)
    assert torch.equal(vae2.decode(latent), ref.decode(latent))


@pytest.mark.slow
def test_vae_decode_matches_comfyui_on_random_sd15():
    from fixtures_sd15 import random_sd15_checkpoint

    ref = load_file(str(DATA / "e2e_txt2img_euler_normal.safetensors"))
    sd = open_state_dict(random_sd15_checkpoint())
    try:
        vae = build_vae(sd, device="cpu", dtype=torch.float32, source="random_sd15")
    finally:
        sd.close()
    image = vae.decode(ref["latent_out"])
    assert image.shape == ref["image"].shape
    assert (image - ref["image"]).abs().max().item() < 1e-3
