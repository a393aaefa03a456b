"""Model patch nodes: sampling overrides (ModelSamplingDiscrete / ContinuousEDM / ContinuousV), CFG hooks (RescaleCFG,
Epsilon Scaling, PerturbedAttentionGuidance) and UNet block patches (FreeU, FreeU_V2, PatchModelAddDownscale).

Expectations are written out independently: schedule formulas in float64 numpy, parameterisations by hand, UNet
patches against unpatched runs or a hand-made perturbed UNet.
"""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_guidance import tiny_diffusion_model, tiny_unet_config
from fixtures_nodes import without_prose

from comfy_core.errors import ComfyCoreError
from comfy_core.models.model_sampling import ModelSampling
from comfy_core.models.sampling_variants import (
    PLAYGROUND_V25_LATENT,
    ContinuousEDMSampling,
    ContinuousVSampling,
    CosmosRFlowSampling,
    DiscreteSampling,
    DistilledSampling,
)
from comfy_core.models.unet import UNetConfig
from comfy_core.models.unet_patches import fourier_filter, with_attn1_replace
from comfy_core.nodes import model_patches as mp
from comfy_core.nodes.registry import NodeRegistry
from comfy_core.sampling.common import guidance_is_plain
from comfy_core.sampling.guidance import CFGDenoiser, Cond
from comfy_core.sampling.ksampler import sample_latent, step_sigmas
from comfy_core.sampling.schedulers import calculate_sigmas

DATA = Path(__file__).parent / "data" / "object_info" / "model_patches.json"


def _default_sigmas64() -> np.ndarray:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas)
    return np.sqrt((1 - alphas_cumprod) / alphas_cumprod)


@pytest.fixture(scope="module")
def model():
    return tiny_diffusion_model(tiny_unet_config(), seed=3)


@pytest.fixture(scope="module")
def model3():
    """Three UNet levels (widths 32, 64, 128), so FreeU's 4·mc and 2·mc decoder stages both exist."""
    cfg = UNetConfig(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2, 4), num_res_blocks=(1, 1, 1),
                     transformer_depth=(1, 1, 1), transformer_depth_output=(1, 1, 1, 1, 1, 1),
                     transformer_depth_middle=1, context_dim=16, num_heads=8)
    return tiny_diffusion_model(cfg, seed=5)


def _inputs(batch: int = 2, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g) * 3.0
    context = torch.randn(batch, 5, 16, generator=g)
    return x, context


def _apply(model, x, context, sigma: float = 2.5, **opts):
    sigmas = torch.full((x.shape[0],), sigma)
    return model.apply_model(x, sigmas, context=context, transformer_options={"sigmas": sigmas, **opts})


# -- node schemas ------------------------------------------------------------------------------------------------------
def test_node_info_matches_comfyui_for_this_family():
    """The family's own parity check (the shared parity test covers the same entries with every module loaded)."""
    registry = NodeRegistry()
    registry.register(mp.NODE_CLASS_MAPPINGS, mp.NODE_DISPLAY_NAME_MAPPINGS, builtin=True)
    reference = json.loads(DATA.read_text())["nodes"]
    assert set(reference) == set(mp.NODE_CLASS_MAPPINGS)
    for name, entry in reference.items():
        ours = registry.info(name)
        assert list(ours) == list(entry), name
        assert without_prose(ours) == without_prose(entry), name


# -- discrete schedules ------------------------------------------------------------------------------------------------
def test_discrete_eps_and_v_keep_the_default_schedule():
    base = ModelSampling("eps")
    for prediction in ("eps", "v"):
        ms = DiscreteSampling(prediction)
        assert torch.equal(ms.sigmas, base.sigmas) and torch.equal(ms.log_sigmas, base.log_sigmas)
    x, out = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    sigma = torch.tensor([0.5, 7.0])
    s = sigma.view(2, 1, 1, 1)
    torch.testing.assert_close(DiscreteSampling("v").calculate_denoised(sigma, out, x),
                               x / (s**2 + 1) - out * s / (s**2 + 1) ** 0.5)
    torch.testing.assert_close(DiscreteSampling("eps").calculate_denoised(sigma, out, x), x - out * s)


def test_zsnr_rescales_to_zero_terminal_snr():
    ms = DiscreteSampling("v", zsnr=True)
    root = np.sqrt(1.0 / (_default_sigmas64() ** 2 + 1.0))  # Lin et al. 2024, Algorithm 1, in float64
    root = (root - root[-1]) * root[0] / (root[0] - root[-1])
    alpha_bar = root**2
    alpha_bar[-1] = 4.8973451890853435e-08
    expected = np.sqrt((1 - alpha_bar) / alpha_bar).astype(np.float32)
    np.testing.assert_allclose(ms.sigmas.numpy(), expected, rtol=1e-6)
    assert 4500 < float(ms.sigma_max) < 4540  # finite stand-in for infinite noise
    assert float(ms.sigma_min) == pytest.approx(float(ModelSampling().sigma_min), rel=1e-5)
    assert torch.all(ms.sigmas[1:] > ms.sigmas[:-1])


def test_x0_and_img_to_img_parameterisations():
    x, out, sigma = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), torch.tensor([3.0])
    for prediction in ("x0", "img_to_img"):
        assert torch.equal(DiscreteSampling(prediction).calculate_denoised(sigma, out, x), out)
    assert torch.equal(DiscreteSampling("img_to_img").calculate_input(sigma, x), x)
    torch.testing.assert_close(DiscreteSampling("x0").calculate_input(sigma, x), x / math.sqrt(10.0))
    with pytest.raises(ValueError):
        DiscreteSampling("flow")


def test_lcm_distilled_schedule_and_boundary_condition():
    ms = DistilledSampling()
    base = ModelSampling().sigmas
    assert ms.sigmas.shape == (50,)
    assert torch.equal(ms.sigmas, base[19::20])
    picks = torch.tensor([0, 7, 49])
    assert ms.timestep(ms.sigmas[picks]).tolist() == [19, 159, 999]
    torch.testing.assert_close(ms.sigma(torch.tensor([19.0, 999.0])), ms.sigmas[[0, 49]])
    sigma = ms.sigmas[[7]]  # timestep 159
    x, out = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    t, sd2 = 1590.0, 0.25
    expected = t / math.sqrt(t * t + sd2) * (x - out * sigma) + sd2 / (t * t + sd2) * x
    torch.testing.assert_close(ms.calculate_denoised(sigma, out, x), expected)
    assert len(calculate_sigmas(ms, "simple", 4)) == 5


# -- continuous schedules ----------------------------------------------------------------------------------------------
def test_continuous_edm_schedule_and_parameterisation():
    ms = ContinuousEDMSampling("edm", 0.002, 120.0, 0.5)
    assert float(ms.sigma_min) == pytest.approx(0.002, rel=1e-5) and float(ms.sigma_max) == pytest.approx(120, rel=1e-5)
    assert float(ms.timestep(torch.tensor(math.e**2))) == pytest.approx(0.5)
    assert float(ms.sigma(torch.tensor(0.5))) == pytest.approx(math.e**2, rel=1e-6)
    assert ms.percent_to_sigma(0.5) == pytest.approx(math.sqrt(0.002 * 120.0), rel=1e-5)  # log-midpoint
    assert ms.percent_to_sigma(0.0) > 1e8 and ms.percent_to_sigma(1.0) == 0.0
    x, out, sigma = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), torch.tensor([2.0])
    torch.testing.assert_close(ms.calculate_denoised(sigma, out, x), x * 0.25 / 4.25 + out * 2.0 * 0.5 / 4.25**0.5)
    torch.testing.assert_close(ms.calculate_input(sigma, x), x / 4.25**0.5)
    with pytest.raises(ValueError):
        ContinuousEDMSampling("eps", 0.0, 120.0)


def test_continuous_v_and_cosmos_rflow():
    v = ContinuousVSampling("v", 0.03, 500.0)
    assert float(v.timestep(torch.tensor(1.0))) == pytest.approx(0.5)
    assert float(v.sigma(torch.tensor(0.5))) == pytest.approx(1.0, rel=1e-6)
    rf = CosmosRFlowSampling(0.002, 80.0)
    x, out, sigma = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), torch.tensor([3.0])
    torch.testing.assert_close(rf.calculate_input(sigma, x), x * 0.25)
    torch.testing.assert_close(rf.calculate_denoised(sigma, out, x), x * 0.25 - out * 0.75)
    torch.testing.assert_close(rf.noise_scaling(sigma, out, x, max_denoise=True), out * 3.0 + x)
    assert float(rf.timestep(torch.tensor(3.0))) == 0.75 and float(rf.sigma(torch.tensor(0.75))) == 3.0


def test_playground_latent_format_normalises_per_channel():
    mean = torch.tensor(PLAYGROUND_V25_LATENT.latents_mean).view(1, 4, 1, 1)
    std = torch.tensor(PLAYGROUND_V25_LATENT.latents_std).view(1, 4, 1, 1)
    z = torch.randn(2, 4, 3, 3)
    assert torch.count_nonzero(PLAYGROUND_V25_LATENT.process_in(mean.expand(2, 4, 3, 3))) == 0
    torch.testing.assert_close(PLAYGROUND_V25_LATENT.process_in(z), (z - mean) * 0.5 / std)
    torch.testing.assert_close(PLAYGROUND_V25_LATENT.process_out(PLAYGROUND_V25_LATENT.process_in(z)), z)


# -- sampling override nodes on a MODEL --------------------------------------------------------------------------------
def test_model_sampling_discrete_node_overrides_a_clone(model):
    (patched,) = mp.ModelSamplingDiscrete().patch(model, "v_prediction", True)
    assert model.model_sampling.prediction == "eps" and float(model.model_sampling.sigma_max) < 20
    assert patched.unet is model.unet and patched.model_sampling.prediction == "v"
    sigmas = step_sigmas(patched, "euler", "karras", 4, 1.0, None, None, False)  # the KSampler's scheduler sees it
    assert float(sigmas[0]) == pytest.approx(float(patched.model_sampling.sigma_max))
    (lcm,) = mp.ModelSamplingDiscrete().patch(model, "lcm", False)
    assert isinstance(lcm.model_sampling, DistilledSampling)
    with pytest.raises(ComfyCoreError):
        mp.ModelSamplingDiscrete().patch(model, "flow", False)


def test_x0_override_reaches_apply_model(model):
    (patched,) = mp.ModelSamplingDiscrete().patch(model, "x0", False)
    x, context = _inputs()
    sigma = torch.full((2,), 2.5)
    raw = model.unet(x / math.sqrt(2.5**2 + 1), model.model_sampling.timestep(sigma).float(), context=context)
    torch.testing.assert_close(patched.apply_model(x, sigma, context=context), raw)
    eps = model.apply_model(x, sigma, context=context)
    torch.testing.assert_close(eps, x - raw * 2.5)  # the unpatched model still predicts eps


def test_continuous_edm_node_sets_latent_format_and_errors(model):
    (patched,) = mp.ModelSamplingContinuousEDM().patch(model, "edm_playground_v2.5", 120.0, 0.002)
    assert patched.latent_format is PLAYGROUND_V25_LATENT and model.latent_format is not PLAYGROUND_V25_LATENT
    assert patched.model_sampling.prediction == "edm" and patched.model_sampling.sigma_data == 0.5
    (cosmos,) = mp.ModelSamplingContinuousEDM().patch(model, "cosmos_rflow", 80.0, 0.002)
    assert isinstance(cosmos.model_sampling, CosmosRFlowSampling)
    (v,) = mp.ModelSamplingContinuousV().patch(model, "v_prediction", 500.0, 0.03)
    sigmas = calculate_sigmas(v.model_sampling, "exponential", 3)
    assert float(sigmas[0]) == pytest.approx(500.0, rel=1e-5) and float(sigmas[-2]) == pytest.approx(0.03, rel=1e-5)
    with pytest.raises(ComfyCoreError):
        mp.ModelSamplingContinuousEDM().patch(model, "eps", 120.0, 0.0)


def test_sampling_with_a_zsnr_model_runs_the_override(model):
    (patched,) = mp.ModelSamplingDiscrete().patch(model, "v_prediction", True)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    positive = [[torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(1)), {}]]
    negative = [[torch.zeros(1, 5, 16), {}]]
    kw = {"seed": 4, "steps": 3, "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple"}
    out = sample_latent(patched, latent, positive, negative, **kw)["samples"]
    base = sample_latent(model, latent, positive, negative, **kw)["samples"]
    assert torch.isfinite(out).all() and not torch.allclose(out, base)


# -- CFG hooks ---------------------------------------------------------------------------------------------------------
def _guider(model, cfg: float = 5.0):
    g = torch.Generator().manual_seed(7)
    positive = [Cond(context=torch.randn(1, 5, 16, generator=g))]
    negative = [Cond(context=torch.randn(1, 5, 16, generator=g))]
    return CFGDenoiser(model, positive, negative, cfg)


def test_rescale_cfg_multiplier_zero_is_plain_cfg(model):
    x, _ = _inputs(batch=1)
    sigma = torch.tensor([3.0])
    plain = _guider(model)(x, sigma)
    (patched,) = mp.RescaleCFG().patch(model, 0.0)
    guider = _guider(patched)
    assert not guidance_is_plain(patched.model_options) and guider.predict_guided(x, sigma) is None
    torch.testing.assert_close(guider(x, sigma), plain, rtol=1e-5, atol=1e-5)
    assert "sampler_cfg_function" not in model.model_options


def test_rescale_cfg_matches_the_v_space_formula(model):
    x, _ = _inputs(batch=1)
    s, cfg, phi = 3.0, 5.0, 0.7
    sigma = torch.tensor([s])
    base = _guider(model, cfg)
    cond, uncond, _ = base._predict(x, sigma, {})
    # v = (c_skip·x - D)/c_out with c_skip = 1/(s²+1), c_out = s/sqrt(s²+1) (sigma_data 1)
    c_skip, c_out = 1 / (s * s + 1), s / math.sqrt(s * s + 1)
    v_cond, v_uncond = (c_skip * x - cond) / c_out, (c_skip * x - uncond) / c_out
    v_cfg = v_uncond + cfg * (v_cond - v_uncond)
    v = phi * v_cfg * (v_cond.std() / v_cfg.std()) + (1 - phi) * v_cfg
    expected = c_skip * x - c_out * v
    (patched,) = mp.RescaleCFG().patch(model, phi)
    torch.testing.assert_close(_guider(patched, cfg)(x, sigma), expected, rtol=1e-4, atol=1e-4)


def test_epsilon_scaling_divides_the_guided_noise(model):
    x, _ = _inputs(batch=1)
    sigma = torch.tensor([2.0])
    plain = _guider(model)(x, sigma)
    (one,) = mp.EpsilonScaling().patch(model, 1.0)
    torch.testing.assert_close(_guider(one)(x, sigma), plain)
    (scaled,) = mp.EpsilonScaling().patch(model, 1.25)
    torch.testing.assert_close(_guider(scaled)(x, sigma), x - (x - plain) / 1.25)


@contextmanager
def _identity_self_attention(unet, module_names):
    """Replace the self-attention of the given transformer blocks by to_out(to_v(x)) (an identity attention map)."""
    def identity_for(attn):
        return lambda x, context=None, backend=None: attn.to_out(attn.to_v(x))

    attns = [unet.get_submodule(name).attn1 for name in module_names]
    for attn in attns:
        attn.forward = identity_for(attn)
    try:
        yield
    finally:
        for attn in attns:
            del attn.forward


def test_pag_adds_the_perturbed_difference(model):
    x, _ = _inputs(batch=1)
    sigma = torch.tensor([2.0])
    scale = 3.0
    base = _guider(model)
    plain = base(x, sigma)
    cond, _, _ = base._predict(x, sigma, {})
    middle = [f"middle_block.1.transformer_blocks.{i}" for i in range(len(model.unet.middle_block[1].transformer_blocks))]
    with _identity_self_attention(model.unet, middle):
        perturbed, _, _ = base._predict(x, sigma, {})
    assert not torch.allclose(perturbed, cond)
    (patched,) = mp.PerturbedAttentionGuidance().patch(model, scale)
    torch.testing.assert_close(_guider(patched)(x, sigma), plain + (cond - perturbed) * scale, rtol=1e-5, atol=1e-5)
    (off,) = mp.PerturbedAttentionGuidance().patch(model, 0.0)
    assert torch.equal(_guider(off)(x, sigma), plain)


def test_attn1_replace_by_block_and_index(model):
    x, context = _inputs()
    base = _apply(model, x, context)
    name = "input_blocks.1.1.transformer_blocks.0"
    with _identity_self_attention(model.unet, [name]):
        expected = _apply(model, x, context)
    seen = []

    def identity(q, k, v, extra):
        seen.append((extra["block"], extra["block_index"], extra["n_heads"], extra["dim_head"]))
        return v

    for key in (("input", 1), ("input", 1, 0)):
        opts = with_attn1_replace(model.model_options, identity, *key)
        assert "patches_replace" not in model.model_options["transformer_options"]
        out = _apply(model, x, context, **opts["transformer_options"])
        torch.testing.assert_close(out, expected)
        assert not torch.allclose(out, base)
    assert seen == [(("input", 1), 0, 8, 4)] * 2


# -- UNet block patches ------------------------------------------------------------------------------------------------
def test_fourier_filter():
    x = torch.randn(2, 3, 8, 6)  # filtered in float32, as ComfyUI does
    torch.testing.assert_close(fourier_filter(x, 1, 1.0), x, rtol=1e-5, atol=1e-5)
    low = fourier_filter(x, 1, 0.0)  # the DC term is inside the damped square: every channel mean goes to 0
    torch.testing.assert_close(low.mean(dim=(-2, -1)), torch.zeros(2, 3), rtol=0, atol=1e-6)
    freq = torch.fft.fftshift(torch.fft.fftn(x, dim=(-2, -1)), dim=(-2, -1))
    freq[..., 3:5, 2:4] *= 0.5
    expected = torch.fft.ifftn(torch.fft.ifftshift(freq, dim=(-2, -1)), dim=(-2, -1)).real
    torch.testing.assert_close(fourier_filter(x, 1, 0.5), expected)


@pytest.mark.parametrize("node", [mp.FreeU, mp.FreeU_V2])
def test_freeu_neutral_settings_are_identity_and_defaults_change_output(model3, node):
    x, context = _inputs()
    base = _apply(model3, x, context)
    (neutral,) = node().patch(model3, 1.0, 1.0, 1.0, 1.0)
    torch.testing.assert_close(_apply(neutral, x, context), base, rtol=1e-5, atol=1e-5)
    (patched,) = node().patch(model3, *[node.INPUT_TYPES()["required"][k][1]["default"] for k in ("b1", "b2", "s1", "s2")])
    assert not torch.allclose(_apply(patched, x, context), base, atol=1e-3)
    assert "patches" not in model3.model_options["transformer_options"]


def test_freeu_scales_half_the_backbone_channels():
    from comfy_core.models.unet_patches import freeu_patch

    h, skip = torch.randn(2, 64, 4, 4), torch.randn(2, 64, 4, 4)
    patch = freeu_patch(32, 1.5, 2.0, 1.0, 1.0, v2=False)  # width 64 = 2·mc -> (b2, s2)
    out, out_skip = patch(h, skip, {})
    torch.testing.assert_close(out, torch.cat([h[:, :32] * 2.0, h[:, 32:]], dim=1))
    torch.testing.assert_close(out_skip, skip, rtol=1e-5, atol=1e-5)
    unchanged, _ = patch(torch.ones(1, 96, 2, 2), skip, {})  # no stage of that width
    assert torch.equal(unchanged, torch.ones(1, 96, 2, 2))
    v2, _ = freeu_patch(32, 1.5, 3.0, 1.0, 1.0, v2=True)(h, skip, {})
    mean = h.mean(1, keepdim=True)
    lo, hi = mean.amin(dim=(2, 3), keepdim=True), mean.amax(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(v2[:, :32], h[:, :32] * (2.0 * (mean - lo) / (hi - lo) + 1))
    assert torch.equal(v2[:, 32:], h[:, 32:])


@pytest.mark.parametrize("after_skip", [True, False])
def test_deep_shrink_changes_output_only_inside_its_window(model, after_skip):
    x, context = _inputs(size=16)
    base = _apply(model, x, context, sigma=2.5)
    node = mp.PatchModelAddDownscale()
    (inside,) = node.patch(model, 1, 2.0, 0.0, 1.0, after_skip, "bicubic", "bilinear")
    out = _apply(inside, x, context, sigma=2.5)
    assert out.shape == base.shape and not torch.allclose(out, base, atol=1e-3)
    # sigma 2.5 lies early in SD's schedule: the window 0.9..1.0 (only the last, low-noise 10%) leaves it alone
    (outside,) = node.patch(model, 1, 2.0, 0.9, 1.0, after_skip, "bicubic", "bilinear")
    assert torch.equal(_apply(outside, x, context, sigma=2.5), base)
    (other_block,) = node.patch(model, 7, 2.0, 0.0, 1.0, after_skip, "bicubic", "bilinear")
    assert torch.equal(_apply(other_block, x, context, sigma=2.5), base)


def test_deep_shrink_input_patch_sees_block_and_shrinks(model):
    from comfy_core.models.unet_patches import downscale_patches

    down, up = downscale_patches(3, 2.0, 10.0, 1.0, "nearest-exact", "nearest-exact")
    h = torch.arange(64.0).view(1, 1, 8, 8)
    assert down(h, {"block": ("input", 3), "sigmas": torch.tensor([5.0])}).shape == (1, 1, 4, 4)
    assert down(h, {"block": ("input", 3), "sigmas": torch.tensor([0.5])}) is h  # below sigma_end
    assert down(h, {"block": ("input", 2), "sigmas": torch.tensor([5.0])}) is h
    grown, _skip = up(torch.ones(1, 2, 4, 4), torch.zeros(1, 1, 8, 8), {})
    assert grown.shape == (1, 2, 8, 8) and torch.equal(grown, torch.ones(1, 2, 8, 8))
    with pytest.raises(ComfyCoreError):
        mp.PatchModelAddDownscale().patch(None, 3, 2.0, 0.0, 0.35, True, "lanczos2", "bicubic")


def test_patches_stack_on_clones_without_leaking(model3):
    (freeu,) = mp.FreeU().patch(model3, 1.1, 1.2, 0.9, 0.2)
    (both,) = mp.FreeU_V2().patch(freeu, 1.3, 1.4, 0.9, 0.2)
    assert len(freeu.model_options["transformer_options"]["patches"]["output_block_patch"]) == 1
    assert len(both.model_options["transformer_options"]["patches"]["output_block_patch"]) == 2
    (pag,) = mp.PerturbedAttentionGuidance().patch(both, 1.0)
    assert len(pag.model_options["sampler_post_cfg_function"]) == 1
    assert "sampler_post_cfg_function" not in both.model_options


# -- HyperTile ---------------------------------------------------------------------------------------------------------
def test_random_divisor():
    from comfy_core.models.unet_patches import random_divisor

    assert random_divisor(16, 4) == 4  # smallest divisor >= 4 is 4 -> 4 tiles
    assert random_divisor(12, 5) == 2  # 6 -> 2 tiles
    assert random_divisor(12, 5, 2) == 2  # ComfyUI's randint(0, n - 1) never picks the last of the options
    assert random_divisor(7, 32) == 1  # min clamps to the side: one tile


def test_hypertile_attention_is_block_diagonal_over_tiles():
    from comfy_core.models.unet import Attn1Hooks, CrossAttention
    from comfy_core.models.unet_patches import HyperTilePatches

    torch.manual_seed(0)
    attn = CrossAttention(16, None, heads=2, dim_head=8).eval()
    hooks = HyperTilePatches(tile_size=32, swap_size=1, max_depth=0, scale_depth=False)  # 4x4-pixel tiles
    x = torch.randn(2, 8 * 12, 16)  # an 8x12 latent level, row-major tokens
    extra = {"original_shape": [2, 4, 8, 12]}
    with torch.no_grad():
        out = attn.forward_hooked(x, Attn1Hooks([hooks.tile], None, [hooks.untile], extra), None)
        q, k, v = (t.view(2, 96, 2, 8).transpose(1, 2) for t in (attn.to_q(x), attn.to_k(x), attn.to_v(x)))
        # ComfyUI derives the grid as h = sqrt(tokens·W/H) = W rows of H tokens (swapped for non-square latents):
        # tokens are grouped as 12 rows of 8, in 3 x 2 tiles of 4 x 4
        ys, xs = torch.arange(96) // 8, torch.arange(96) % 8
        tile = (ys // 4) * 2 + xs // 4
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
        scores = scores.masked_fill(tile[:, None] != tile[None, :], float("-inf"))
        expected = attn.to_out((scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 96, 16))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert hooks.pending is None


def test_hypertile_node_on_a_unet(model):
    x, context = _inputs(size=16)
    base = _apply(model, x, context)
    (whole,) = mp.HyperTile().patch(model, 2048, 1, 0, False)  # one tile covering everything: nothing changes
    assert torch.equal(_apply(whole, x, context), base)
    (tiled,) = mp.HyperTile().patch(model, 32, 1, 1, False)
    out = _apply(tiled, x, context)
    assert out.shape == base.shape and not torch.allclose(out, base, atol=1e-4)
    assert "attn1_patch" in tiled.model_options["transformer_options"]["patches"]
    assert "patches" not in model.model_options["transformer_options"]


# -- Self-attention guidance -------------------------------------------------------------------------------------------
def test_sag_gaussian_blur_spreads_a_delta_by_the_kernel():
    from comfy_core.models.unet_patches import sag_gaussian_blur

    img = torch.zeros(1, 2, 12, 12)
    img[0, 1, 6, 5] = 1.0
    out = sag_gaussian_blur(img, 2.0)
    pdf = np.exp(-0.5 * (np.arange(-4, 5) / 2.0) ** 2)
    kernel = np.outer(pdf, pdf) / pdf.sum() ** 2
    np.testing.assert_allclose(out[0, 1, 2:11, 1:10].numpy(), kernel, rtol=1e-5, atol=1e-7)
    assert torch.count_nonzero(out[0, 0]) == 0 and float(out.sum()) == pytest.approx(1.0, rel=1e-5)
    flat = torch.full((1, 1, 6, 6), 0.3)
    torch.testing.assert_close(sag_gaussian_blur(flat, 1.5), flat)


def test_sag_blur_map_blurs_where_attention_concentrates():
    from comfy_core.models.unet_patches import sag_blur_map, sag_gaussian_blur

    x0 = torch.randn(1, 4, 8, 16)
    probs = torch.zeros(2, 8, 8)  # 2 heads, 8 tokens = a 2 x 4 grid for an 8 x 16 latent
    probs[:, :, 1] = 1.0  # every query attends to token 1 only: total attention 8 > 1 there
    out = sag_blur_map(x0, probs, 1.0)
    blurred = sag_gaussian_blur(x0, 1.0)
    mask = torch.zeros(8, 16)
    mask[0:4, 4:8] = 1.0  # token 1 = row 0, column 1 of the 2 x 4 grid, each cell 4 x 4 latent pixels
    torch.testing.assert_close(out, blurred * mask + x0 * (1 - mask))


def test_attention_with_probs_matches_sdpa():
    from comfy_core.models.unet_patches import attention_with_probs

    q, k, v = torch.randn(3, 2, 6, 24).unbind(0)
    out, probs = attention_with_probs(q, k, v, heads=3)
    ref = torch.nn.functional.scaled_dot_product_attention(
        *(t.view(2, 6, 3, 8).transpose(1, 2) for t in (q, k, v))).transpose(1, 2).reshape(2, 6, 24)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert probs.shape == (6, 6, 6)
    torch.testing.assert_close(probs.sum(-1), torch.ones(6, 6))


def test_sag_node_records_uncond_attention_and_guides(model):
    from comfy_core.models.unet_patches import sag_blur_map
    from comfy_core.sampling.guidance import calc_cond_batch

    x, _ = _inputs(batch=1, size=16)
    sigma = torch.tensor([2.0])
    plain = _guider(model)(x, sigma)
    (off,) = mp.SelfAttentionGuidance().patch(model, 0.0, 2.0)
    torch.testing.assert_close(_guider(off)(x, sigma), plain, rtol=1e-5, atol=1e-5)
    assert "patches_replace" not in model.model_options["transformer_options"]
    (patched,) = mp.SelfAttentionGuidance().patch(model, 0.8, 2.0)
    hooks = patched.model_options["transformer_options"]["patches_replace"]["attn1"][("middle", 0, 0)].__self__
    guider = _guider(patched)
    cond, uncond, _ = guider._predict(x, sigma, patched.model_options)
    scores = hooks.scores  # 8 heads x 1 row of the uncond chunk, middle block at 8 x 8 = 64 tokens
    assert scores.shape == (8, 64, 64)
    degraded = sag_blur_map(uncond, scores, 2.0)
    (again,) = calc_cond_batch(patched, [guider.negative], degraded + x - uncond, sigma, patched.model_options)
    expected = uncond + (cond - uncond) * guider.cfg + (degraded - again) * 0.8
    torch.testing.assert_close(guider(x, sigma), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, plain, atol=1e-4)
    with pytest.raises(ComfyCoreError):
        mp.SelfAttentionGuidance().patch(model, 0.5, 0.0)


# -- Differential diffusion --------------------------------------------------------------------------------------------
class _IdentityGuider:
    """Stands in for CFGDenoiser: predicts x itself, carries a MODEL's options and schedule."""

    def __init__(self, model):
        self.model, self.model_sampling = model, model.model_sampling

    def __call__(self, x, sigma, **kwargs):
        return x


def _nearest_timestep(sigma: float) -> int:
    return int(np.abs(np.log(_default_sigmas64().astype(np.float32)) - np.log(np.float32(sigma))).argmin())


def test_differential_mask_thresholds_by_timestep_progress(model):
    fn = mp.differential_mask_function(1.0)
    guider = _IdentityGuider(model)
    sigmas = torch.tensor([10.0, 3.0, 1.0, 0.0])
    mask = torch.tensor([0.0, 0.2, 0.5, 0.8, 1.0]).view(1, 1, 1, 5)
    ms = model.model_sampling
    assert torch.equal(fn(sigmas[:1], mask, {"model": guider, "sigmas": sigmas}), (mask >= 1.0).float())
    at_end = fn(ms.sigma_min.reshape(1), mask, {"model": guider, "sigmas": sigmas})
    assert torch.equal(at_end, torch.ones_like(mask))
    t_from, t_to, t_now = _nearest_timestep(10.0), _nearest_timestep(float(ms.sigma_min)), _nearest_timestep(3.0)
    threshold = (t_now - t_to) / (t_from - t_to)
    middle = fn(torch.tensor([3.0]), mask, {"model": guider, "sigmas": sigmas})
    assert torch.equal(middle, (mask >= threshold).float()) and 0.5 < threshold < 0.8
    soft = mp.differential_mask_function(0.25)(torch.tensor([3.0]), mask, {"model": guider, "sigmas": sigmas})
    torch.testing.assert_close(soft, 0.25 * middle + 0.75 * mask)


@pytest.mark.parametrize("schedule", [True, False])
def test_inpaint_denoiser_applies_the_differential_mask(model, schedule):
    from comfy_core.sampling.guidance import InpaintDenoiser

    (patched,) = mp.DifferentialDiffusion().patch(model)
    mask = torch.tensor([0.0, 0.2, 0.5, 0.8, 1.0]).view(1, 1, 1, 5).expand(1, 4, 1, 5)
    zeros = torch.zeros(1, 4, 1, 5)
    sigmas = torch.tensor([10.0, 3.0, 1.0, 0.0])
    denoiser = InpaintDenoiser(_IdentityGuider(patched), zeros, zeros, mask, sigmas if schedule else None)
    assert torch.equal(denoiser(torch.ones(1, 4, 1, 5), sigmas[:1]), (mask >= 1.0).float())  # start: nothing yet
    out = denoiser(torch.ones(1, 4, 1, 5), torch.tensor([3.0]))  # the binary mask replaces the soft one
    assert torch.equal(out, (mask >= 0.8).float())  # threshold between 0.5 and 0.8 at sigma 3 (test above)
    plain = InpaintDenoiser(_IdentityGuider(model), zeros, zeros, mask)
    torch.testing.assert_close(plain(torch.ones(1, 4, 1, 5), torch.tensor([3.0])), mask * mask)


# -- patches inside the sampling loop ----------------------------------------------------------------------------------
def test_model_hooks_and_a_samplers_own_hook_both_run(model):
    from comfy_core.sampling.common import UncondCapture

    x, _ = _inputs(batch=1)
    sigma = torch.tensor([2.0])
    plain = _guider(model)(x, sigma)
    (scaled,) = mp.EpsilonScaling().patch(model, 1.25)
    capture = UncondCapture()
    extra = capture.install({"model_options": {"transformer_options": {"attention_backend": "sdpa"}}})
    guider = _guider(scaled)
    out = guider(x, sigma, **extra)
    torch.testing.assert_close(out, x - (x - plain) / 1.25)  # the MODEL's hook ran ...
    _, uncond, _ = guider._predict(x, sigma, {})
    torch.testing.assert_close(capture.get(), uncond)  # ... and the sampler's


@pytest.mark.parametrize("sampler_name", ["euler", "dpmpp_2m"])
def test_cfg_function_reaches_fused_samplers(model, sampler_name):
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    g = torch.Generator().manual_seed(2)
    positive, negative = [[torch.randn(1, 5, 16, generator=g), {}]], [[torch.randn(1, 5, 16, generator=g), {}]]
    kw = {"seed": 9, "steps": 3, "cfg": 6.0, "sampler_name": sampler_name, "scheduler": "karras"}
    plain = sample_latent(model, latent, positive, negative, **kw)["samples"]
    (neutral,) = mp.RescaleCFG().patch(model, 0.0)
    torch.testing.assert_close(sample_latent(neutral, latent, positive, negative, **kw)["samples"], plain,
                               rtol=1e-4, atol=1e-4)
    (rescaled,) = mp.RescaleCFG().patch(model, 1.0)
    assert not torch.allclose(sample_latent(rescaled, latent, positive, negative, **kw)["samples"], plain, atol=1e-3)
