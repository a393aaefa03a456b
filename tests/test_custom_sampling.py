"""ComfyUI's custom-sampling nodes: schedulers against hand-computed / formula values, SIGMAS operations, NOISE and
SAMPLER objects, guiders (CFG, basic, dual CFG regular/nested, pre-CFG hooks and APG), SamplerCustom and
SamplerCustomAdvanced against the KSampler bit for bit on a tiny SD1 checkpoint, and a workflow through Engine.run."""
from __future__ import annotations

import math
from itertools import pairwise

import fixtures_models as fm
import fixtures_text
import numpy as np
import pytest
import torch
from fixtures_ksampler import (
    KEEP_LATENT,
    LATENT,
    LOADER,
    NEG,
    POS,
    base_graph,
    ksampler,
    make_engine,
)
from fixtures_nodes import node_context

from comfy_core import context
from comfy_core.models.model_sampling import ModelSampling
from comfy_core.nodes import custom_sampling as cs
from comfy_core.nodes import custom_schedulers as sch
from comfy_core.sampling import guiders as guiders_module
from comfy_core.sampling.apg import APGHook, project
from comfy_core.sampling.common import with_pre_cfg_function
from comfy_core.sampling.custom import EmptyNoise, RandomNoise, sampler_object
from comfy_core.sampling.guiders import DualCFGDenoiser
from comfy_core.sampling.ksampler import sample_latent
from comfy_core.sampling.noise import prepare_noise
from comfy_core.sampling.schedulers import ksampler_sigmas

SD15 = ModelSampling()
CKPT = "tiny.safetensors"


class _Model:
    """Just the model_sampling the model-reading scheduler nodes use."""

    model_sampling = SD15


# -- schedulers ---------------------------------------------------------------------------------------------------------
def test_karras_exponential_polyexponential_match_their_formulas():
    smin, smax = 0.0291675, 14.614642
    karras = sch.KarrasScheduler().get_sigmas(4, smax, smin, 7.0)[0]
    ramp = np.linspace(0, 1, 4)
    expected = (smax ** (1 / 7) + ramp * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7
    assert torch.allclose(karras, torch.tensor([*expected, 0.0], dtype=torch.float32), rtol=1e-6)
    expo = sch.ExponentialScheduler().get_sigmas(3, smax, smin)[0]
    assert torch.allclose(expo, torch.tensor([smax, math.sqrt(smax * smin), smin, 0.0]), rtol=1e-5)
    poly1 = sch.PolyexponentialScheduler().get_sigmas(3, smax, smin, 1.0)[0]
    assert torch.allclose(poly1, expo, rtol=1e-5)
    poly2 = sch.PolyexponentialScheduler().get_sigmas(3, smax, smin, 2.0)[0]
    # ramp (1, .5, 0) ** 2 = (1, .25, 0): log sigma a quarter of the way up from sigma_min
    assert poly2[1].item() == pytest.approx(math.exp(0.25 * math.log(smax) + 0.75 * math.log(smin)), rel=1e-5)


def test_laplace_has_no_trailing_zero_and_is_clamped():
    sigmas = sch.LaplaceScheduler().get_sigmas(5, 14.614642, 0.0291675, 0.0, 0.5)[0]
    assert sigmas.shape == (5,)  # ComfyUI appends no 0
    x = [0.0, 0.25, 0.5, 0.75, 1.0]
    lmb = [-0.5 * math.copysign(1, 0.5 - v) * math.log(1 - 2 * abs(0.5 - v) + 1e-5) if v != 0.5 else 0.0 for v in x]
    expected = [min(max(math.exp(v), 0.0291675), 14.614642) for v in lmb]
    assert sigmas.tolist() == pytest.approx(expected, rel=1e-5)
    assert sigmas[2].item() == pytest.approx(1.0)  # the median of Laplace(0, b) is sigma 1


def test_vp_scheduler_formula():
    sigmas = sch.VPScheduler().get_sigmas(2, 19.9, 0.1, 0.001)[0]
    expected = [math.sqrt(math.expm1(19.9 * t * t / 2 + 0.1 * t)) for t in (1.0, 0.001)]
    assert sigmas.tolist() == pytest.approx([*expected, 0.0], rel=1e-5)


def test_sd_turbo_uses_timesteps_999_899_and_denoise_skips_from_the_top():
    one = sch.SDTurboScheduler().get_sigmas(_Model(), 2, 1.0)[0]
    assert one.tolist() == pytest.approx([float(SD15.sigmas[999]), float(SD15.sigmas[899]), 0.0])
    half = sch.SDTurboScheduler().get_sigmas(_Model(), 1, 0.5)[0]
    assert half.tolist() == pytest.approx([float(SD15.sigmas[499]), 0.0])


@pytest.mark.parametrize("denoise", [1.0, 0.5, 0.0])
def test_basic_scheduler_equals_the_ksampler_schedule(denoise):
    sigmas = sch.BasicScheduler().get_sigmas(_Model(), "karras", 6, denoise)[0]
    assert torch.equal(sigmas, ksampler_sigmas(SD15, "karras", 6, denoise))


def test_beta_sampling_scheduler_default_equals_the_beta_scheduler():
    sigmas = sch.BetaSamplingScheduler().get_sigmas(_Model(), 8, 0.6, 0.6)[0]
    assert torch.equal(sigmas, ksampler_sigmas(SD15, "beta", 8))


def test_align_your_steps_table_and_loglinear_interpolation():
    ten = sch.AlignYourStepsScheduler().get_sigmas("SD1", 10, 1.0)[0]
    assert ten[:10].tolist() == pytest.approx([14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177,
                                               1.3943805092, 0.9642583904, 0.6523686016, 0.3977456272,
                                               0.1515232662], rel=1e-6)
    assert ten[-1] == 0
    five = sch.AlignYourStepsScheduler().get_sigmas("SVD", 5, 1.0)[0]
    levels = [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002]
    # 6 points on a uniform grid over the 11 levels: positions 0, 2, 4, 6, 8 hit table entries exactly
    assert five[:5].tolist() == pytest.approx([levels[0], levels[2], levels[4], levels[6], levels[8]], rel=1e-6)
    three = sch.AlignYourStepsScheduler().get_sigmas("SD1", 3, 1.0)[0]
    # position 1/3 of the way lies between entries 3 and 4 (at 3.333...): geometric interpolation
    t = 10 / 3 - 3
    sd1 = [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177]
    assert three[1].item() == pytest.approx(math.exp((1 - t) * math.log(sd1[3]) + t * math.log(sd1[4])), rel=1e-6)
    half = sch.AlignYourStepsScheduler().get_sigmas("SD1", 10, 0.5)[0]
    assert torch.equal(half[:-1], ten[5:-1]) and half.shape == (6,) and half[-1] == 0
    assert sch.AlignYourStepsScheduler().get_sigmas("SD1", 10, 0.0)[0].shape == (0,)


def test_optimal_steps_table():
    flux = sch.OptimalStepsScheduler().get_sigmas("FLUX", 10, 1.0)[0]
    assert flux.tolist() == pytest.approx([0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512,
                                           0.2808, 0.0], rel=1e-6)
    wan = sch.OptimalStepsScheduler().get_sigmas("Wan", 5, 0.6)[0]  # round(3) steps of the interpolated table
    assert wan.shape == (4,) and wan[-1] == 0 and bool((wan[:-1].diff() < 0).all())


def test_gits_rows_and_interpolation():
    ten = sch.GITSScheduler().get_sigmas(1.2, 10, 1.0)[0]
    assert ten.tolist() == pytest.approx([14.61464119, 5.85520077, 2.84484982, 1.67050016, 1.08895338, 0.74807048,
                                          0.50118381, 0.32104823, 0.19894916, 0.09824532, 0.0], rel=1e-7)
    two = sch.GITSScheduler().get_sigmas(0.8, 2, 1.0)[0]
    assert two.tolist() == pytest.approx([14.61464119, 7.49001646, 0.0])
    long = sch.GITSScheduler().get_sigmas(1.0, 30, 1.0)[0]
    assert long.shape == (31,) and long[0].item() == pytest.approx(14.61464119) and bool((long[:-1].diff() < 0).all())
    with pytest.raises(ValueError, match="coeff"):
        sch.GITSScheduler().get_sigmas(0.83, 10, 1.0)


def test_gits_table_is_well_formed():
    """15 coefficients × 19 step counts; each row has steps + 1 strictly decreasing sigmas from 14.61464119 to
    0.02916753, and every value is one of 98 points of a 100-point log-sigma ladder (SD1.5's sigma at every 10th
    timestep, to 0.2 %), each point spelled one way only: a mistyped digit would show up as a stray value."""
    from comfy_core.sampling.gits_table import GITS_NOISE_LEVELS

    assert sorted(GITS_NOISE_LEVELS) == [round(0.8 + 0.05 * i, 2) for i in range(15)]
    values = set()
    for rows in GITS_NOISE_LEVELS.values():
        assert [len(row) for row in rows] == list(range(3, 22))
        for row in rows:
            assert row[0] == 14.61464119 and row[-1] == 0.02916753
            assert all(a > b for a, b in pairwise(row))
            values.update(row)
    ladder = SD15.sigmas.double()
    grid_points = []
    for value in values:
        t = int((ladder - value).abs().argmin())
        assert abs(float(ladder[t]) - value) < 2e-3 * value and t % 10 in (0, 9), value
        grid_points.append(round(t / 10))
    assert len(set(grid_points)) == len(values) == 98


def test_ltxv_scheduler_shift_and_stretch():
    raw = sch.LTXVScheduler().get_sigmas(4, 2.05, 0.95, False, 0.1)[0]
    shift = 2.05  # 4096 tokens (no latent) is max_shift
    expected = [math.exp(shift) / (math.exp(shift) + (1 / t - 1)) for t in (1.0, 0.75, 0.5, 0.25)] + [0.0]
    assert raw.tolist() == pytest.approx(expected, rel=1e-6)
    stretched = sch.LTXVScheduler().get_sigmas(4, 2.05, 0.95, True, 0.1)[0]
    assert stretched[-2].item() == pytest.approx(0.1, rel=1e-5) and stretched[0].item() == pytest.approx(1.0)
    small = sch.LTXVScheduler().get_sigmas(4, 2.05, 0.95, False, 0.1, {"samples": torch.zeros(1, 4, 32, 32)})[0]
    shift = 0.95  # 1024 tokens is base_shift
    assert small[1].item() == pytest.approx(math.exp(shift) / (math.exp(shift) + 1 / 0.75 - 1), rel=1e-6)


# -- SIGMAS operations -------------------------------------------------------------------------------------------------
def test_split_flip_set_first():
    sigmas = torch.tensor([10.0, 5.0, 2.0, 1.0, 0.0])
    high, low = sch.SplitSigmas().get_sigmas(sigmas, 2)
    assert high.tolist() == [10.0, 5.0, 2.0] and low.tolist() == [2.0, 1.0, 0.0]
    high, low = sch.SplitSigmasDenoise().get_sigmas(sigmas, 0.5)
    assert high.tolist() == [10.0, 5.0, 2.0] and low.tolist() == [2.0, 1.0, 0.0]
    high, low = sch.SplitSigmasDenoise().get_sigmas(sigmas, 0.0)  # ComfyUI's sigmas[:-0] quirk: both "empty"-ish
    assert high.tolist() == [] and low.tolist() == [0.0]
    flipped = sch.FlipSigmas().get_sigmas(sigmas)[0]
    assert flipped.tolist() == pytest.approx([0.0001, 1.0, 2.0, 5.0, 10.0])
    assert sigmas[-1] == 0  # the input is left alone
    assert sch.FlipSigmas().get_sigmas(torch.zeros([0]))[0].shape == (0,)
    first = sch.SetFirstSigma().set_first_sigma(sigmas, 136.0)[0]
    assert first.tolist() == [136.0, 5.0, 2.0, 1.0, 0.0] and sigmas[0] == 10.0
    with pytest.raises(ValueError):
        sch.SetFirstSigma().set_first_sigma(torch.zeros([0]), 1.0)


def test_extend_intermediate_sigmas():
    sigmas = torch.tensor([10.0, 6.0, 2.0, 0.0])
    linear = sch.ExtendIntermediateSigmas().extend(sigmas, 2, -1.0, 0.0, "linear")[0]
    assert linear.tolist() == pytest.approx([10.0, 8.0, 6.0, 4.0, 2.0, 1.0, 0.0])
    window = sch.ExtendIntermediateSigmas().extend(sigmas, 4, 8.0, 5.0, "linear")[0]  # only the 6 -> 2 interval
    assert window.tolist() == pytest.approx([10.0, 6.0, 5.0, 4.0, 3.0, 2.0, 0.0])
    cosine = sch.ExtendIntermediateSigmas().extend(sigmas[:2], 3, -1.0, 0.0, "cosine")[0]
    assert cosine.tolist() == pytest.approx([10.0, 10 - 4 * math.sin(math.pi / 6), 10 - 4 * math.sin(math.pi / 3),
                                             6.0], rel=1e-6)
    sine = sch.ExtendIntermediateSigmas().extend(sigmas[:2], 2, -1.0, 0.0, "sine")[0]
    assert sine.tolist() == pytest.approx([10.0, 10 - 4 * (1 - math.cos(math.pi / 4)), 6.0], rel=1e-6)


def test_sampling_percent_to_sigma():
    node = sch.SamplingPercentToSigma()
    assert node.get_sigma(_Model(), 0.0, False)[0] == 999999999.9
    assert node.get_sigma(_Model(), 0.0, True)[0] == pytest.approx(float(SD15.sigma_max))
    assert node.get_sigma(_Model(), 1.0, True)[0] == pytest.approx(float(SD15.sigma_min))
    assert node.get_sigma(_Model(), 1.0, False)[0] == 0.0
    assert node.get_sigma(_Model(), 0.5, True)[0] == pytest.approx(SD15.percent_to_sigma(0.5))


# -- NOISE and SAMPLER objects -----------------------------------------------------------------------------------------
def test_noise_nodes():
    latent = {"samples": torch.zeros(2, 4, 8, 8), "batch_index": [3, 5]}
    noise = cs.RandomNoiseNode().get_noise(42)[0]
    assert noise.seed == 42
    assert torch.equal(noise.generate_noise(latent), prepare_noise(latent["samples"], 42, [3, 5]))
    plain = noise.generate_noise({"samples": torch.zeros(1, 4, 8, 8)})
    assert torch.equal(plain, torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(42)))
    empty = cs.DisableNoise().get_noise()[0]
    assert empty.seed == 0 and torch.count_nonzero(empty.generate_noise(latent)) == 0
    assert empty.generate_noise(latent).shape == (2, 4, 8, 8)


def test_sampler_nodes_bind_their_options():
    assert cs.KSamplerSelect().get_sampler("dpmpp_2m")[0].name == "dpmpp_2m"
    anc = cs.SamplerEulerAncestral().get_sampler(0.5, 0.9)[0]
    assert anc.name == "euler_ancestral" and dict(anc.extra_options) == {"eta": 0.5, "s_noise": 0.9}
    assert cs.SamplerDPMPP_2M_SDE().get_sampler("heun", 1.0, 1.0, "gpu")[0].name == "dpmpp_2m_sde_gpu"
    assert cs.SamplerDPMPP_3M_SDE().get_sampler(1.0, 1.0, "cpu")[0].name == "dpmpp_3m_sde"
    sde = cs.SamplerDPMPP_SDE().get_sampler(1.0, 1.0, 0.3, "cpu")[0]
    assert dict(sde.extra_options)["r"] == 0.3
    assert dict(cs.SamplerLMS().get_sampler(3)[0].extra_options) == {"order": 3}
    adaptive = cs.SamplerDPMAdaptative().get_sampler(order=2, rtol=0.1, atol=0.01, h_init=0.05, pcoeff=0.0,
                                                     icoeff=1.0, dcoeff=0.0, accept_safety=0.81, eta=0.0,
                                                     s_noise=1.0)[0]
    assert adaptive.name == "dpm_adaptive" and adaptive.extra_options["order"] == 2
    ode = cs.SamplerER_SDE().get_sampler("ODE", 3, 1.0, 1.0)[0].extra_options
    assert ode["s_noise"] == 0 and ode["noise_scaler"](torch.tensor(2.0)).item() == 2.0  # eta forced to 0: x ** 1
    rev = cs.SamplerER_SDE().get_sampler("Reverse-time SDE", 2, 1.0, 1.0)[0].extra_options
    assert rev["noise_scaler"](torch.tensor(3.0)).item() == 9.0 and rev["max_stage"] == 2
    assert cs.SamplerER_SDE().get_sampler("ER-SDE", 3, 1.0, 1.0)[0].extra_options["noise_scaler"] is None
    sa = cs.SamplerSASolver().get_sampler(_Model(), 1.0, 0.2, 0.8, 1.0, 3, 4, False, False)[0]
    tau = sa.extra_options["tau_func"]
    assert tau(SD15.percent_to_sigma(0.5)) == 1.0 and tau(SD15.percent_to_sigma(0.9)) == 0.0
    assert cs.SamplerEulerCFGpp().get_sampler("regular")[0].name == "euler_cfg_pp"
    assert sampler_object("ddim").random_inpaint_noise and not sampler_object("euler").random_inpaint_noise
    with pytest.raises(ValueError, match="unknown sampler"):
        cs.KSamplerSelect().get_sampler("no_such_sampler")


# -- guidance combinations (no UNet) -----------------------------------------------------------------------------------
class _FakeModel:
    model_sampling = SD15

    def __init__(self) -> None:
        self.model_options: dict = {}


def _fixed_batch(monkeypatch, neg, mid, pos):
    seen = []

    def fake(model, cond_lists, x, sigma, options):
        seen.append([c is None for c in cond_lists])
        return [torch.zeros_like(x) if c is None else v for c, v in zip(cond_lists, (neg, mid, pos))]

    monkeypatch.setattr(guiders_module, "calc_cond_batch", fake)
    return seen


def test_dual_cfg_regular_and_nested_formulas(monkeypatch):
    x = torch.zeros(1, 4, 2, 2)
    neg, mid, pos = torch.full_like(x, 1.0), torch.full_like(x, 2.0), torch.full_like(x, 4.0)
    seen = _fixed_batch(monkeypatch, neg, mid, pos)
    conds = [object()]
    regular = DualCFGDenoiser(_FakeModel(), conds, conds, conds, 3.0, 5.0, nested=False)(x, torch.ones(1))
    assert torch.equal(regular, torch.full_like(x, 1 + 5 * (2 - 1) + 3 * (4 - 2)))
    nested = DualCFGDenoiser(_FakeModel(), conds, conds, conds, 3.0, 5.0, nested=True)(x, torch.ones(1))
    text = 2 + 3 * (4 - 2)
    assert torch.equal(nested, torch.full_like(x, 1 + 5 * (text - 1)))
    # cfg-1 shortcuts of the regular style: cfg2 = 1 drops the negative, both 1 drop cond2 as well
    DualCFGDenoiser(_FakeModel(), conds, conds, conds, 3.0, 1.0, nested=False)(x, torch.ones(1))
    DualCFGDenoiser(_FakeModel(), conds, conds, conds, 1.0, 1.0, nested=False)(x, torch.ones(1))
    assert seen[2:] == [[True, False, False], [True, True, False]]


def test_dual_cfg_post_cfg_hooks_see_the_cond2_negative_combine(monkeypatch):
    x = torch.zeros(1, 4, 2, 2)
    neg, mid, pos = torch.full_like(x, 1.0), torch.full_like(x, 2.0), torch.full_like(x, 4.0)
    _fixed_batch(monkeypatch, neg, mid, pos)
    calls = []

    def hook(args):
        calls.append((args["cond_denoised"][0, 0, 0, 0].item(), args["uncond_denoised"][0, 0, 0, 0].item()))
        return args["denoised"] * 0  # replaces the combine; the cond1 term is still added after it
    conds = [object()]
    out = DualCFGDenoiser(_FakeModel(), conds, conds, conds, 3.0, 5.0, nested=False)(
        x, torch.ones(1), model_options={"sampler_post_cfg_function": [hook]})
    assert calls == [(2.0, 1.0)] and torch.equal(out, torch.full_like(x, 3 * (4 - 2)))


def test_apg_hook_math():
    torch.manual_seed(0)
    cond, uncond = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    parallel, orthogonal = project(cond - uncond, cond)
    assert torch.allclose(parallel + orthogonal, cond - uncond, atol=1e-6)
    assert torch.allclose((orthogonal * cond).sum(dim=[1, 2, 3]), torch.zeros(2), atol=1e-4)
    args = {"conds_out": [cond, uncond], "sigma": torch.tensor([5.0, 5.0]), "cond_scale": 4.0}
    plain = APGHook(eta=1.0, norm_threshold=0.0, momentum=0.0)(args)
    # eta 1, no clipping, no momentum: cond' = uncond + g + g / cfg, so the CFG combine gives uncond + (cfg + 1) g
    g = cond - uncond
    assert torch.allclose(plain[0], uncond + g + g / 4.0, atol=1e-5) and plain[1] is uncond
    clipped = APGHook(eta=0.0, norm_threshold=0.5, momentum=0.0)(args)[0] - uncond - g / 4.0
    assert torch.all(clipped.flatten(1).norm(dim=1) <= 0.5 + 1e-5)  # only the clipped orthogonal part is left
    hook = APGHook(eta=1.0, norm_threshold=0.0, momentum=0.5)
    hook(args)
    second = hook({**args, "sigma": torch.tensor([4.0, 4.0])})[0]
    assert torch.allclose(second, uncond + 1.5 * g + g / 4.0, atol=1e-5)  # running sum 0.5 g + g
    restarted = hook(args)[0]  # sigma went up: a new run, the running sum starts over
    assert torch.allclose(restarted, plain[0], atol=1e-6)
    assert APGHook(1.0, 5.0, 0.0)({"conds_out": [cond], "sigma": args["sigma"], "cond_scale": 4.0}) == [cond]


def test_apg_node_patches_a_clone():
    model = fm_model_cache()
    patched = cs.APG().patch(model, 1.0, 5.0, 0.0)[0]
    assert patched is not model and "sampler_pre_cfg_function" not in model.model_options
    assert isinstance(patched.model_options["sampler_pre_cfg_function"][0], APGHook)


# -- on the tiny SD1 checkpoint ----------------------------------------------------------------------------------------
_MODEL_CACHE: dict = {}


def fm_model_cache():
    if "model" not in _MODEL_CACHE:
        import tempfile
        from pathlib import Path

        from comfy_core.models.checkpoint import load_checkpoint_file

        folder = Path(tempfile.mkdtemp(prefix="h2_custom_sampling_"))
        path = fm.write_checkpoint(folder / CKPT, "sd1")
        _MODEL_CACHE["model"] = load_checkpoint_file(path, want_clip=False, want_vae=False)[0]
    return _MODEL_CACHE["model"]


@pytest.fixture(scope="module")
def model():
    return fm_model_cache()


@pytest.fixture
def ctx(tmp_path):
    with context.use(node_context(tmp_path)) as c:
        yield c


def _cond(seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 77, fixtures_text.CLIP_L_WIDTH, generator=g), {}]]


POSITIVE, NEGATIVE = _cond(1), _cond(2)


def _empty(batch: int = 1) -> dict:
    return {"samples": torch.zeros(batch, 4, 8, 8)}


def _image_latent() -> dict:
    return {"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(9))}


@pytest.mark.parametrize("sampler_name,scheduler,denoise,latent", [
    ("euler", "normal", 1.0, _empty), ("euler_ancestral", "karras", 1.0, _empty), ("dpmpp_2m", "simple", 0.6,
                                                                                    _image_latent),
    ("dpmpp_2m_sde", "karras", 1.0, _empty), ("ddim", "normal", 0.7, _image_latent),
])
def test_sampler_custom_equals_ksampler_bit_for_bit(model, ctx, sampler_name, scheduler, denoise, latent):
    steps, seed, cfg = 4, 123, 6.5
    sigmas = sch.BasicScheduler().get_sigmas(model, scheduler, steps, denoise)[0]
    sampler = cs.KSamplerSelect().get_sampler(sampler_name)[0]
    out, denoised = cs.SamplerCustom().sample(model, True, seed, cfg, POSITIVE, NEGATIVE, sampler, sigmas, latent())
    expected = sample_latent(model, latent(), POSITIVE, NEGATIVE, seed=seed, steps=steps, cfg=cfg,
                             sampler_name=sampler_name, scheduler=scheduler, denoise=denoise)
    assert torch.equal(out["samples"], expected["samples"])
    assert denoised["samples"].shape == out["samples"].shape and torch.isfinite(denoised["samples"]).all()
    guider = cs.CFGGuiderNode().get_guider(model, POSITIVE, NEGATIVE, cfg)[0]
    advanced, _ = cs.SamplerCustomAdvanced().sample(cs.RandomNoiseNode().get_noise(seed)[0], guider, sampler, sigmas,
                                                    latent())
    assert torch.equal(advanced["samples"], expected["samples"])


def test_inpainting_noise_mask_matches_ksampler(model, ctx):
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 8:40] = 1.0
    latent = {**_image_latent(), "noise_mask": mask}
    for name in ("euler", "ddim"):  # ddim re-noises the kept region with its own seed + 1 noise
        sigmas = sch.BasicScheduler().get_sigmas(model, "normal", 3, 1.0)[0]
        out, _ = cs.SamplerCustom().sample(model, True, 7, 5.0, POSITIVE, NEGATIVE, sampler_object(name), sigmas,
                                           latent)
        expected = sample_latent(model, latent, POSITIVE, NEGATIVE, seed=7, steps=3, cfg=5.0, sampler_name=name,
                                 scheduler="normal")
        assert torch.equal(out["samples"], expected["samples"]) and "noise_mask" in out


def test_denoised_output_is_the_last_x0(model, ctx, monkeypatch):
    seen = []
    monkeypatch.setattr(cs, "step_reporter", lambda m: lambda step, total, x0: seen.append((step, total, x0)))
    sigmas = sch.BasicScheduler().get_sigmas(model, "normal", 4, 1.0)[0]
    high, _ = sch.SplitSigmas().get_sigmas(sigmas, 2)  # stop half way: the output still holds noise
    out, denoised = cs.SamplerCustom().sample(model, True, 3, 4.0, POSITIVE, NEGATIVE, sampler_object("euler"), high,
                                              _empty())
    assert [(s, t) for s, t, _ in seen] == [(0, 2), (1, 2)]
    assert torch.equal(denoised["samples"], seen[-1][2].cpu() / 0.18215)  # SD1 process_latent_out
    assert not torch.allclose(out["samples"], denoised["samples"], atol=1e-2)
    # one Euler step down to sigma 0 lands on its own x0 prediction
    last = torch.tensor([float(sigmas[0]), 0.0])
    out, denoised = cs.SamplerCustom().sample(model, True, 3, 4.0, POSITIVE, NEGATIVE, sampler_object("euler"), last,
                                              _empty())
    assert torch.allclose(out["samples"], denoised["samples"], rtol=1e-5, atol=1e-3)


def test_empty_schedule_and_disabled_noise(model, ctx):
    latent = _image_latent()
    out, denoised = cs.SamplerCustom().sample(model, True, 1, 7.0, POSITIVE, NEGATIVE, sampler_object("euler"),
                                              torch.zeros([0]), latent)
    assert torch.equal(out["samples"], latent["samples"]) and denoised is out
    sigmas = sch.BasicScheduler().get_sigmas(model, "normal", 3, 0.5)[0]
    off, _ = cs.SamplerCustom().sample(model, False, 1, 7.0, POSITIVE, NEGATIVE, sampler_object("euler"), sigmas,
                                       latent)
    expected = sample_latent(model, latent, POSITIVE, NEGATIVE, seed=1, steps=6, cfg=7.0, sampler_name="euler",
                             scheduler="normal", add_noise=False, start_step=3)
    assert torch.equal(off["samples"], expected["samples"])


def test_basic_guider_equals_cfg_one(model, ctx):
    sigmas = sch.BasicScheduler().get_sigmas(model, "normal", 3, 1.0)[0]
    noise, sampler = RandomNoise(5), sampler_object("euler")
    basic, _ = cs.SamplerCustomAdvanced().sample(noise, cs.BasicGuiderNode().get_guider(model, POSITIVE)[0], sampler,
                                                 sigmas, _empty())
    cfg1, _ = cs.SamplerCustomAdvanced().sample(
        noise, cs.CFGGuiderNode().get_guider(model, POSITIVE, NEGATIVE, 1.0)[0], sampler, sigmas, _empty())
    cfg7, _ = cs.SamplerCustomAdvanced().sample(
        noise, cs.CFGGuiderNode().get_guider(model, POSITIVE, NEGATIVE, 7.0)[0], sampler, sigmas, _empty())
    assert torch.equal(basic["samples"], cfg1["samples"]) and not torch.equal(basic["samples"], cfg7["samples"])


def test_dual_cfg_with_equal_prompts_is_plain_cfg(model, ctx):
    sigmas = sch.BasicScheduler().get_sigmas(model, "normal", 3, 1.0)[0]
    noise, sampler = RandomNoise(8), sampler_object("euler")
    plain, _ = cs.SamplerCustomAdvanced().sample(
        noise, cs.CFGGuiderNode().get_guider(model, POSITIVE, NEGATIVE, 5.0)[0], sampler, sigmas, _empty())
    for style in ("regular", "nested"):
        # regular: CFG(cond2 vs negative) + cfg_conds·0; nested with cfg_conds 1: CFG(cond1 vs negative)
        guider = cs.DualCFGGuiderNode().get_guider(model, POSITIVE, POSITIVE, NEGATIVE, 1.0 if style == "nested"
                                                   else 3.0, 5.0, style)[0]
        dual, _ = cs.SamplerCustomAdvanced().sample(noise, guider, sampler, sigmas, _empty())
        assert torch.allclose(dual["samples"], plain["samples"], atol=1e-4), style
    other = cs.DualCFGGuiderNode().get_guider(model, POSITIVE, NEGATIVE, NEGATIVE, 3.0, 5.0, "regular")[0]
    differs, _ = cs.SamplerCustomAdvanced().sample(noise, other, sampler, sigmas, _empty())
    assert not torch.allclose(differs["samples"], plain["samples"], atol=1e-3)


def test_pre_cfg_hooks_run_once_per_step_in_the_ksampler_and_cfg_guider_not_in_dual_cfg(model, ctx):
    calls = []

    def identity(args):
        calls.append(len(args["conds_out"]))
        return args["conds_out"]
    hooked = model.clone()
    hooked.model_options = with_pre_cfg_function(hooked.model_options, identity)
    expected = sample_latent(model, _empty(), POSITIVE, NEGATIVE, seed=4, steps=3, cfg=6.0, sampler_name="euler",
                             scheduler="normal")
    result = sample_latent(hooked, _empty(), POSITIVE, NEGATIVE, seed=4, steps=3, cfg=6.0, sampler_name="euler",
                           scheduler="normal")
    assert calls == [2, 2, 2]  # once per step, never twice
    assert torch.allclose(result["samples"], expected["samples"], atol=1e-5)
    sigmas = sch.BasicScheduler().get_sigmas(model, "normal", 3, 1.0)[0]
    guider = cs.CFGGuiderNode().get_guider(hooked, POSITIVE, NEGATIVE, 6.0)[0]
    cs.SamplerCustomAdvanced().sample(RandomNoise(4), guider, sampler_object("euler"), sigmas, _empty())
    assert calls == [2] * 6
    dual = cs.DualCFGGuiderNode().get_guider(hooked, POSITIVE, NEGATIVE, NEGATIVE, 2.0, 6.0, "regular")[0]
    cs.SamplerCustomAdvanced().sample(RandomNoise(4), dual, sampler_object("euler"), sigmas, _empty())
    assert calls == [2] * 6  # ComfyUI's dual CFG combine skips pre-CFG hooks
    apg = cs.APG().patch(model, 0.0, 0.0, 0.0)[0]  # eta 0 drops the parallel guidance: a different image
    changed = sample_latent(apg, _empty(), POSITIVE, NEGATIVE, seed=4, steps=3, cfg=6.0, sampler_name="euler",
                            scheduler="normal")
    assert not torch.allclose(changed["samples"], expected["samples"], atol=1e-3)


def test_add_noise_node(model):
    sigmas = torch.tensor([6.0, 2.0, 0.5])
    latent = _empty()
    noisy = cs.AddNoise().add_noise(model, RandomNoise(11), sigmas, latent)[0]
    expected = prepare_noise(latent["samples"], 11) * 5.5 / 0.18215  # empty latent: not shifted in
    assert torch.allclose(noisy["samples"], expected, rtol=1e-6)
    image = _image_latent()
    noisy = cs.AddNoise().add_noise(model, EmptyNoise(), sigmas, image)[0]
    assert torch.allclose(noisy["samples"], image["samples"], atol=1e-6)  # zero noise: in and out again
    assert cs.AddNoise().add_noise(model, RandomNoise(1), torch.zeros([0]), image)[0] is image


def test_lcm_upscale_grows_the_latent_and_euler_cfgpp_alternative_runs(model, ctx):
    sigmas = sch.BasicScheduler().get_sigmas(model, "normal", 3, 1.0)[0]
    up = cs.SamplerLCMUpscale().get_sampler(2.0, -1, "bilinear")[0]
    out, _ = cs.SamplerCustom().sample(model, True, 2, 3.0, POSITIVE, NEGATIVE, up, sigmas, _empty())
    assert out["samples"].shape == (1, 4, 16, 16) and torch.isfinite(out["samples"]).all()
    alt = cs.SamplerEulerCFGpp().get_sampler("alternative")[0]
    out, _ = cs.SamplerCustom().sample(model, True, 2, 3.0, POSITIVE, NEGATIVE, alt, sigmas, _empty())
    assert out["samples"].shape == (1, 4, 8, 8) and torch.isfinite(out["samples"]).all()


# -- through the engine ------------------------------------------------------------------------------------------------
def test_custom_advanced_workflow_equals_ksampler_through_engine(tmp_path):
    models = tmp_path / "models"
    fm.write_checkpoint(models / "checkpoints" / CKPT, "sd1")
    kept: dict = {}
    engine = make_engine(tmp_path, models, kept)
    try:
        prompt = base_graph(CKPT)
        prompt["30"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 77}}
        prompt["31"] = {"class_type": "CFGGuider", "inputs": {"model": [LOADER, 0], "positive": [POS, 0],
                                                               "negative": [NEG, 0], "cfg": 6.0}}
        prompt["32"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler_ancestral"}}
        prompt["33"] = {"class_type": "BasicScheduler", "inputs": {"model": [LOADER, 0], "scheduler": "karras",
                                                                    "steps": 5, "denoise": 1.0}}
        prompt["34"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["30", 0], "guider": ["31", 0], "sampler": ["32", 0], "sigmas": ["33", 0],
            "latent_image": [LATENT, 0]}}
        prompt["3"] = ksampler([LATENT, 0], seed=77, steps=5, cfg=6.0, sampler_name="euler_ancestral",
                               scheduler="karras")
        prompt[KEEP_LATENT] = {"class_type": "KeepLatent", "inputs": {"value": ["34", 0], "key": "custom"}}
        prompt["22"] = {"class_type": "KeepLatent", "inputs": {"value": ["34", 1], "key": "denoised"}}
        prompt["23"] = {"class_type": "KeepLatent", "inputs": {"value": ["3", 0], "key": "ksampler"}}
        # a second chain through the executor: no noise, positive-only guidance, LMS over an AYS schedule
        prompt["40"] = {"class_type": "DisableNoise", "inputs": {}}
        prompt["41"] = {"class_type": "BasicGuider", "inputs": {"model": [LOADER, 0], "conditioning": [POS, 0]}}
        prompt["42"] = {"class_type": "SamplerLMS", "inputs": {"order": 3}}
        prompt["43"] = {"class_type": "AlignYourStepsScheduler", "inputs": {"model_type": "SD1", "steps": 3,
                                                                             "denoise": 1.0}}
        prompt["44"] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["40", 0], "guider": ["41", 0], "sampler": ["42", 0], "sigmas": ["43", 0],
            "latent_image": [LATENT, 0]}}
        prompt["24"] = {"class_type": "KeepLatent", "inputs": {"value": ["44", 0], "key": "basic"}}
        progress = []
        sub = engine.events.subscribe(lambda m: progress.append(m.event) if m.type == "progress" else None)
        engine.run(prompt)
        sub.close()
    finally:
        engine.close()
    assert torch.equal(kept["custom"]["samples"], kept["ksampler"]["samples"])
    assert kept["denoised"]["samples"].shape == (1, 4, 8, 8)
    assert len(progress) == 13  # 5 steps for each of the two samplers, 3 for the AYS run
    assert kept["basic"]["samples"].shape == (1, 4, 8, 8) and torch.isfinite(kept["basic"]["samples"]).all()


def test_denoise_mask_function_sees_the_runs_schedule(model, ctx):
    """DifferentialDiffusion-style mask functions get the sigmas of the run (here a partial, high half schedule)."""
    seen = []

    def mask_function(sigma, mask, extra_options):
        seen.append(extra_options["sigmas"].cpu())
        return mask

    patched = model.clone()
    patched.model_options = {**patched.model_options, "denoise_mask_function": mask_function}
    sigmas = sch.BasicScheduler().get_sigmas(model, "normal", 4, 1.0)[0]
    high, _ = sch.SplitSigmas().get_sigmas(sigmas, 2)
    latent = {**_image_latent(), "noise_mask": torch.ones(1, 64, 64)}
    cs.SamplerCustom().sample(patched, True, 3, 4.0, POSITIVE, NEGATIVE, sampler_object("euler"), high, latent)
    assert len(seen) == 2 and all(torch.equal(s, high) for s in seen)
