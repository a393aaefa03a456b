"""UNet: timestep embedding facts, tiny forward passes of every family, ControlNet residual semantics, odd latent
sizes, the MODEL object's k-diffusion wrapping (eps and v), SDXL/unCLIP ADM inputs and inpaint concat conds."""
from __future__ import annotations

import math

import fixtures_models as fm
import pytest
import torch

from comfy_core.errors import ComfyCoreError
from comfy_core.models.checkpoint import build_diffusion_model
from comfy_core.models.detect import detect_model
from comfy_core.models.diffusion import DiffusionModel
from comfy_core.models.state_dict import TensorDict
from comfy_core.models.unet import UNetModel, timestep_embedding


def tiny_model(family: str = "sd1", **kw) -> DiffusionModel:
    sd = TensorDict(fm.checkpoint_state_dict(family, text=False, vae=False, dtype=torch.float32, **kw))
    return build_diffusion_model(sd, device="cpu", dtype=torch.float32, source=family)


def test_timestep_embedding_is_cos_then_sin():
    t = torch.tensor([0.0, 999.0])
    emb = timestep_embedding(t, 8)
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    assert torch.allclose(emb[1], torch.cat([torch.cos(999 * freqs), torch.sin(999 * freqs)]))
    assert torch.equal(emb[0], torch.tensor([1.0, 1, 1, 1, 0, 0, 0, 0]))
    assert timestep_embedding(t, 7).shape == (2, 7)  # odd width: zero-padded


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl", "sdxl_refiner", "sd1_inpaint"])
def test_tiny_forward_shapes_and_determinism(family):
    model = tiny_model(family)
    cfg = model.spec.unet
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, cfg.in_channels, 8, 8, generator=g)
    ctx = torch.randn(2, 5, cfg.context_dim, generator=g)
    y = torch.randn(2, cfg.adm_in_channels, generator=g) if cfg.adm_in_channels else None
    with torch.no_grad():
        out = model.unet(x, torch.tensor([10.0, 500.0]), ctx, y)
        again = model.unet(x, torch.tensor([10.0, 500.0]), ctx, y)
    assert out.shape == (2, cfg.out_channels, 8, 8)
    assert torch.isfinite(out).all() and out.abs().max() > 0
    assert torch.equal(out, again)
    with torch.no_grad():  # the text conditioning reaches the output through cross-attention
        other = model.unet(x, torch.tensor([10.0, 500.0]), ctx * 2, y)
    assert not torch.allclose(out, other)


def test_batch_rows_are_independent():
    model = tiny_model("sd1")
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 7, 32, generator=g)
    with torch.no_grad():
        both = model.unet(x, torch.tensor([3.0, 700.0]), ctx)
        one = model.unet(x[1:], torch.tensor([700.0]), ctx[1:])
    assert torch.allclose(both[1:], one, atol=1e-5)


def test_odd_latent_sizes_follow_the_skip_tensors():
    model = tiny_model("sd1")
    x = torch.randn(1, 4, 7, 9)
    with torch.no_grad():
        out = model.unet(x, torch.tensor([1.0]), torch.randn(1, 3, 32))
    assert out.shape == (1, 4, 7, 9)


def test_adm_models_require_y():
    model = tiny_model("sdxl")
    with pytest.raises(ValueError, match="ADM"):
        model.unet(torch.randn(1, 4, 8, 8), torch.tensor([1.0]), torch.randn(1, 3, 80))


def _control_for(unet: UNetModel, x: torch.Tensor, seed: int) -> dict[str, list[torch.Tensor]]:
    """Residuals shaped like each input block's output (what a ControlNet produces)."""
    shapes, h = [], x
    emb = unet.time_embed(timestep_embedding(torch.tensor([1.0]), unet.config.model_channels))
    ctx = torch.zeros(1, 1, unet.config.context_dim)
    with torch.no_grad():
        for block in unet.input_blocks:
            h = block(h, emb, ctx)
            shapes.append(h.shape)
        mid = unet.middle_block(h, emb, ctx).shape
    g = torch.Generator().manual_seed(seed)
    return {"output": [torch.randn(s, generator=g) for s in shapes], "middle": [torch.randn(mid, generator=g)]}


def test_control_residuals_match_manual_skip_addition():
    """control["output"][i] is added to input block i's skip tensor; control["middle"] after the middle block."""
    model = tiny_model("sd1")
    unet = model.unet
    x, ctx, t = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 32), torch.tensor([1.0])
    control = _control_for(unet, x, 0)
    lists_before = [len(v) for v in control.values()]
    with torch.no_grad():
        ours = unet(x, t, ctx, control=control)
        # manual forward with the residuals added
        emb = unet.time_embed(timestep_embedding(t, unet.config.model_channels))
        skips, h = [], x
        for i, block in enumerate(unet.input_blocks):
            h = block(h, emb, ctx)
            skips.append(h)
        h = unet.middle_block(h, emb, ctx) + control["middle"][0]
        for block in unet.output_blocks:
            i = len(skips) - 1
            h = torch.cat([h, skips.pop() + control["output"][i]], dim=1)
            h = block(h, emb, ctx, None, tuple(skips[-1].shape[-2:]) if skips else None)
        manual = unet.out(h)
        plain = unet(x, t, ctx)
    assert [len(v) for v in control.values()] == lists_before  # caller's lists are not consumed
    assert torch.allclose(ours, manual, atol=1e-5)
    assert not torch.allclose(ours, plain)


def test_none_control_entries_are_skipped():
    model = tiny_model("sd1")
    x, ctx, t = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 32), torch.tensor([1.0])
    control = _control_for(model.unet, x, 0)
    control["output"] = [None] * len(control["output"])
    control["middle"] = [None]
    with torch.no_grad():
        assert torch.equal(model.unet(x, t, ctx, control=control), model.unet(x, t, ctx))


def test_apply_model_eps_is_x_minus_sigma_eps():
    model = tiny_model("sd1")
    x, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 32)
    sigma = torch.tensor([14.6146, 0.5])
    denoised = model.apply_model(x, sigma, context=ctx)
    ms = model.model_sampling
    with torch.no_grad():
        eps = model.unet(x / (sigma.view(2, 1, 1, 1) ** 2 + 1) ** 0.5, ms.timestep(sigma).float(), ctx)
    assert torch.allclose(denoised, x - eps * sigma.view(2, 1, 1, 1), atol=1e-5)
    assert ms.timestep(sigma).tolist() == [999, ms.timestep(torch.tensor([0.5])).item()]


def test_apply_model_v_prediction():
    model = tiny_model("sd2", v_pred_std=0.2)
    assert model.spec.prediction == "v" and model.model_sampling.prediction == "v"
    x, ctx, sigma = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 64), torch.tensor([2.0])
    denoised = model.apply_model(x, sigma, context=ctx)
    with torch.no_grad():
        v = model.unet(x / 5**0.5, model.model_sampling.timestep(sigma).float(), ctx)
    assert torch.allclose(denoised, x / 5 - v * 2 / 5**0.5, atol=1e-5)


def test_clone_shares_weights_but_not_patches():
    model = tiny_model("sd1")
    other = model.clone()
    assert other.unet is model.unet
    other.model_options["transformer_options"]["x"] = 1
    assert "x" not in model.model_options["transformer_options"]
    assert model.memory_bytes() == sum(p.numel() * 4 for p in model.unet.parameters())
    assert (model.device.type, model.dtype) == ("cpu", torch.float32)


def test_sdxl_adm_vector():
    model = tiny_model("sdxl")
    pooled = torch.randn(1, fm.POOLED_G)
    noise = torch.zeros(2, 4, 16, 12)
    y = model.extra_conds(noise=noise, pooled_output=pooled, crop_w=8)["y"]
    assert y.shape == (2, fm.POOLED_G + 6 * 256)
    assert torch.equal(y[0, :fm.POOLED_G], pooled[0])
    feats = y[0, fm.POOLED_G:].reshape(6, 256)
    expected = [128, 96, 0, 8, 128, 96]  # h, w (noise size x8), crop_h, crop_w, target h/w default to h/w
    for row, value in zip(feats, expected):
        assert torch.allclose(row, timestep_embedding(torch.tensor([float(value)]), 256)[0])
    with pytest.raises(ComfyCoreError, match="pooled"):
        model.extra_conds(noise=noise)


def test_refiner_aesthetic_score_defaults():
    model = tiny_model("sdxl_refiner")
    pooled = torch.randn(1, fm.POOLED_G)
    noise = torch.zeros(1, 4, 8, 8)
    pos = model.extra_conds(noise=noise, pooled_output=pooled, prompt_type="positive")["y"]
    neg = model.extra_conds(noise=noise, pooled_output=pooled, prompt_type="negative")["y"]
    score = lambda y: y[0, -256:]
    assert torch.allclose(score(pos), timestep_embedding(torch.tensor([6.0]), 256)[0])
    assert torch.allclose(score(neg), timestep_embedding(torch.tensor([2.5]), 256)[0])


def test_sdxl_unclip_pooled_replaces_text_pooled():
    model = tiny_model("sdxl")
    embeds = torch.randn(1, fm.POOLED_G)
    cond = [{"clip_vision_output": {"image_embeds": embeds}, "strength": 1.0, "noise_augmentation": 0.0}]
    y = model.extra_conds(noise=torch.zeros(1, 4, 8, 8), pooled_output=torch.zeros(1, fm.POOLED_G),
                          unclip_conditioning=cond, seed=42)["y"]
    aug = model.noise_augmentor
    g = torch.Generator().manual_seed(32)  # ComfyUI noises with seed - 10
    expected = aug.sqrt_ac[0] * embeds + aug.sqrt_1m_ac[0] * torch.randn(embeds.shape, generator=g)
    assert torch.allclose(y[:, :fm.POOLED_G], expected, atol=1e-6)


def test_inpaint_concat_cond():
    model = tiny_model("sd1_inpaint")
    noise = torch.zeros(1, 4, 8, 8)
    blank = model.extra_conds(noise=noise)["c_concat"]
    assert blank.shape == (1, 5, 8, 8)
    assert torch.equal(blank[:, 0], torch.ones(1, 8, 8))
    assert torch.allclose(blank[0, 1:, 0, 0], torch.tensor([0.8223, -0.6876, 0.6364, 0.1380]))
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., :32, :] = 1
    latent = torch.randn(1, 4, 8, 8)
    c = model.extra_conds(noise=noise, denoise_mask=mask, latent_image=latent)["c_concat"]
    assert torch.equal(c[:, 1:], latent)
    assert c[0, 0, :4].eq(1).all() and c[0, 0, 4:].eq(0).all()
    out = model.apply_model(torch.randn(1, 4, 8, 8), torch.tensor([1.0]), context=torch.randn(1, 3, 32), c_concat=c)
    assert out.shape == (1, 4, 8, 8)


def test_unclip_sd2_adm_without_conditioning_is_zeros():
    spec = detect_model(TensorDict(fm.checkpoint_state_dict("sd2_unclip", text=False)))
    assert spec.family == "sd2_unclip"
    model = tiny_model("sd2_unclip")
    y = model.extra_conds(noise=torch.zeros(1, 4, 8, 8))["y"]
    assert torch.equal(y, torch.zeros(1, 128))


@pytest.mark.cuda
def test_tiny_sdxl_on_cuda_fp16_matches_cpu_fp32():
    sd = TensorDict(fm.checkpoint_state_dict("sdxl", text=False, vae=False, dtype=torch.float32))
    cpu = build_diffusion_model(sd, device="cpu", dtype=torch.float32, source="cpu")
    gpu = build_diffusion_model(sd, device="cuda", dtype=torch.float16, source="cuda")
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float16
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 77, 80, generator=g)
    y = torch.randn(2, fm.POOLED_G + 6 * 256, generator=g)
    sigma = torch.tensor([3.0, 0.5])
    ref = cpu.apply_model(x, sigma, context=ctx, y=y)
    out = gpu.apply_model(x.cuda(), sigma.cuda(), context=ctx.cuda(), y=y.cuda()).cpu()
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() / ref.abs().max() < 2e-2
