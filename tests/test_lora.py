"""LoRA: kohya names resolve to the same weights as ComfyUI's key map (real SD1.5 layout), the patch formula,
exact restore of shared cached weights, strengths, LoCon convs, and text-encoder LoRA (HF and fused OpenCLIP)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import fixtures_models as fm
import fixtures_text
import pytest
import torch

from comfy_core.models.checkpoint import build_diffusion_model
from comfy_core.models.clip_lora import PatchedCLIP
from comfy_core.models.detect import detect_model
from comfy_core.models.lora import (
    LoraWeights,
    PatchState,
    text_encoder_targets,
    unet_targets,
)
from comfy_core.models.state_dict import TensorDict
from comfy_core.models.text_encoders import load_clip_from_state_dict
from comfy_core.models.unet import UNetModel
from comfy_core.nodes.loaders import apply_lora

LAYOUTS = json.loads(gzip.open(Path(__file__).parent / "data" / "model_layouts.json.gz").read())
MODULES = LAYOUTS["lora_sd15_modules"]


def tiny(family="sd1"):
    sd = TensorDict(fm.checkpoint_state_dict(family, text=False, vae=False, dtype=torch.float32))
    return build_diffusion_model(sd, device="cpu", dtype=torch.float32, source=family)


def test_kohya_unet_names_match_comfyui_targets_full_size():
    sd = TensorDict({k: torch.empty(s, device="meta") for k, s in LAYOUTS["sd15"]["tensors"].items()})
    cfg = detect_model(sd).unet
    with torch.device("meta"):
        names = [n for n, _ in UNetModel(cfg).named_parameters()]
    targets = unet_targets(cfg, names)
    unet_modules = {m: v for m, v in MODULES.items() if m.startswith("lora_unet_")}
    assert len(unet_modules) == 192 + 86
    for module, info in unet_modules.items():
        assert targets[module] == (info["target"][len("model.diffusion_model."):], None), module


def test_kohya_text_names_match_comfyui_targets():
    clip = load_clip_from_state_dict(fixtures_text.tiny_sd1_text())
    module = clip.modules()["l"]
    targets = text_encoder_targets(("lora_te_",), module)
    te = {m: v for m, v in MODULES.items() if m.startswith("lora_te_text_model_encoder_layers_") and
          int(m.split("_")[6]) < 3}
    assert len(te) == 18
    prefix = "cond_stage_model.transformer."
    for module_name, info in te.items():
        assert targets[module_name] == (info["target"][len(prefix):], None)


def test_lora_delta_formula():
    g = torch.Generator().manual_seed(0)
    up, down = torch.randn(6, 2, generator=g), torch.randn(2, 5, generator=g)
    lw = LoraWeights(up, down, alpha=1.0)
    assert torch.allclose(lw.delta(torch.Size([6, 5])), 0.5 * up @ down)
    assert torch.allclose(LoraWeights(up, down).delta(torch.Size([6, 5])), up @ down)  # no alpha: scale 1
    conv_down, conv_up = torch.randn(2, 3, 3, 3, generator=g), torch.randn(4, 2, 1, 1, generator=g)
    delta = LoraWeights(conv_up, conv_down, alpha=4.0).delta(torch.Size([4, 3, 3, 3]))
    assert torch.allclose(delta, 2.0 * (conv_up.flatten(1) @ conv_down.flatten(1)).reshape(4, 3, 3, 3))


def _merged_copy(model, lora_sd, strength):
    """Reference: a fresh UNet whose weights are W + strength·(alpha/r)·up@down, computed by hand."""
    ref = UNetModel(model.spec.unet)
    ref.load_state_dict(model.unet.state_dict())
    targets = unet_targets(model.spec.unet, [n for n, _ in ref.named_parameters()])
    params = dict(ref.named_parameters())
    hit = 0
    with torch.no_grad():
        for key in lora_sd:
            if not key.endswith(".lora_up.weight"):
                continue
            name = key[: -len(".lora_up.weight")]
            up, down = lora_sd[key].float(), lora_sd[name + ".lora_down.weight"].float()
            alpha = float(lora_sd[name + ".alpha"]) / down.shape[0]
            p = params[targets[name][0]]
            p += strength * alpha * (up.flatten(1) @ down.flatten(1)).reshape(p.shape)
            hit += 1
    return ref, hit


@pytest.mark.parametrize("conv", [False, True])
def test_patched_model_equals_merged_weights_and_base_is_restored(conv):
    model = tiny()
    lora_sd = fm.kohya_lora_state_dict("sd1", conv=conv, text=False)
    x, ctx, sigma = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 32), torch.tensor([1.5])
    before = model.apply_model(x, sigma, context=ctx)
    ref, hit = _merged_copy(model, lora_sd, 0.8)
    patched, _ = apply_lora(model, None, lora_sd, 0.8, 0.0)
    assert patched is not model and patched.unet is model.unet and len(patched.patches) == 1
    out = patched.apply_model(x, sigma, context=ctx)
    assert PatchState.of(model.unet).applied == (patched.patches[0].key(),)  # stays applied until needed
    assert hit == len(patched.patches[0].weights)
    with torch.no_grad():
        t = model.model_sampling.timestep(sigma).float()
        eps = ref(x / (sigma**2 + 1) ** 0.5, t, ctx)
    assert torch.allclose(out, x - eps * sigma, atol=1e-4)
    assert not torch.allclose(out, before)
    assert torch.equal(model.apply_model(x, sigma, context=ctx), before)  # base user gets exact weights back
    assert PatchState.of(model.unet).applied == ()
    model.unpatch()


def test_stacked_loras_and_strength_zero():
    model = tiny()
    a = fm.kohya_lora_state_dict("sd1", seed=1, text=False)
    b = fm.kohya_lora_state_dict("sd1", seed=2, text=False)
    x, ctx, sigma = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 32), torch.tensor([1.0])
    one, _ = apply_lora(model, None, a, 1.0, 0.0)
    two, _ = apply_lora(one, None, b, 0.5, 0.0)
    assert len(two.patches) == 2 and len(one.patches) == 1
    o1, o2 = one.apply_model(x, sigma, context=ctx), two.apply_model(x, sigma, context=ctx)
    assert not torch.allclose(o1, o2)
    assert torch.equal(one.apply_model(x, sigma, context=ctx), o1)  # switching back and forth is exact
    m, c = apply_lora(model, "clip", a, 0.0, 0.0)
    assert m is model and c == "clip"


def test_text_encoder_lora_hf_layout():
    clip = load_clip_from_state_dict(fixtures_text.tiny_sd1_text())
    tokens = clip.tokenize("a photo of a cat")
    base = clip.encode_from_tokens(tokens)
    lora_sd = fm.kohya_lora_state_dict("sd1", text=True)
    model = tiny()
    new_model, new_clip = apply_lora(model, clip, lora_sd, 1.0, 1.0)
    assert isinstance(new_clip, PatchedCLIP) and len(new_clip.patches) == 1
    assert new_clip.patches[0].target == "l" and len(new_clip.patches[0].weights) == 18
    patched = new_clip.encode_from_tokens(tokens)
    assert not torch.allclose(patched, base)
    assert torch.equal(clip.encode_from_tokens(tokens), base)
    only_model, same_clip = apply_lora(model, clip, lora_sd, 1.0, 0.0)
    assert same_clip is clip and len(only_model.patches) == 1


def test_text_encoder_lora_fused_openclip_rows():
    """lora_te2_ q/k/v land on row thirds of bigG's fused in_proj_weight."""
    clip = load_clip_from_state_dict(fixtures_text.tiny_sdxl_text())
    module = clip.modules()["g"]
    targets = text_encoder_targets(("lora_te2_",), module)
    w = fixtures_text.CLIP_G_WIDTH
    assert targets["lora_te2_text_model_encoder_layers_1_self_attn_k_proj"] == (
        "transformer.resblocks.1.attn.in_proj_weight", (w, 2 * w))
    g = torch.Generator().manual_seed(0)
    lora_sd = {"lora_te2_text_model_encoder_layers_0_self_attn_v_proj.lora_up.weight": torch.randn(w, 2, generator=g),
               "lora_te2_text_model_encoder_layers_0_self_attn_v_proj.lora_down.weight": torch.randn(2, w, generator=g)}
    before = module.transformer.resblocks[0].attn.in_proj_weight.detach().clone() if hasattr(module, "transformer") \
        else dict(module.named_parameters())["transformer.resblocks.0.attn.in_proj_weight"].detach().clone()
    _, new_clip = apply_lora(None, clip, lora_sd, 1.0, 1.0)
    tokens = clip.tokenize("hello")
    base = clip.encode_from_tokens(tokens)
    assert not torch.allclose(new_clip.encode_from_tokens(tokens), base)
    state = PatchState.of(module)
    with state.lock:
        state.ensure(module, new_clip.patches)
        after = dict(module.named_parameters())["transformer.resblocks.0.attn.in_proj_weight"].detach().clone()
        state.restore(module)
    delta = after - before
    assert delta[: 2 * w].abs().max() == 0 and delta[2 * w:].abs().max() > 0
