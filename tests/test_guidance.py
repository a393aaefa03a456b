"""CFG guidance over conditioning lists, with a stand-in model whose prediction is the context's mean value:
areas, masks, strengths, sigma windows, batching, and the model-cond keyword rules."""
import pytest
import torch

from comfy_core.models.model_sampling import SD15_LATENT, ModelSampling
from comfy_core.sampling.guidance import CFGDenoiser, calc_cond_batch, prepare_conds


class ConstantModel:
    """apply_model returns, for each row, a constant image equal to that row's context mean."""

    def __init__(self):
        self.model_sampling = ModelSampling()
        self.latent_format = SD15_LATENT
        self.model_options = {}
        self.calls = []
        self.seen_kwargs = []

    def extra_conds(self, **kw):
        self.seen_kwargs.append(kw)
        return {}

    def apply_model(self, x, sigma, *, context, y=None, c_concat=None, control=None, transformer_options=None):
        self.calls.append((x.shape[0], [float(c.mean()) for c in context]))
        return context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1).expand_as(x).clone()


def cond(value, tokens=77, **extras):
    return [torch.full((1, tokens, 8), float(value)), extras]


def prepared(model, conditioning, x):
    return prepare_conds(model, conditioning, x, prompt_type="positive", seed=1)


def test_cond_and_uncond_run_as_one_batch_uncond_first():
    model, x = ConstantModel(), torch.zeros(1, 4, 8, 8)
    denoiser = CFGDenoiser(model, prepared(model, [cond(1.0)], x), prepared(model, [cond(0.25)], x), cfg=2.5)
    out = denoiser(x, torch.tensor([5.0]))
    assert model.calls == [(2, [0.25, 1.0])]
    assert torch.allclose(out, torch.full_like(x, 0.25 + (1.0 - 0.25) * 2.5))


def test_cfg_one_skips_uncond_unless_disabled():
    model, x = ConstantModel(), torch.zeros(1, 4, 8, 8)
    denoiser = CFGDenoiser(model, prepared(model, [cond(1.0)], x), prepared(model, [cond(0.5)], x), cfg=1.0)
    denoiser(x, torch.tensor([5.0]))
    denoiser(x, torch.tensor([5.0]), model_options={"disable_cfg1_optimization": True})
    assert [batch for batch, _ in model.calls] == [1, 2]


def test_area_is_blended_with_feathered_edges():
    model, x = ConstantModel(), torch.zeros(1, 4, 16, 16)
    conds = prepared(model, [cond(1.0), cond(3.0, area=(8, 8, 8, 8), strength=1.0)], x)
    (pred,) = calc_cond_batch(model, [conds], x, torch.tensor([5.0]), {})
    assert torch.allclose(pred[0, 0, :8, :8], torch.ones(8, 8))  # outside the area: only the full-frame cond
    # inside the area, away from its feathered top/left edges, both conds average: (1 + 3) / 2
    assert torch.allclose(pred[0, 0, 12:, 12:], torch.full((4, 4), 2.0))
    edge = pred[0, 0, 8, 12]  # first row of the area fades in: weight 1/2 (feather = min(8, 8 // 4) = 2 rows)
    assert 1.0 < float(edge) < 2.0


def test_mask_weights_and_strength():
    model, x = ConstantModel(), torch.zeros(1, 4, 4, 4)
    mask = torch.zeros(1, 4, 4)
    mask[:, :, 2:] = 1.0
    conds = prepared(model, [cond(1.0), cond(5.0, mask=mask, mask_strength=1.0, strength=3.0)], x)
    (pred,) = calc_cond_batch(model, [conds], x, torch.tensor([5.0]), {})
    assert torch.allclose(pred[0, 0, :, :2], torch.ones(4, 2))
    assert torch.allclose(pred[0, 0, :, 2:], torch.full((4, 2), (1.0 + 5.0 * 3.0) / (1.0 + 3.0)))


def test_sigma_window_switches_an_entry_off():
    model, x = ConstantModel(), torch.zeros(1, 4, 4, 4)
    conds = prepared(model, [cond(1.0), cond(9.0, start_percent=0.5, end_percent=1.0)], x)
    ms = model.model_sampling
    early = calc_cond_batch(model, [conds], x, torch.tensor([float(ms.sigma_max)]), {})[0]
    late = calc_cond_batch(model, [conds], x, torch.tensor([0.5]), {})[0]
    assert torch.allclose(early, torch.ones_like(x))  # sigma above the window's start: only the first entry
    assert torch.allclose(late, torch.full_like(x, 5.0))


def test_different_token_lengths_batch_together():
    model, x = ConstantModel(), torch.zeros(1, 4, 4, 4)
    denoiser = CFGDenoiser(model, prepared(model, [cond(2.0, tokens=154)], x),
                           prepared(model, [cond(1.0, tokens=77)], x), cfg=3.0)
    out = denoiser(x, torch.tensor([1.0]))
    assert [batch for batch, _ in model.calls] == [2]
    assert torch.allclose(out, torch.full_like(x, 1.0 + (2.0 - 1.0) * 3.0))


def test_entry_values_win_over_sampler_defaults_except_noise():
    model, x = ConstantModel(), torch.zeros(1, 4, 4, 4)
    prepare_conds(model, [cond(1.0, seed=99, prompt_type="negative", noise="not-a-tensor")], x,
                  prompt_type="positive", seed=1)
    (kw,) = model.seen_kwargs
    assert kw["seed"] == 99 and kw["prompt_type"] == "negative" and kw["noise"] is x


@pytest.mark.parametrize("hook_cfg", [1.0, 4.0])
def test_post_cfg_hooks_see_both_predictions(hook_cfg):
    model, x = ConstantModel(), torch.zeros(1, 4, 4, 4)
    denoiser = CFGDenoiser(model, prepared(model, [cond(1.0)], x), prepared(model, [cond(0.5)], x), cfg=hook_cfg)
    seen = {}

    def hook(args):
        seen.update(args)
        return args["denoised"] * 0

    out = denoiser(x, torch.tensor([2.0]), model_options={"sampler_post_cfg_function": [hook],
                                                         "disable_cfg1_optimization": True})
    assert torch.equal(out, torch.zeros_like(x))
    assert torch.allclose(seen["uncond_denoised"], torch.full_like(x, 0.5))
    assert torch.allclose(seen["cond_denoised"], torch.ones_like(x)) and seen["cond_scale"] == hook_cfg
