"""Model merging, attention multiply and model saving: merged weights follow ComfyUI's patch formula
(W = strength_model·W1 + strength·W2, float32, cast once), block ratios use the longest key prefix, patches stack with
LoRA in order, cached base weights are never changed, and saved files load back to the same outputs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import fixtures_models as fm
import fixtures_text
import pytest
from fixtures_nodes import engine_config
import test_loader_nodes
import torch
from safetensors import safe_open

from comfy_core.models.checkpoint import build_diffusion_model
from comfy_core.models.lora import clip_patched
from comfy_core.models.merging import block_strengths
from comfy_core.models.state_dict import TensorDict
from comfy_core.models.text_encoders import load_clip_from_state_dict
from comfy_core.nodes import loaders
from comfy_core.nodes import model_merging as mm
from comfy_core.nodes.loaders import apply_lora


def tiny(family="sd1", seed=0, dtype=torch.float32):
    sd = TensorDict(fm.checkpoint_state_dict(family, text=False, vae=False, dtype=dtype, seed=seed))
    return build_diffusion_model(sd, device="cpu", dtype=dtype, source=f"{family}-{seed}")


def weights(model) -> dict[str, torch.Tensor]:
    """The UNet weights as `model` sees them (its patches applied), copied."""
    with model.patched_unet() as unet:
        return {k: v.detach().clone() for k, v in unet.named_parameters()}


def raw(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.unet.named_parameters()}


@pytest.fixture()
def pair():
    return tiny(seed=0), tiny(seed=1)


def test_simple_merge_is_the_weighted_sum(pair):
    m1, m2 = pair
    w1, w2 = raw(m1), raw(m2)
    (merged,) = mm.ModelMergeSimple().merge(m1, m2, 0.3)
    got = weights(merged)
    assert set(got) == set(w1)
    for k in w1:  # ComfyUI's order: w1 *= 0.3, then += 0.7·w2
        assert torch.equal(got[k], w1[k] * 0.3 + 0.7 * w2[k]), k
    assert not torch.equal(got["out.2.weight"], w1["out.2.weight"])
    assert merged is not m1 and m1.patches == ()


def test_ratio_edges_are_exact(pair):
    m1, m2 = pair
    w1, w2 = raw(m1), raw(m2)
    (keep,) = mm.ModelMergeSimple().merge(m1, m2, 1.0)
    (take,) = mm.ModelMergeSimple().merge(m1, m2, 0.0)
    got_keep, got_take = weights(keep), weights(take)
    assert all(torch.equal(got_keep[k], w1[k]) for k in w1)
    assert all(torch.equal(got_take[k], w2[k]) for k in w1)


def test_subtract_and_add(pair):
    m1, m2 = pair
    w1, w2 = raw(m1), raw(m2)
    (sub,) = mm.ModelMergeSubtract().merge(m1, m2, 2.0)
    (add,) = mm.ModelMergeAdd().merge(m1, m2)
    got_sub, got_add = weights(sub), weights(add)
    k = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    assert torch.allclose(got_sub[k], 2.0 * (w1[k] - w2[k]), atol=1e-6)
    assert torch.equal(got_add[k], w1[k] + w2[k])
    # add difference: (m1 - m2)·1 + m2 gives m1 back
    (back,) = mm.ModelMergeAdd().merge(mm.ModelMergeSubtract().merge(m1, m2, 1.0)[0], m2)
    assert torch.allclose(weights(back)[k], w1[k], atol=1e-6)


def test_base_weights_in_the_cache_are_untouched(pair):
    m1, m2 = pair
    w1, w2 = raw(m1), raw(m2)
    (merged,) = mm.ModelMergeSimple().merge(m1, m2, 0.5)
    x, c = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 32)
    plain = m1.apply_model(x, torch.tensor([1.0]), context=c)
    out = merged.apply_model(x, torch.tensor([1.0]), context=c)
    assert not torch.allclose(out, plain)
    assert torch.equal(m1.apply_model(x, torch.tensor([1.0]), context=c), plain)
    m1.unpatch()
    assert all(torch.equal(v, w1[k]) for k, v in raw(m1).items())
    assert all(torch.equal(v, w2[k]) for k, v in raw(m2).items())


def test_merge_reads_the_other_models_originals_whatever_it_holds(pair):
    """model2's shared module currently patched for someone else: the merge still uses its original weights."""
    m1, m2 = pair
    w1, w2 = raw(m1), raw(m2)
    (scaled,) = mm.UNetSelfAttentionMultiply().patch(m2, 3.0, 3.0, 3.0, 3.0)
    weights(scaled)  # m2's module now holds the scaled weights
    (merged,) = mm.ModelMergeSimple().merge(m1, m2, 0.25)
    got = weights(merged)
    k = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(got[k], w1[k] * 0.25 + 0.75 * w2[k])


def test_merge_with_the_same_module_and_other_dtype():
    m1 = tiny(seed=0)
    half = tiny(seed=1, dtype=torch.float16)
    w1, wh = raw(m1), raw(half)
    (merged,) = mm.ModelMergeSimple().merge(m1, half, 0.6)
    got = weights(merged)
    k = "out.2.weight"
    assert torch.equal(got[k], w1[k] * 0.6 + 0.4 * wh[k].float())
    (self_merge,) = mm.ModelMergeAdd().merge(m1, m1)  # one shared module on both sides
    assert torch.equal(weights(self_merge)[k], w1[k] + w1[k])


def test_block_ratios_longest_prefix_wins(pair):
    m1, m2 = pair
    w1, w2 = raw(m1), raw(m2)
    (merged,) = mm.ModelMergeBlocks().merge(m1, m2, input=0.25, middle=0.5, out=0.75)
    got = weights(merged)

    def expect(k, r):
        return w1[k] * r + (1 - r) * w2[k]

    for k in w1:
        r = 0.5 if k.startswith("middle") else 0.75 if k.startswith("out") else 0.25  # output_blocks -> "out"
        assert torch.equal(got[k], expect(k, r)), k
    s = block_strengths([("input_blocks.1", 0.1), ("input_blocks.10", 0.9), ("time_embed.", 0.3)])
    assert s("input_blocks.10.0.x") == pytest.approx((0.1, 0.9))
    assert s("input_blocks.1.0.x") == pytest.approx((0.9, 0.1))
    assert s("label_emb.0.weight") == pytest.approx((0.9, 0.1))  # no match: the first ratio


def test_model_specific_block_nodes(pair):
    m1, m2 = pair
    w1, w2 = raw(m1), raw(m2)
    blocks = mm.ModelMergeSD1.blocks()
    assert len(blocks) == 30 and blocks[0] == "time_embed." and "input_blocks.11." in blocks
    ratios = dict.fromkeys(blocks, 1.0)
    ratios.update({"time_embed.": 0.0, "output_blocks.1.": 0.5})
    (merged,) = mm.ModelMergeSD1().merge(m1, m2, **ratios)
    got = weights(merged)
    for k in w1:
        r = 0.0 if k.startswith("time_embed.") else 0.5 if k.startswith("output_blocks.1.") else 1.0
        assert torch.equal(got[k], w1[k] * r + (1 - r) * w2[k]), k
    assert mm.ModelMergeSDXL.blocks()[2:4] == ["input_blocks.0", "input_blocks.1"]
    assert len(mm.ModelMergeSDXL.blocks()) == 24 and mm.ModelMergeSD2.blocks() == blocks


def test_merge_stacks_with_lora_in_order(pair):
    m1, m2 = pair
    w1, w2 = raw(m1), raw(m2)
    lora = fm.kohya_lora_state_dict("sd1", text=False, dtype=torch.float32)
    lora_m1, _ = apply_lora(m1, None, lora, 0.8, 0.0)
    lw1 = weights(lora_m1)
    k = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    delta = lw1[k] - w1[k]
    assert delta.abs().max() > 0
    # model2 carrying a LoRA: the merge takes model2's patched weights (get_key_patches semantics)
    (merge_in,) = mm.ModelMergeSimple().merge(m2, lora_m1, 0.5)
    assert torch.equal(weights(merge_in)[k], w2[k] * 0.5 + 0.5 * lw1[k])
    # LoRA before the merge on model1 is scaled by the ratio; after the merge it is added in full
    (before,) = mm.ModelMergeSimple().merge(lora_m1, m2, 0.5)
    after, _ = apply_lora(mm.ModelMergeSimple().merge(m1, m2, 0.5)[0], None, lora, 0.8, 0.0)
    assert torch.equal(weights(before)[k], lw1[k] * 0.5 + 0.5 * w2[k])
    assert torch.allclose(weights(after)[k], w1[k] * 0.5 + 0.5 * w2[k] + delta, atol=1e-6)
    assert len(after.patches) == 2
    m1.unpatch()
    assert torch.equal(raw(m1)[k], w1[k])


def _attn_names(model):
    return [k for k, _ in model.unet.named_parameters() if ".attn1." in k or ".attn2." in k]


@pytest.mark.parametrize("node, attn", [(mm.UNetSelfAttentionMultiply, "attn1"),
                                        (mm.UNetCrossAttentionMultiply, "attn2")])
def test_unet_attention_multiply_scales_exactly_q_k_v_out(pair, node, attn):
    m1, _ = pair
    w = raw(m1)
    (patched,) = node().patch(m1, 2.0, 3.0, 0.5, 4.0)
    got = weights(patched)
    factors = {"to_q": 2.0, "to_k": 3.0, "to_v": 0.5, "to_out": 4.0}
    scaled = 0
    for k in w:
        f = 1.0
        if f".{attn}." in k:
            f = factors[k.split(f".{attn}.")[1].split(".")[0]]
            scaled += 1
        assert torch.equal(got[k], w[k] * f), k
    assert scaled == len([k for k in _attn_names(m1) if f".{attn}." in k]) and scaled >= 5  # incl. to_out bias


def test_clip_attention_multiply_hf_and_fused_openclip():
    for text, role in ((fixtures_text.tiny_sd1_text(), "l"), (fixtures_text.tiny_sd2_text(), "h")):
        clip = load_clip_from_state_dict(text)
        module = clip.modules()[role]
        before = {k: v.detach().float().clone() for k, v in module.named_parameters()}
        (patched,) = mm.CLIPAttentionMultiply().patch(clip, 2.0, 3.0, 0.5, 4.0)
        with clip_patched(patched):
            got = {k: v.detach().float().clone() for k, v in module.named_parameters()}
        for k, b in before.items():
            if role == "l":
                f = {"q_proj": 2.0, "k_proj": 3.0, "v_proj": 0.5, "out_proj": 4.0}.get(k.split(".")[-2], 1.0) \
                    if ".self_attn." in k else 1.0
                expect = (b * f).half().float()
            elif ".attn.in_proj_" in k:
                c = b.shape[0] // 3
                expect = torch.cat([b[:c] * 2.0, b[c:2 * c] * 3.0, b[2 * c:] * 0.5]).half().float()
            else:
                expect = (b * (4.0 if ".attn.out_proj." in k else 1.0)).half().float()
            assert torch.equal(got[k], expect), k
        assert all(torch.equal(v.detach().float(), before[k]) for k, v in module.named_parameters())  # restored


def test_clip_merge_formula_and_skipped_keys():
    c1 = load_clip_from_state_dict(fixtures_text.tiny_sd1_text(seed=0))
    c2 = load_clip_from_state_dict(fixtures_text.tiny_sd1_text(seed=3))
    p1 = {k: v.detach().clone() for k, v in c1.modules()["l"].named_parameters()}
    p2 = {k: v.detach().clone() for k, v in c2.modules()["l"].named_parameters()}
    for node, args, fn in ((mm.CLIPMergeSimple(), (0.25,), lambda a, b: a * 0.25 + 0.75 * b),
                           (mm.CLIPMergeSubtract(), (2.0,), lambda a, b: a * 2.0 + -2.0 * b),
                           (mm.CLIPMergeAdd(), (), lambda a, b: a + b)):
        (merged,) = node.merge(c1, c2, *args)
        with clip_patched(merged):
            got = {k: v.detach().clone() for k, v in merged.modules()["l"].named_parameters()}
        for k, a in p1.items():
            assert torch.equal(got[k], fn(a.float(), p2[k].float()).half()), k
    e1 = c1.encode("a cat")
    assert not torch.allclose(mm.CLIPMergeSimple().merge(c1, c2, 0.5)[0].encode("a cat"), e1)
    assert torch.equal(c1.encode("a cat"), e1)
    assert mm.merging._CLIP_SKIPPED == (".position_ids", ".logit_scale")


# --- saving ---------------------------------------------------------------------------------------------------------
ctx = test_loader_nodes.ctx  # the node-context fixture (CPU, float32, a ModelCache)


def _models(ctx) -> Path:
    return Path(ctx.config.models_dir)


def _out(ctx) -> Path:
    return Path(ctx.config.output_dir)


def _read(path: Path) -> tuple[set[str], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return set(f.keys()), f.metadata() or {}


def _outputs(model, clip, vae):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    cond, pooled = clip.encode_from_tokens(clip.tokenize("a red cat"), return_pooled=True)
    kw = {}
    if model.spec.family == "sdxl":
        kw["y"] = model.extra_conds(noise=x, pooled_output=pooled)["y"]
    den = model.apply_model(x, torch.tensor([2.0]), context=cond, **kw)
    return den, cond, vae.decode(x)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_checkpoint_save_round_trip(ctx, family):
    fm.write_checkpoint(_models(ctx) / "checkpoints" / "a.safetensors", family, seed=0)
    fm.write_checkpoint(_models(ctx) / "checkpoints" / "b.safetensors", family, seed=9)
    model, clip, vae = loaders.CheckpointLoaderSimple().load_checkpoint("a.safetensors")
    model_b, clip_b, _ = loaders.CheckpointLoaderSimple().load_checkpoint("b.safetensors")
    (merged,) = mm.ModelMergeSimple().merge(model, model_b, 0.4)
    (mclip,) = mm.CLIPMergeSimple().merge(clip, clip_b, 0.4)
    prompt, extra = {"1": {"class_type": "CheckpointSave"}}, {"workflow": {"nodes": [1]}}
    assert mm.CheckpointSave().save(merged, mclip, vae, "checkpoints/ComfyUI", prompt, extra) == {}
    path = _out(ctx) / "checkpoints" / "ComfyUI_00001_.safetensors"
    keys, meta = _read(path)
    expected = {k for k in fm.checkpoint_state_dict(family) if not k.endswith("logit_scale")}
    assert keys == expected  # the LDM layout we load (SDXL: CLIP-L position ids too, as in real files)
    assert json.loads(meta["prompt"]) == prompt and json.loads(meta["workflow"]) == extra["workflow"]
    assert meta["modelspec.predict_key"] == "epsilon"
    if family == "sdxl":
        assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
        assert meta["modelspec.title"] == "ComfyUI 1" and meta["modelspec.implementation"] == "sgm"
    else:
        assert "modelspec.architecture" not in meta
    shutil.copy(path, _models(ctx) / "checkpoints" / "merged.safetensors")
    loaded = loaders.CheckpointLoaderSimple().load_checkpoint("merged.safetensors")
    for ours, back in zip(_outputs(merged, mclip, vae), _outputs(*loaded)):
        assert torch.allclose(ours, back, atol=1e-5, rtol=1e-5)
    mm.CheckpointSave().save(merged, mclip, vae, "checkpoints/ComfyUI", None, None)
    assert (_out(ctx) / "checkpoints" / "ComfyUI_00002_.safetensors").exists()
    assert "prompt" in _read(_out(ctx) / "checkpoints" / "ComfyUI_00002_.safetensors")[1]


def test_model_save_vae_save_and_v_prediction(ctx):
    sd = fm.checkpoint_state_dict("sd2", v_pred_key=True)
    fm.write(_models(ctx) / "checkpoints" / "v.safetensors", {**sd, "ztsnr": torch.tensor([])})
    model, _, vae = loaders.CheckpointLoaderSimple().load_checkpoint("v.safetensors")
    (scaled,) = mm.UNetCrossAttentionMultiply().patch(model, 1.5, 1.0, 1.0, 0.5)
    mm.ModelSave().save(scaled, "diffusion_models/ComfyUI")
    path = _out(ctx) / "diffusion_models" / "ComfyUI_00001_.safetensors"
    keys, meta = _read(path)
    assert {"v_pred", "ztsnr"} <= keys and all(k.startswith(fm.UNET_PREFIX) for k in keys - {"v_pred", "ztsnr"})
    assert meta["modelspec.predict_key"] == "v" and meta["prompt"] == ""
    shutil.copy(path, _models(ctx) / "diffusion_models" / "u.safetensors")
    (back,) = loaders.UNETLoader().load_unet("u.safetensors", "default")
    assert back.spec.prediction == "v" and back.spec.ztsnr
    x, c = torch.randn(1, 4, 8, 8), torch.randn(1, 77, fixtures_text.CLIP_H_WIDTH)
    assert torch.allclose(back.apply_model(x, torch.tensor([3.0]), context=c),
                          scaled.apply_model(x, torch.tensor([3.0]), context=c), atol=1e-5)
    ctx.config.save_metadata = False
    mm.VAESave().save(vae, "vae/ComfyUI_vae", {"x": 1}, {"workflow": {}})
    vae_path = _out(ctx) / "vae" / "ComfyUI_vae_00001_.safetensors"
    keys, meta = _read(vae_path)
    assert meta == {} and keys == {k[len(fm.VAE_PREFIX):] for k in fm.vae_state_dict(prefix=fm.VAE_PREFIX)}
    shutil.copy(vae_path, _models(ctx) / "vae" / "v.safetensors")
    (vae_back,) = loaders.VAELoader().load_vae("v.safetensors")
    z = torch.randn(1, 4, 4, 4)
    assert torch.equal(vae_back.decode(z), vae.decode(z))


def test_clip_save_writes_one_hf_file_per_encoder(ctx):
    fm.write_checkpoint(_models(ctx) / "checkpoints" / "x.safetensors", "sdxl")
    _, clip, _ = loaders.CheckpointLoaderSimple().load_checkpoint("x.safetensors")
    (mult,) = mm.CLIPAttentionMultiply().patch(clip, 1.0, 2.0, 1.0, 1.0)
    mm.CLIPSave().save(mult, "clip/ComfyUI", {"p": 1})
    files = sorted(p.name for p in (_out(ctx) / "clip").iterdir())
    assert files == ["ComfyUI_clip_g_00001_.safetensors", "ComfyUI_clip_l_00001_.safetensors"]
    g_keys, meta = _read(_out(ctx) / "clip" / files[0])
    assert meta["format"] == "pt" and json.loads(meta["prompt"]) == {"p": 1}
    assert "text_model.encoder.layers.0.self_attn.k_proj.weight" in g_keys and "text_projection.weight" in g_keys
    assert not any(k.startswith("transformer.") for k in g_keys)  # OpenCLIP bigG written in HF names, as ComfyUI
    for f in files:
        shutil.copy(_out(ctx) / "clip" / f, _models(ctx) / "text_encoders" / f)
    (back,) = loaders.DualCLIPLoader().load_clip(files[1], files[0], "sdxl")
    ours, theirs = (c.encode_from_tokens(c.tokenize("a dog"), return_pooled=True) for c in (mult, back))
    assert torch.allclose(ours[0], theirs[0], atol=1e-5) and torch.allclose(ours[1], theirs[1], atol=1e-5)
    plain = clip.encode_from_tokens(clip.tokenize("a dog"))
    assert not torch.allclose(plain, ours[0])


def test_merge_and_save_workflow_in_the_engine(tmp_path):
    from comfy_core import Engine

    config = engine_config(tmp_path, device="cpu")
    fm.write_checkpoint(tmp_path / "models" / "checkpoints" / "a.safetensors", "sd1", seed=0)
    fm.write_checkpoint(tmp_path / "models" / "checkpoints" / "b.safetensors", "sd1", seed=4)
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "b.safetensors"}},
        "3": {"class_type": "ModelMergeBlocks", "inputs": {"model1": ["1", 0], "model2": ["2", 0], "input": 0.5,
                                                           "middle": 0.5, "out": 0.5}},
        "4": {"class_type": "CLIPMergeAdd", "inputs": {"clip1": ["1", 1], "clip2": ["2", 1]}},
        "5": {"class_type": "CheckpointSave", "inputs": {"model": ["3", 0], "clip": ["4", 0], "vae": ["1", 2],
                                                         "filename_prefix": "checkpoints/merged"}},
    }
    with Engine(config) as engine:
        engine.run(prompt, extra_data={"extra_pnginfo": {"workflow": {"id": "w"}}})
    path = tmp_path / "out" / "checkpoints" / "merged_00001_.safetensors"
    _, meta = _read(path)
    assert json.loads(meta["prompt"])["5"]["class_type"] == "CheckpointSave"
    assert json.loads(meta["workflow"]) == {"id": "w"}
    a = fm.checkpoint_state_dict("sd1", seed=0)
    b = fm.checkpoint_state_dict("sd1", seed=4)
    with safe_open(str(path), "pt") as f:
        k = fm.UNET_PREFIX + "out.2.weight"
        assert torch.equal(f.get_tensor(k), a[k].float() * 0.5 + 0.5 * b[k].float())
        t = "cond_stage_model.transformer.text_model.final_layer_norm.weight"
        assert torch.equal(f.get_tensor(t), (a[t].float() + b[t].float()).half())


def test_clip_save_sd2_openclip_h_in_hf_names(ctx):
    """(A tiny ViT-H stand-in in HF names reads back as CLIP-L: detection goes by layer count, as in ComfyUI, so the
    tensors are checked one by one against the OpenCLIP originals instead.)"""
    fm.write_checkpoint(_models(ctx) / "checkpoints" / "h.safetensors", "sd2")
    _, clip, _ = loaders.CheckpointLoaderSimple().load_checkpoint("h.safetensors")
    mm.CLIPSave().save(clip, "clip/sd2")
    src = fixtures_text.tiny_sd2_text()
    pre, c = "cond_stage_model.model.", fixtures_text.CLIP_H_WIDTH
    with safe_open(str(_out(ctx) / "clip" / "sd2_clip_h_00001_.safetensors"), "pt") as f:
        assert len(list(f.keys())) == len([k for k in src if not k.endswith("logit_scale")]) + 2 * 2 * 3  # qkv split
        for i in range(3):
            fused = src[f"{pre}transformer.resblocks.{i}.attn.in_proj_weight"]
            for j, n in enumerate("qkv"):
                got = f.get_tensor(f"text_model.encoder.layers.{i}.self_attn.{n}_proj.weight")
                assert torch.equal(got, fused[j * c:(j + 1) * c])
            assert torch.equal(f.get_tensor(f"text_model.encoder.layers.{i}.mlp.fc2.bias"),
                               src[f"{pre}transformer.resblocks.{i}.mlp.c_proj.bias"])
        assert torch.equal(f.get_tensor("text_projection.weight"), src[pre + "text_projection"].t())
        assert torch.equal(f.get_tensor("text_model.embeddings.position_embedding.weight"),
                           src[pre + "positional_embedding"])


@pytest.mark.cuda
def test_merge_across_devices_casts_the_other_weight():
    """model1 on CUDA in fp16, model2 on the CPU in fp32: model2's weight is cast to float32 on model1's device."""
    m1 = build_diffusion_model(TensorDict(fm.checkpoint_state_dict("sd1", text=False, vae=False, seed=0)),
                               device="cuda", dtype=torch.float16, source="gpu")
    m2 = tiny(seed=1)
    w1, w2 = raw(m1), raw(m2)
    (merged,) = mm.ModelMergeSimple().merge(m1, m2, 0.3)
    got = weights(merged)
    k = "out.2.weight"
    assert got[k].device.type == "cuda" and got[k].dtype == torch.float16
    assert torch.equal(got[k], (w1[k].float() * 0.3 + 0.7 * w2[k].cuda()).half())
