"""Loader and VAE nodes: object_info parity with ComfyUI 0.3.64 (prose and file lists aside), file lists from the
engine's folders, ComfyUI's not-found message, the cache behind the loaders, LoRA nodes, VAE nodes on tiny models,
and (slow) a direct euler loop on the random SD1.5 checkpoint against ComfyUI's KSampler output."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fixtures_models as fm
import pytest
import torch
from fixtures_nodes import node_context, without_prose
from safetensors.torch import load_file

from comfy_core import context
from comfy_core.errors import ModelLoadError, NodeExecutionError
from comfy_core.models.cache import ModelCache
from comfy_core.nodes import loaders
from comfy_core.nodes import vae as vae_nodes
from comfy_core.nodes.registry import node_info

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "object_info_models.json").read_text())
NODES = {name: (cls, mod.NODE_DISPLAY_NAME_MAPPINGS.get(name))
         for mod in (loaders, vae_nodes) for name, cls in mod.NODE_CLASS_MAPPINGS.items()}
FILE_INPUTS = {"ckpt_name", "config_name", "unet_name", "vae_name", "clip_name", "clip_name1", "clip_name2",
               "lora_name"}


def normalized(info: dict[str, Any]) -> dict[str, Any]:
    info = without_prose(info)
    for section in info["input"].values():
        for key, spec in section.items():
            if key in FILE_INPUTS:  # [choices, options?]: the choice list reflects a machine's folders
                spec[0] = [c for c in spec[0] if c == "pixel_space"]
    return info


def test_every_reference_node_is_implemented():
    assert sorted(NODES) == sorted(REFERENCE)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_node_info_matches_comfyui(name):
    cls, display = NODES[name]
    ours = node_info(name, cls, display)
    assert list(ours) == list(REFERENCE[name])
    assert normalized(ours) == normalized(REFERENCE[name])


def test_prose_is_our_own():
    for name, (cls, display) in NODES.items():
        ours, theirs = node_info(name, cls, display), REFERENCE[name]
        if theirs["description"]:
            assert ours["description"] != theirs["description"], name
        for a, b in zip(ours.get("output_tooltips", []), theirs.get("output_tooltips", [])):
            assert a != b, name


@pytest.fixture()
def ctx(tmp_path):
    node_ctx = node_context(tmp_path, models=ModelCache(), device=torch.device("cpu"), dtype=torch.float32)
    with context.use(node_ctx):
        yield node_ctx


def models_dir(ctx) -> Path:
    return Path(ctx.config.models_dir)


def test_file_lists_come_from_the_folders(ctx):
    fm.write_checkpoint(models_dir(ctx) / "checkpoints" / "sub" / "a.safetensors", "sd1", text=False)
    fm.write(models_dir(ctx) / "vae" / "v.safetensors", fm.vae_state_dict())
    assert loaders.CheckpointLoaderSimple.INPUT_TYPES()["required"]["ckpt_name"][0] == ["sub/a.safetensors"]
    assert loaders.VAELoader.INPUT_TYPES()["required"]["vae_name"][0] == ["v.safetensors", "pixel_space"]


def test_missing_checkpoint_message(ctx):
    with pytest.raises(ModelLoadError) as err:
        loaders.CheckpointLoaderSimple().load_checkpoint("nope.safetensors")
    assert str(err.value) == "Model in folder 'checkpoints' with filename 'nope.safetensors' not found."


def test_checkpoint_loader_uses_the_cache(ctx):
    fm.write_checkpoint(models_dir(ctx) / "checkpoints" / "m.safetensors", "sdxl")
    model, clip, vae = loaders.CheckpointLoaderSimple().load_checkpoint("m.safetensors")
    again = loaders.CheckpointLoader().load_checkpoint("v1-inference.yaml", "m.safetensors")
    assert ctx.models.stats.loads == {"unet": 1, "clip": 1, "vae": 1}
    assert model.spec.comfy_name == "SDXL" and clip.family == "sdxl" and vae.latent_channels == 4
    assert again[0].unet is model.unet and again[2] is vae


def test_unet_and_vae_loaders(ctx):
    fm.write(models_dir(ctx) / "unet" / "u.safetensors", fm.unet_state_dict("sdxl_refiner"))
    fm.write(models_dir(ctx) / "vae" / "v.safetensors", fm.vae_state_dict())
    (model,) = loaders.UNETLoader().load_unet("u.safetensors", "default")
    assert model.spec.comfy_name == "SDXLRefiner"
    (vae,) = loaders.VAELoader().load_vae("v.safetensors")
    assert vae.decode(torch.zeros(1, 4, 2, 2)).shape == (1, 16, 16, 3)
    (pixel,) = loaders.VAELoader().load_vae("pixel_space")
    assert pixel.latent_channels == 3


def test_clip_loaders(ctx):
    import fixtures_text

    te = models_dir(ctx) / "text_encoders"
    fm.write(te / "l.safetensors", fixtures_text.tiny_clip_l())
    fm.write(te / "g.safetensors", fixtures_text.tiny_openclip())
    (clip,) = loaders.CLIPLoader().load_clip("l.safetensors", "stable_diffusion")
    assert clip.family == "sd1"
    (dual,) = loaders.DualCLIPLoader().load_clip("l.safetensors", "g.safetensors", "sdxl")
    assert dual.family == "sdxl"


def test_lora_nodes(ctx):
    fm.write_checkpoint(models_dir(ctx) / "checkpoints" / "m.safetensors", "sd1")
    fm.write(models_dir(ctx) / "loras" / "l.safetensors", fm.kohya_lora_state_dict("sd1"))
    model, clip, _ = loaders.CheckpointLoaderSimple().load_checkpoint("m.safetensors")
    same = loaders.LoraLoader().load_lora(model, clip, "l.safetensors", 0.0, 0.0)
    assert same[0] is model and same[1] is clip
    m2, c2 = loaders.LoraLoader().load_lora(model, clip, "l.safetensors", 1.0, 0.5)
    assert len(m2.patches) == 1 and len(c2.patches) == 1 and c2.patches[0].strength == 0.5
    (m3,) = loaders.LoraLoaderModelOnly().load_lora_model_only(m2, "l.safetensors", -0.5)
    assert [p.strength for p in m3.patches] == [1.0, -0.5]
    assert ctx.models.stats.loads["lora"] == 1
    x, ctx_t = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 32)
    plain = model.apply_model(x, torch.tensor([1.0]), context=ctx_t)
    assert not torch.allclose(m2.apply_model(x, torch.tensor([1.0]), context=ctx_t), plain)
    assert torch.equal(model.apply_model(x, torch.tensor([1.0]), context=ctx_t), plain)


def test_vae_nodes(ctx):
    fm.write(models_dir(ctx) / "vae" / "v.safetensors", fm.vae_state_dict())
    (vae,) = loaders.VAELoader().load_vae("v.safetensors")
    image = torch.rand(2, 40, 36, 4)
    (latent,) = vae_nodes.VAEEncode().encode(vae, image)
    assert latent["samples"].shape == (2, 4, 5, 4)
    (decoded,) = vae_nodes.VAEDecode().decode(vae, latent)
    assert decoded.shape == (2, 40, 32, 3)
    (tiled,) = vae_nodes.VAEDecodeTiled().decode(vae, latent, tile_size=512, overlap=64)
    assert torch.allclose(tiled, decoded, atol=1e-5)  # fits in one tile
    (enc_tiled,) = vae_nodes.VAEEncodeTiled().encode(vae, image, tile_size=512, overlap=64)
    assert torch.allclose(enc_tiled["samples"], latent["samples"], atol=1e-5)
    with pytest.raises(NodeExecutionError, match="VAE is invalid"):
        vae_nodes.VAEDecode().decode(None, latent)


def test_vae_encode_for_inpaint(ctx):
    fm.write(models_dir(ctx) / "vae" / "v.safetensors", fm.vae_state_dict())
    (vae,) = loaders.VAELoader().load_vae("v.safetensors")
    image = torch.rand(1, 34, 41, 3)
    mask = torch.zeros(1, 34, 41)
    mask[:, 10:20, 10:20] = 1.0
    (out,) = vae_nodes.VAEEncodeForInpaint().encode(vae, image, mask, grow_mask_by=6)
    assert out["samples"].shape == (1, 4, 4, 5)
    nm = out["noise_mask"]
    assert nm.shape == (1, 1, 32, 40) and set(nm.unique().tolist()) == {0.0, 1.0}
    assert nm.sum() > mask.sum()  # grown
    greyed = image[:, 1:33, :40].clone()
    greyed[:, 9:19, 10:20] = 0.5
    assert torch.allclose(out["samples"], vae.encode(greyed), atol=1e-6)


@pytest.mark.slow
def test_euler_loop_on_random_sd15_matches_comfyui_latent():
    """apply_model parity: ComfyUI's KSampler (euler, normal, 4 steps, cfg 7, seed 42) re-done with a plain loop."""
    from fixtures_sd15 import random_sd15_checkpoint

    ref = load_file(str(DATA / "e2e_txt2img_euler_normal.safetensors"))
    sigmas = torch.tensor(json.loads((DATA / "sigmas_normal_4.json").read_text())["sigmas"])
    model = ModelCache().load_unet(random_sd15_checkpoint())
    torch.manual_seed(42)
    noise = torch.randn([1, 4, 8, 8])
    x = noise * torch.sqrt(1.0 + sigmas[0] ** 2) + model.process_latent_in(ref["latent_in"])
    context_ = torch.cat([ref["cond_positive"], ref["cond_negative"]])
    for i in range(len(sigmas) - 1):
        den = model.apply_model(torch.cat([x, x]), sigmas[i].repeat(2), context=context_)
        cond, uncond = den[:1], den[1:]
        denoised = uncond + (cond - uncond) * 7.0
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])  # Euler step (Karras et al. 2022, alg. 2)
    out = model.process_latent_out(x)
    rel = (out - ref["latent_out"]).abs().max() / ref["latent_out"].abs().max()
    assert rel.item() < 1e-3


def test_engine_attention_backend_reaches_the_unet(ctx, monkeypatch):
    import dataclasses

    import msgspec
    from comfy_core.kernels import attention as attention_mod

    fm.write_checkpoint(models_dir(ctx) / "checkpoints" / "m.safetensors", "sd1", text=False)
    node_ctx = dataclasses.replace(ctx, config=msgspec.structs.replace(ctx.config, attention_backend="reference"))
    seen = []
    real = attention_mod.attention
    monkeypatch.setattr(attention_mod, "attention", lambda *a, backend=None, **k: seen.append(backend) or real(
        *a, backend=backend, **k))
    with context.use(node_ctx):
        model, _, _ = loaders.CheckpointLoaderSimple().load_checkpoint("m.safetensors")
    assert model.model_options["transformer_options"]["attention_backend"] == "reference"
    model.apply_model(torch.randn(1, 4, 8, 8), torch.tensor([1.0]), context=torch.randn(1, 3, 32))
    assert seen and set(seen) == {"reference"}
