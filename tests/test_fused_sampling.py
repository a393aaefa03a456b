"""Samplers with the CFG combine fused into their update (`common.guided_prediction` + `kernels.sampler_step`), and the
engine's attention backend reaching the UNet through the KSampler.

The fused path must be taken when the denoiser offers `predict_guided` and give the same bits as the unfused path
(the denoiser's own combine, then the update); post-CFG hooks and the inpaint wrapper must keep the unfused path.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import fixtures_models as fm
import msgspec
import pytest
import torch

from comfy_core import context
from comfy_core.errors import ComfyCoreError
from comfy_core.kernels import attention as attention_mod
from comfy_core.models.cache import ModelCache
from comfy_core.models.model_sampling import ModelSampling
from comfy_core.nodes.sampling import KSampler
from comfy_core.sampling import ksampler
from comfy_core.sampling.common import GuidedPrediction, guided_prediction, with_post_cfg_function
from comfy_core.sampling.guidance import CFGDenoiser, InpaintDenoiser, prepare_conds
from comfy_core.sampling.samplers import get_sampler
from comfy_core.sampling.schedulers import ksampler_sigmas
from fixtures_nodes import node_context
from fixtures_sampling import SECTIONS, make_toy, run_reference_case

FUSED = ["euler", "euler_ancestral", "dpmpp_2m", "ddim"]  # ddim is euler


# --- the toy harness (ComfyUI's reference cases) ----------------------------------------------------------------------

@pytest.mark.parametrize("section", list(SECTIONS))
@pytest.mark.parametrize("name", FUSED)
def test_fused_path_is_bit_identical_to_unfused_and_comfyui(name, section):
    fused, expected, calls = run_reference_case(name, section)
    unfused, _, unfused_calls = run_reference_case(name, section, fused=False)
    assert torch.equal(fused, unfused)
    assert torch.equal(fused, expected)  # CPU fp32: ComfyUI's float ops, bit for bit
    assert calls == unfused_calls  # same model evaluations (cfg 1: uncond skipped in both)


@pytest.mark.parametrize("name", FUSED)
def test_toy_fused_path_is_taken_and_callbacks_see_the_combined_prediction(name):
    sigmas = ksampler_sigmas(ModelSampling(), "karras", 5)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    seen: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    for fused in (True, False):
        toy = make_toy("samplers_cfg", fused=fused)
        get_sampler(name)(toy, x, sigmas, extra_args={"model_options": {}}, seed=3,
                          callback=lambda info, f=fused: seen[f].append(info["denoised"]))
        assert toy.guided_calls == (len(sigmas) - 1 if fused else 0)
    assert len(seen[True]) == len(sigmas) - 1
    assert all(torch.equal(a, b) for a, b in zip(seen[True], seen[False]))


def test_post_cfg_hooks_keep_the_unfused_path():
    toy = make_toy("samplers_cfg")
    sigmas = ksampler_sigmas(ModelSampling(), "karras", 4)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * sigmas[0]
    hooked: list[float] = []

    def hook(args: dict[str, Any]) -> torch.Tensor:
        hooked.append(float(args["sigma"][0]))
        return args["denoised"] * 0.5  # a hook that changes the result: fusing would lose it

    options = with_post_cfg_function({}, hook)
    out = get_sampler("euler")(toy, x, sigmas, extra_args={"model_options": options})
    assert toy.guided_calls == 0 and len(hooked) == len(sigmas) - 1
    plain = get_sampler("euler")(make_toy("samplers_cfg"), x, sigmas, extra_args={"model_options": {}})
    assert not torch.allclose(out, plain)


def test_guided_prediction_falls_back_to_the_plain_contract():
    x, sigma = torch.ones(1, 2, 2, 2), torch.tensor([3.0])
    parts = guided_prediction(lambda x, s, **kw: x * 2 + kw["shift"], x, sigma, {"shift": 1.0})
    assert parts.uncond is None and parts.cfg == 1.0 and torch.equal(parts.cond, x * 3)

    class Declines:
        def predict_guided(self, x, sigma, **kw):
            return None

        def __call__(self, x, sigma, **kw):
            return x * 5

    assert torch.equal(guided_prediction(Declines(), x, sigma, {}).cond, x * 5)


# --- the real guider (CFGDenoiser over conditioning lists) on a small linear stand-in model ---------------------------

class LinearModel:
    """A MODEL stand-in for the guider: apply_model = x·0.9/√(1+σ²) + mean of each row's context tokens."""

    def __init__(self) -> None:
        self.model_options: dict[str, Any] = {"transformer_options": {}}
        self.model_sampling = ModelSampling()
        self.rows: list[int] = []

    def extra_conds(self, **_: Any) -> dict[str, torch.Tensor]:
        return {}

    def apply_model(self, x, sigma, context=None, transformer_options=None, **_: Any) -> torch.Tensor:
        self.rows.append(x.shape[0])
        s = sigma.reshape(-1, 1, 1, 1)
        return x * 0.9 / (1 + s**2) ** 0.5 + context.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)


def _guider(cfg: float) -> tuple[CFGDenoiser, torch.Tensor, torch.Tensor]:
    model = LinearModel()
    gen = torch.Generator().manual_seed(7)
    noise = torch.randn(2, 4, 8, 8, generator=gen)
    pos = prepare_conds(model, [[torch.randn(1, 3, 16, generator=gen) + 1.0, {}]], noise, prompt_type="positive")
    neg = prepare_conds(model, [[torch.randn(1, 3, 16, generator=gen), {}]], noise, prompt_type="negative")
    sigmas = ksampler_sigmas(model.model_sampling, "karras", 5)
    return CFGDenoiser(model, pos, neg, cfg), noise * sigmas[0], sigmas


class _Spy:
    """Counts CFGDenoiser.predict_guided results (None = declined)."""

    def __init__(self, guider: CFGDenoiser, monkeypatch) -> None:
        self.parts: list[GuidedPrediction | None] = []
        real = guider.predict_guided
        def spy(*args: Any, **kwargs: Any) -> GuidedPrediction | None:
            self.parts.append(real(*args, **kwargs))
            return self.parts[-1]

        monkeypatch.setattr(guider, "predict_guided", spy)


@pytest.mark.parametrize("cfg", [1.0, 6.5])
@pytest.mark.parametrize("name", FUSED)
def test_cfg_denoiser_fused_path_matches_unfused(name, cfg, monkeypatch):
    guider, x, sigmas = _guider(cfg)
    spy = _Spy(guider, monkeypatch)
    fused = get_sampler(name)(guider, x, sigmas, extra_args={"model_options": {}}, seed=11)
    assert len(spy.parts) == len(sigmas) - 1 and all(p is not None for p in spy.parts)
    assert all((p.uncond is None) == (cfg == 1.0) for p in spy.parts)  # cfg 1: the uncond pass is skipped
    assert guider.model.rows == [2 if cfg == 1.0 else 4] * (len(sigmas) - 1)  # cond + uncond: one batch
    unfused = get_sampler(name)(lambda x, s, **kw: guider(x, s, **kw), x, sigmas,
                                extra_args={"model_options": {}}, seed=11)
    assert torch.equal(fused, unfused)


def test_cfg_denoiser_declines_with_hooks_on_the_call_or_the_model(monkeypatch):
    guider, x, sigmas = _guider(4.0)
    spy = _Spy(guider, monkeypatch)
    calls: list[int] = []
    hook_options = with_post_cfg_function({}, lambda args: calls.append(1) or args["denoised"])
    get_sampler("dpmpp_2m")(guider, x, sigmas, extra_args={"model_options": hook_options})
    guider.model.model_options = {**guider.model.model_options, **hook_options}  # a model patch (ComfyUI style)
    get_sampler("euler")(guider, x, sigmas, extra_args={"model_options": {}})
    assert spy.parts == [None] * (2 * (len(sigmas) - 1))
    assert len(calls) == 2 * (len(sigmas) - 1)  # the hooks ran on every step of both runs


def test_inpaint_wrapper_is_never_fused(monkeypatch):
    guider, x, sigmas = _guider(4.0)
    spy = _Spy(guider, monkeypatch)
    mask = torch.zeros(2, 4, 8, 8)
    mask[..., 2:6, 2:6] = 1.0
    latent = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(9))
    inpaint = InpaintDenoiser(guider, latent, x / sigmas[0], mask)
    assert getattr(inpaint, "predict_guided", None) is None
    out = get_sampler("euler")(inpaint, x, sigmas, extra_args={"model_options": {}})
    assert spy.parts == []
    torch.testing.assert_close(out * (1 - mask), latent * (1 - mask))  # the kept region ends on the source latent


# --- attention backend: engine config -> KSampler -> guider model_options -> UNet -------------------------------------

def test_guider_model_options_merge_the_models_transformer_options():
    model = LinearModel()
    model.model_options["transformer_options"]["patches"] = {"attn1": []}
    options = ksampler.guider_model_options(model, "reference")
    assert options == {"transformer_options": {"patches": {"attn1": []}, "attention_backend": "reference"}}
    assert "attention_backend" not in model.model_options["transformer_options"]  # the model is not changed
    assert ksampler.guider_model_options(model, "auto") == {} and ksampler.guider_model_options(model, None) == {}
    with pytest.raises(ComfyCoreError, match="unknown attention backend"):
        ksampler.guider_model_options(model, "flash-please")


@pytest.fixture()
def node_ctx(tmp_path):
    return node_context(tmp_path, models=ModelCache(), device=torch.device("cpu"), dtype=torch.float32)


def test_ksampler_node_forces_the_engine_attention_backend(node_ctx, tmp_path, monkeypatch):
    path = fm.write_checkpoint(tmp_path / "m.safetensors", "sd1", text=False, vae=False)
    model = node_ctx.models.load_unet(path)  # loaded outside the loader node: no backend in its options
    assert "attention_backend" not in model.model_options["transformer_options"]
    seen: list[str | None] = []
    real = attention_mod.attention
    monkeypatch.setattr(attention_mod, "attention",
                        lambda *a, backend=None, **k: seen.append(backend) or real(*a, backend=backend, **k))
    gen = torch.Generator().manual_seed(0)
    positive, negative = [[torch.randn(1, 3, 32, generator=gen), {}]], [[torch.randn(1, 3, 32, generator=gen), {}]]
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    forced = dataclasses.replace(node_ctx, config=msgspec.structs.replace(node_ctx.config,
                                                                          attention_backend="reference"))
    with context.use(forced):
        (out,) = KSampler().sample(model, 1, 1, 3.0, "euler", "normal", positive, negative, latent)
    assert seen and set(seen) == {"reference"}
    assert "attention_backend" not in model.model_options["transformer_options"]
    seen.clear()
    with context.use(node_ctx):  # "auto": the model's own choice (none), so the dispatcher gets no request
        (again,) = KSampler().sample(model, 1, 1, 3.0, "euler", "normal", positive, negative, latent)
    assert seen and set(seen) == {None}
    torch.testing.assert_close(out["samples"], again["samples"], rtol=1e-4, atol=1e-4)  # reference ≈ sdpa
