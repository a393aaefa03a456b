"""LoRA file formats: LyCORIS LoHa / LoKr (plain and Tucker), DoRA, full diffs, bias diffs, set_weight, diffusers /
PEFT / SimpleTuner key names for the UNet and both SDXL text encoders, and unknown keys. Every patched weight is
checked against a formula written out here (not the code under test)."""
from __future__ import annotations

import logging

import fixtures_models as fm
import fixtures_text
import pytest
import torch

from comfy_core.models.checkpoint import build_diffusion_model
from comfy_core.models.lora import (
    LoraPatch,
    LoraWeights,
    PatchState,
    clip_lora_targets,
    unet_targets,
)
from comfy_core.models.lora_formats import DoraWeights, LohaWeights, LokrWeights
from comfy_core.models.state_dict import TensorDict
from comfy_core.models.text_encoders import load_clip_from_state_dict
from comfy_core.nodes.loaders import apply_lora

Q1 = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"  # tiny SD1: down_blocks.0.attentions.0
OUT1 = "input_blocks.1.1.transformer_blocks.0.attn1.to_out.0.weight"
CONV1 = "input_blocks.1.0.in_layers.2.weight"  # down_blocks.0.resnets.0.conv1, [32, 32, 3, 3]


def tiny(family="sd1"):
    sd = TensorDict(fm.checkpoint_state_dict(family, text=False, vae=False, dtype=torch.float32))
    return build_diffusion_model(sd, device="cpu", dtype=torch.float32, source=family)


def rnd(*shape, seed=0, scale=0.3):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def params_with(module, patches):
    """Every parameter of `module` with `patches` applied (then restored)."""
    state = PatchState.of(module)
    with state.lock:
        state.ensure(module, tuple(patches))
        out = {n: p.detach().clone() for n, p in module.named_parameters()}
        state.restore(module)
    return out


def base_params(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def unet_after(model, lora_sd, strength=1.0):
    patched, _ = apply_lora(model, None, lora_sd, strength, 0.0)
    return params_with(model.unet, patched.patches)


def kron_by_hand(a, b):
    """Kronecker product of 2-D `a` with `b` (2-D or 4-D, the kernel dims kept): out[i·o2+c, j·i2+d] = a[i,j]·b[c,d]."""
    o2, i2 = b.shape[:2]
    out = torch.zeros(a.shape[0] * o2, a.shape[1] * i2, *b.shape[2:])
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            out[i * o2:(i + 1) * o2, j * i2:(j + 1) * i2] = a[i, j] * b
    return out


def tucker_by_hand(t, b, a):
    """sum_ij t[i,j,k,l]·b[j,r]·a[i,p] -> [p, r, k, l], as explicit batched matmuls over the kernel positions."""
    tk = t.permute(2, 3, 0, 1)  # [k, l, i, j]
    return (a.T @ (tk @ b)).permute(2, 3, 0, 1)  # [k, l, p, r] -> [p, r, k, l]


# ------------------------------------------------------------------------------------------------------------------
# Adapter formulas
# ------------------------------------------------------------------------------------------------------------------
def test_loha_delta_formula_linear_and_tucker():
    w1a, w1b, w2a, w2b = rnd(6, 3, seed=1), rnd(3, 5, seed=2), rnd(6, 3, seed=3), rnd(3, 5, seed=4)
    d = LohaWeights(w1a, w1b, w2a, w2b, alpha=1.5).delta(torch.Size([6, 5]))
    assert torch.allclose(d, (w1a @ w1b) * (w2a @ w2b) * 1.5 / 3, atol=1e-6)
    assert torch.allclose(LohaWeights(w1a, w1b, w2a, w2b).delta(torch.Size([6, 5])), (w1a @ w1b) * (w2a @ w2b))
    # Tucker (CP) conv: a [r, out], b [r, in], t [r, r, 3, 3]
    a1, b1, t1 = rnd(2, 4, seed=5), rnd(2, 3, seed=6), rnd(2, 2, 3, 3, seed=7)
    a2, b2, t2 = rnd(2, 4, seed=8), rnd(2, 3, seed=9), rnd(2, 2, 3, 3, seed=10)
    d = LohaWeights(a1, b1, a2, b2, alpha=4.0, t1=t1, t2=t2).delta(torch.Size([4, 3, 3, 3]))
    expected = tucker_by_hand(t1, b1, a1) * tucker_by_hand(t2, b2, a2) * 4.0 / 2
    assert d.shape == (4, 3, 3, 3) and torch.allclose(d, expected, atol=1e-6)


def test_lokr_delta_formula_full_pairs_and_conv():
    w1, w2 = rnd(2, 3, seed=1), rnd(4, 5, seed=2)
    # both factors whole: no alpha scaling even with an alpha (there is no rank to divide by)
    assert torch.allclose(LokrWeights(w1=w1, w2=w2, alpha=7.0).delta(torch.Size([8, 15])), kron_by_hand(w1, w2))
    w2a, w2b = rnd(4, 2, seed=3), rnd(2, 5, seed=4)
    d = LokrWeights(w1=w1, alpha=3.0, w2a=w2a, w2b=w2b).delta(torch.Size([8, 15]))
    assert torch.allclose(d, kron_by_hand(w1, w2a @ w2b) * 3.0 / 2, atol=1e-6)
    w1a, w1b = rnd(2, 1, seed=5), rnd(1, 3, seed=6)  # w1 as a pair; the w2 rank (2) still sets the scale
    d = LokrWeights(alpha=3.0, w1a=w1a, w1b=w1b, w2a=w2a, w2b=w2b).delta(torch.Size([8, 15]))
    assert torch.allclose(d, kron_by_hand(w1a @ w1b, w2a @ w2b) * 3.0 / 2, atol=1e-6)
    conv_w2 = rnd(4, 5, 3, 3, seed=7)  # conv: w1 [o1, i1] spreads over the kernel of w2
    d = LokrWeights(w1=w1, w2=conv_w2).delta(torch.Size([8, 15, 3, 3]))
    assert torch.allclose(d, kron_by_hand(w1, conv_w2), atol=1e-6)
    t2, a, b = rnd(2, 2, 3, 3, seed=8), rnd(2, 4, seed=9), rnd(2, 5, seed=10)
    d = LokrWeights(w1=w1, alpha=1.0, w2a=a, w2b=b, t2=t2).delta(torch.Size([8, 15, 3, 3]))
    assert torch.allclose(d, kron_by_hand(w1, tucker_by_hand(t2, b, a)) * 0.5, atol=1e-6)


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_dora_decomposition_by_hand(strength):
    w = rnd(6, 5, seed=1, scale=1.0)
    up, down, m = rnd(6, 2, seed=2), rnd(2, 5, seed=3), 1.0 + rnd(1, 5, seed=4)
    v = w + (3.0 / 2) * up @ down
    col_norm = torch.sqrt((v**2).sum(dim=0, keepdim=True))  # per input channel, over the outputs
    adapted = v * m / col_norm
    expected = w + strength * (adapted - w)
    target = w.clone()
    DoraWeights(LoraWeights(up, down, alpha=3.0), m).apply(target, strength, "w")
    assert torch.allclose(target, expected, atol=1e-5)
    if strength == 1.0:
        assert torch.allclose(target.norm(dim=0), m[0], atol=1e-5)  # columns take the learned magnitudes


# ------------------------------------------------------------------------------------------------------------------
# Whole files on the tiny UNet
# ------------------------------------------------------------------------------------------------------------------
def test_mixed_lycoris_file_patches_unet_weights(caplog):
    model = tiny()
    base = base_params(model.unet)
    loha = [rnd(32, 4, seed=1), rnd(4, 32, seed=2), rnd(32, 4, seed=3), rnd(4, 32, seed=4)]
    lokr_w1, lokr_w2a, lokr_w2b = rnd(4, 4, seed=5), rnd(8, 2, seed=6), rnd(2, 8 * 9, seed=7)
    up, down, mag = rnd(32, 2, seed=8), rnd(2, 32, seed=9), 1.0 + rnd(1, 32, seed=10)
    diff, diff_b, new_w = rnd(32, 32, seed=11), rnd(32, seed=12), rnd(256, 32, seed=13)
    k_q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    k_conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    k_out = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_out_0"
    sd = {f"{k_q}.hada_w1_a": loha[0], f"{k_q}.hada_w1_b": loha[1], f"{k_q}.hada_w2_a": loha[2],
          f"{k_q}.hada_w2_b": loha[3], f"{k_q}.alpha": torch.tensor(2.0),
          f"{k_conv}.lokr_w1": lokr_w1, f"{k_conv}.lokr_w2_a": lokr_w2a, f"{k_conv}.lokr_w2_b": lokr_w2b,
          f"{k_conv}.alpha": torch.tensor(1.0),
          f"{k_out}.lora_up.weight": up, f"{k_out}.lora_down.weight": down, f"{k_out}.alpha": torch.tensor(2.0),
          f"{k_out}.dora_scale": mag,
          "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.diff": diff,
          "diffusion_model.input_blocks.1.1.proj_out.diff_b": diff_b,
          "diffusion_model.input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.set_weight": new_w}
    with caplog.at_level(logging.WARNING):
        got = unet_after(model, sd, 0.7)
    s = 0.7
    expected_q = base[Q1] + s * (loha[0] @ loha[1]) * (loha[2] @ loha[3]) * 2.0 / 4
    assert torch.allclose(got[Q1], expected_q, atol=1e-5)
    lokr = kron_by_hand(lokr_w1, (lokr_w2a @ lokr_w2b).reshape(8, 8, 3, 3).flatten(1)).reshape(32, 32, 3, 3)
    assert torch.allclose(got[CONV1], base[CONV1] + s * lokr * 1.0 / 2, atol=1e-5)
    v = base[OUT1] + up @ down
    adapted = v * mag / v.norm(dim=0, keepdim=True)
    assert torch.allclose(got[OUT1], base[OUT1] + s * (adapted - base[OUT1]), atol=1e-5)
    to_k = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert torch.allclose(got[to_k], base[to_k] + s * diff, atol=1e-6)
    assert torch.allclose(got["input_blocks.1.1.proj_out.bias"], base["input_blocks.1.1.proj_out.bias"] + s * diff_b)
    assert torch.equal(got["input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight"], new_w)  # strength ignored
    changed = {n for n in got if not torch.equal(got[n], base[n])}
    assert changed == {Q1, CONV1, OUT1, to_k, "input_blocks.1.1.proj_out.bias",
                       "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight"}
    assert "not loaded" not in caplog.text
    assert all(torch.equal(p, base[n]) for n, p in model.unet.named_parameters())  # cached weights untouched


_JOINED = ("down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
           "proj_in", "proj_out", "time_emb_proj", "conv_shortcut")


def _peft_names(kohya_sd):
    """The same LoRA in diffusers PEFT names: unet.<diffusers path>.lora_A/lora_B.weight (alpha kept)."""
    out = {}
    for key, value in kohya_sd.items():
        module, _, suffix = key.partition(".")
        path = module[len("lora_unet_"):].replace("_", ".")
        for name in _JOINED:
            path = path.replace(name.replace("_", "."), name)
        suffix = {"lora_up.weight": "lora_B.weight", "lora_down.weight": "lora_A.weight"}.get(suffix, suffix)
        out[f"unet.{path}.{suffix}"] = value
    return out


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_diffusers_peft_names_equal_kohya_names(family, caplog):
    model = tiny(family)
    kohya = fm.kohya_lora_state_dict(family, conv=True, text=False, dtype=torch.float32)
    peft = _peft_names(kohya)
    assert any(".attn1.to_out.0.lora_B.weight" in k for k in peft) and any(".ff.net.0.proj." in k for k in peft)
    with caplog.at_level(logging.WARNING):
        a, b = unet_after(model, kohya, 0.9), unet_after(model, peft, 0.9)
    assert "not loaded" not in caplog.text
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert sum(not torch.equal(a[n], p) for n, p in model.unet.named_parameters()) == len(
        {k.partition(".")[0] for k in kohya})


def test_processor_lycoris_and_ldm_names_reach_the_same_weights():
    """ComfyUI's other UNet names: diffusers attention processors (to_out drops its .0), SimpleTuner `lycoris_`,
    plain LDM paths with and without `lora_unet_`."""
    cfg = fm.TINY_UNETS["sd1"]
    model = tiny()
    targets = unet_targets(cfg, [n for n, _ in model.unet.named_parameters()])
    d = "down_blocks.0.attentions.0.transformer_blocks.0.attn1"
    assert targets[f"unet.{d}.processor.to_q"] == (Q1, None) == targets[f"{d}.processor.to_q"]
    assert targets[f"unet.{d}.processor.to_out"] == (OUT1, None) == targets[f"unet.{d}.to_out.0"]
    assert targets[f"lycoris_{d.replace('.', '_')}_to_q"] == (Q1, None)
    assert targets["lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"] == (Q1, None)
    assert targets["lora_unet_down_blocks_0_resnets_0_conv1"] == (CONV1, None)
    assert targets["diffusion_model.input_blocks.1.0.in_layers.2.bias"] == ("input_blocks.1.0.in_layers.2.bias", None)
    up, down = rnd(32, 2, seed=1), rnd(2, 32, seed=2)
    old_style = {f"{d}.processor.to_out_lora.up.weight": up, f"{d}.processor.to_out_lora.down.weight": down}
    kohya = {"lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_out_0.lora_up.weight": up,
             "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_out_0.lora_down.weight": down}
    a, b = unet_after(model, old_style), unet_after(model, kohya)
    assert torch.equal(a[OUT1], b[OUT1]) and torch.allclose(a[OUT1] - model.unet.get_parameter(OUT1), up @ down,
                                                             atol=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# Text encoders (SD1 and both SDXL encoders)
# ------------------------------------------------------------------------------------------------------------------
def test_text_encoder_names_sd1_and_sdxl():
    sd1 = load_clip_from_state_dict(fixtures_text.tiny_sd1_text())
    t = clip_lora_targets(sd1)["l"]
    q0 = ("text_model.encoder.layers.0.self_attn.q_proj.weight", None)
    assert t["lora_te_text_model_encoder_layers_0_self_attn_q_proj"] == q0
    assert t["text_encoder.text_model.encoder.layers.0.self_attn.q_proj"] == q0
    assert t["text_encoders.clip_l.transformer.text_model.encoder.layers.0.self_attn.q_proj"] == q0
    xl = clip_lora_targets(load_clip_from_state_dict(fixtures_text.tiny_sdxl_text()))
    w = fixtures_text.CLIP_G_WIDTH
    fc1 = ("text_model.encoder.layers.2.mlp.fc1.weight", None)
    assert xl["l"]["lora_te1_text_model_encoder_layers_2_mlp_fc1"] == fc1
    assert xl["l"]["lora_te_text_model_encoder_layers_2_mlp_fc1"] == fc1  # ComfyUI maps lora_te_ to CLIP-L too
    assert xl["l"]["text_encoder.text_model.encoder.layers.2.mlp.fc1"] == fc1
    v1 = ("transformer.resblocks.1.attn.in_proj_weight", (2 * w, 3 * w))
    assert xl["g"]["lora_te2_text_model_encoder_layers_1_self_attn_v_proj"] == v1
    assert xl["g"]["text_encoder_2.text_model.encoder.layers.1.self_attn.v_proj"] == v1
    assert "text_encoder.text_model.encoder.layers.1.self_attn.v_proj" not in xl["g"]
    assert xl["g"]["text_encoder_2.text_model.encoder.layers.0.mlp.fc2"] == ("transformer.resblocks.0.mlp.c_proj.weight",
                                                                              None)


def test_sdxl_text_lora_diffusers_equals_kohya_on_both_encoders():
    clip = load_clip_from_state_dict(fixtures_text.tiny_sdxl_text())  # fp16 encoders: compare at fp16 precision
    wl, wg = fixtures_text.CLIP_L_WIDTH, fixtures_text.CLIP_G_WIDTH
    ul, dl, ug, dg = rnd(wl, 2, seed=1), rnd(2, wl, seed=2), rnd(wg, 2, seed=3), rnd(2, wg, seed=4)
    kohya = {"lora_te1_text_model_encoder_layers_1_self_attn_k_proj.lora_up.weight": ul,
             "lora_te1_text_model_encoder_layers_1_self_attn_k_proj.lora_down.weight": dl,
             "lora_te2_text_model_encoder_layers_0_self_attn_k_proj.lora_up.weight": ug,
             "lora_te2_text_model_encoder_layers_0_self_attn_k_proj.lora_down.weight": dg}
    diffusers = {"text_encoder.text_model.encoder.layers.1.self_attn.k_proj.lora_B.weight": ul,
                 "text_encoder.text_model.encoder.layers.1.self_attn.k_proj.lora_A.weight": dl,
                 "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora.up.weight": ug,
                 "text_encoder_2.text_model.encoder.layers.0.self_attn.k_proj.lora.down.weight": dg}
    results = []
    for sd in (kohya, diffusers):
        _, new_clip = apply_lora(None, clip, sd, 1.0, 0.5)
        assert sorted(p.target for p in new_clip.patches) == ["g", "l"]
        results.append({role: params_with(m, [p for p in new_clip.patches if p.target == role])
                        for role, m in clip.modules().items()})
    base_l, base_g = base_params(clip.modules()["l"]), base_params(clip.modules()["g"])
    for role in ("l", "g"):
        assert all(torch.equal(results[0][role][n], results[1][role][n]) for n in results[0][role])
    k1 = "text_model.encoder.layers.1.self_attn.k_proj.weight"
    expected = (base_l[k1].float() + 0.5 * ul @ dl).to(base_l[k1].dtype)
    assert torch.allclose(results[0]["l"][k1].float(), expected.float(), atol=1e-3)
    fused = "transformer.resblocks.0.attn.in_proj_weight"
    delta = results[0]["g"][fused].float() - base_g[fused].float()
    assert torch.allclose(delta[wg:2 * wg], 0.5 * ug @ dg, atol=2e-3)
    assert delta[:wg].abs().max() == 0 and delta[2 * wg:].abs().max() == 0


# ------------------------------------------------------------------------------------------------------------------
# Unknown keys, fp8, composition
# ------------------------------------------------------------------------------------------------------------------
def test_file_without_usable_keys_is_a_noop_with_warnings(caplog):
    model = tiny()
    sd = {"lora_unet_no_such_block.lora_up.weight": torch.zeros(4, 2),
          "lora_unet_no_such_block.lora_down.weight": torch.zeros(2, 4), "some.random.tensor": torch.zeros(3)}
    with caplog.at_level(logging.WARNING):
        patched, _ = apply_lora(model, None, sd, 1.0, 0.0)
    assert patched.patches == model.patches
    for key in sd:
        assert f"lora key not loaded: {key}" in caplog.text
    assert "changes nothing" in caplog.text


def test_incomplete_lycoris_module_is_skipped_not_a_crash(caplog):
    model = tiny()
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    sd = {f"{k}.hada_w1_a": rnd(32, 2), f"{k}.hada_w1_b": rnd(2, 32)}  # w2 pair missing
    with caplog.at_level(logging.WARNING):
        patched, _ = apply_lora(model, None, sd, 1.0, 0.0)
    assert patched.patches == model.patches
    assert "LoHa module" in caplog.text and f"lora key not loaded: {k}.hada_w1_a" in caplog.text


def test_loha_on_fp8_weight_rounds_back_and_restores():
    lin = torch.nn.Linear(8, 6, bias=False)
    with torch.no_grad():
        lin.weight.copy_(rnd(6, 8, seed=1, scale=1.0))
    lin.weight.data = lin.weight.data.to(torch.float8_e4m3fn)
    base = lin.weight.detach().clone()
    w = [rnd(6, 2, seed=2), rnd(2, 8, seed=3), rnd(6, 2, seed=4), rnd(2, 8, seed=5)]
    patch = LoraPatch({"weight": ((LohaWeights(*w, alpha=1.0), None),)}, strength=0.8)
    got = params_with(lin, [patch])["weight"]
    expected = (base.float() + 0.8 * 0.5 * (w[0] @ w[1]) * (w[2] @ w[3])).to(torch.float8_e4m3fn)
    assert got.dtype == torch.float8_e4m3fn and torch.equal(got.view(torch.uint8), expected.view(torch.uint8))
    assert torch.equal(lin.weight.view(torch.uint8), base.view(torch.uint8))


def test_lycoris_stacks_with_a_kohya_lora_in_order():
    """DoRA sees the weight earlier patches produced (ComfyUI applies a stack in order)."""
    model = tiny()
    base = base_params(model.unet)[OUT1]
    up1, down1 = rnd(32, 2, seed=1), rnd(2, 32, seed=2)
    up2, down2, mag = rnd(32, 2, seed=3), rnd(2, 32, seed=4), 1.0 + rnd(1, 32, seed=5)
    k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0"
    first, _ = apply_lora(model, None, {f"{k}.lora_up.weight": up1, f"{k}.lora_down.weight": down1}, 0.5, 0.0)
    second, _ = apply_lora(first, None, {f"{k}.lora_up.weight": up2, f"{k}.lora_down.weight": down2,
                                         f"{k}.dora_scale": mag}, 1.0, 0.0)
    got = params_with(model.unet, second.patches)[OUT1]
    w1 = base + 0.5 * up1 @ down1
    v = w1 + up2 @ down2
    assert torch.allclose(got, v * mag / v.norm(dim=0, keepdim=True), atol=1e-5)
