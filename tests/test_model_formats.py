"""More checkpoint formats: fp8 weight storage (UNETLoader weight_dtype, float8 files), diffusers layouts."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import fixtures_diffusers as fd
import fixtures_models as fm
import fixtures_text
import pytest
import torch
from fixtures_guidance import tiny_controlnet_sd, tiny_unet_config
from safetensors.torch import save_file

from comfy_core.errors import ModelLoadError
from comfy_core.models import fp8
from comfy_core.models.cache import ModelCache
from comfy_core.models.checkpoint import build_diffusion_model
from comfy_core.models.controlnet import load_controlnet
from comfy_core.models.diffusers_layout import (
    controlnet_from_diffusers,
    unet_from_diffusers,
)
from comfy_core.models.lora import LoraPatch, LoraWeights
from comfy_core.models.state_dict import TensorDict

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def unet_file(tmp_path_factory):
    return fm.write(tmp_path_factory.mktemp("fp8") / "unet.safetensors", fm.unet_state_dict("sd1"))


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, 5, fixtures_text.CLIP_L_WIDTH, generator=g)
    return x, torch.tensor([3.0, 0.5]), ctx


def _run(model):
    x, sigma, ctx = _inputs()
    return model(x, sigma, context=ctx)


@pytest.mark.parametrize("choice,dt", [("fp8_e4m3fn", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2),
                                       ("fp8_e4m3fn_fast", torch.float8_e4m3fn)])
def test_fp8_storage_memory_and_keys(unet_file, choice, dt):
    cache = ModelCache()
    m32 = cache.load_unet(unet_file)
    m16 = cache.load_unet(unet_file, dtype=torch.float16)
    m8 = cache.load_unet(unet_file, weight_dtype=choice)
    assert m8.memory_bytes() * 4 == m32.memory_bytes()
    assert m8.memory_bytes() * 2 == m16.memory_bytes()
    sd8, sd32 = m8.unet.state_dict(), m32.unet.state_dict()
    assert list(sd8) == list(sd32)
    assert {t.dtype for t in sd8.values()} == {dt}
    assert m8.dtype == torch.float32  # compute dtype
    proj = m8.unet.input_blocks[1][1].proj_in
    assert proj.weight.dtype == torch.float32 and proj._parameters["weight"].dtype == dt
    # CPU: "_fast" is the plain cast, no fp8 matmul layers
    assert not any(isinstance(m, fp8.Fp8MatmulLinear) for m in m8.unet.modules())


def test_fp8_output_equals_model_with_rounded_weights(unet_file):
    cache = ModelCache()
    m8 = cache.load_unet(unet_file, weight_dtype="fp8_e4m3fn")
    m32 = cache.load_unet(unet_file)
    # reference: a plain float32 model holding the fp8-rounded values
    rounded = {k: v.float() for k, v in m8.unet.state_dict().items()}
    ref = build_diffusion_model(TensorDict(rounded), device="cpu", dtype=torch.float32, source="rounded")
    out8, out_ref, out32 = _run(m8), _run(ref), _run(m32)
    torch.testing.assert_close(out8, out_ref, rtol=1e-5, atol=1e-5)
    # and close to the unrounded model within fp8 tolerance (e4m3 keeps 3 mantissa bits: ~3% per weight)
    rel = (out8 - out32).norm() / out32.norm()
    assert 1e-4 < rel < 0.15


def test_fp8_file_round_trip(unet_file, tmp_path):
    cache = ModelCache()
    m8 = cache.load_unet(unet_file, weight_dtype="fp8_e5m2")
    path = tmp_path / "unet_fp8.safetensors"
    save_file({k: v.contiguous() for k, v in m8.unet.state_dict().items()}, str(path))
    assert path.stat().st_size < unet_file.stat().st_size / 3
    again = cache.load_unet(path)  # default weight_dtype: a float8 file stays float8
    assert {p.dtype for p in again.unet.parameters()} == {torch.float8_e5m2}
    assert again.memory_bytes() == m8.memory_bytes()
    assert torch.equal(_run(again), _run(m8))
    # the same fp8 tensors inside a whole checkpoint (model.diffusion_model.*) stay fp8 too
    ckpt = tmp_path / "ckpt_fp8.safetensors"
    save_file({fm.UNET_PREFIX + k: v.contiguous() for k, v in m8.unet.state_dict().items()}, str(ckpt))
    model, _, _ = cache.load_checkpoint(ckpt, want_clip=False, want_vae=False)
    assert model.memory_bytes() == m8.memory_bytes() and torch.equal(_run(model), _run(m8))


def test_fp8_cache_key_includes_storage(unet_file):
    cache = ModelCache()
    a = cache.load_unet(unet_file)
    b = cache.load_unet(unet_file, weight_dtype="fp8_e4m3fn")
    c = cache.load_unet(unet_file, weight_dtype="fp8_e5m2")
    assert len({id(a.unet), id(b.unet), id(c.unet)}) == 3
    assert cache.stats.loads["unet"] == 3
    again = cache.load_unet(unet_file, weight_dtype="fp8_e4m3fn")
    assert again.unet is b.unet and cache.stats.loads["unet"] == 3
    keys = cache.keys()
    assert sum("fp8_e4m3fn" in k for k in keys) == 1 and sum("fp8_e5m2" in k for k in keys) == 1


def test_unknown_weight_dtype_is_a_load_error(unet_file):
    with pytest.raises(ModelLoadError, match="weight_dtype"):
        ModelCache().load_unet(unet_file, weight_dtype="int4")


def _param(module, name):
    return dict(module.named_parameters())[name]  # the stored tensor (`.weight` reads the compute-dtype cast)


def test_lora_on_fp8_weights_rounds_back_and_restores(unet_file):
    model = ModelCache().load_unet(unet_file, weight_dtype="fp8_e4m3fn")
    name = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    base = _param(model.unet, name).detach().clone()
    g = torch.Generator().manual_seed(3)
    up, down = torch.randn(base.shape[0], 2, generator=g), torch.randn(2, base.shape[1], generator=g)
    patch = LoraPatch({name: ((LoraWeights(up, down, alpha=1.0), None),)}, strength=0.5)
    patched = model.clone().add_patches(patch)
    expected = (base.float() + 0.5 * 0.5 * (up @ down)).to(torch.float8_e4m3fn)  # alpha/rank = 1/2
    with patched.patched_unet() as unet:
        got = _param(unet, name)
        assert got.dtype == torch.float8_e4m3fn
        assert torch.equal(got.view(torch.uint8), expected.view(torch.uint8))
    _run(patched)  # the patched fp8 model runs
    with model.patched_unet() as unet:
        assert torch.equal(_param(unet, name).view(torch.uint8), base.view(torch.uint8))


def test_fp8_linear_math_matches_rounded_reference():
    """The tensor-core path's arithmetic (run here on CPU): input clamped to ±448 and rounded to e4m3fn."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(32, 64, generator=g) * 100  # some entries beyond ±448 get clamped
    x[0, 0] = 1000.0
    w = (torch.randn(48, 64, generator=g) / 8).to(torch.float8_e4m3fn)
    b = torch.randn(48, generator=g)
    ref = x.clamp(-448, 448).to(torch.float8_e4m3fn).float() @ w.float().t() + b
    got = fp8.fp8_linear(x, w, b, torch.float32)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-3)


@pytest.mark.cuda
def test_fp8_fast_on_cuda(unet_file):
    dev = torch.device("cuda")
    if not fp8.fp8_matmul_supported(dev):
        pytest.skip("no fp8 tensor cores (compute capability < 8.9)")
    cache = ModelCache()
    fast = cache.load_unet(unet_file, device=dev, dtype=torch.float16, weight_dtype="fp8_e4m3fn_fast")
    plain = cache.load_unet(unet_file, device=dev, dtype=torch.float16, weight_dtype="fp8_e4m3fn")
    assert any(isinstance(m, fp8.Fp8MatmulLinear) for m in fast.unet.modules())
    x, sigma, ctx = (t.to(dev) for t in _inputs())
    a, b = fast(x, sigma, context=ctx), plain(x, sigma, context=ctx)
    assert torch.isfinite(a).all() and ((a - b).norm() / b.norm()).item() < 0.1


def test_fp8_decisions():
    assert fp8.storage_dtype("default") is None
    assert fp8.storage_dtype("fp8_e4m3fn_fast") is torch.float8_e4m3fn
    assert not fp8.fp8_matmul_supported(torch.device("cpu"))
    sd = TensorDict({"a.weight": torch.zeros(2, dtype=torch.float8_e4m3fn),
                     "b.weight": torch.zeros(2, dtype=torch.float8_e4m3fn), "c.weight": torch.zeros(2)})
    assert fp8.stored_fp8_dtype(sd, list(sd)) is torch.float8_e4m3fn
    assert fp8.stored_fp8_dtype(sd, ["c.weight"]) is None


# ------------------------------------------------------------------------------------------------ diffusers layouts


def _real_unet_keys(name: str) -> list[str]:
    """UNet keys of a real checkpoint (tests/data/model_layouts.json.gz), prefix removed."""
    layouts = json.loads(gzip.decompress((DATA / "model_layouts.json.gz").read_bytes()))
    pre = "model.diffusion_model."
    return [k[len(pre):] for k in layouts[name]["tensors"] if k.startswith(pre)]


@pytest.mark.parametrize("name,nrb,levels", [("sd15", 2, 4), ("sdxl_base", 2, 3), ("sd21_768v", 2, 4)])
def test_diffusers_unet_names_full_size(name, nrb, levels):
    """Every real-size LDM key has exactly one diffusers name and the conversion maps it back."""
    ldm = _real_unet_keys(name)
    names = {fd.unet_key(k, nrb, levels): k for k in ldm}
    assert len(names) == len(ldm)
    view = unet_from_diffusers(dict.fromkeys(names))
    assert sorted(view) == sorted(ldm)
    assert all(names[view.names[k]] == k for k in view)


def test_diffusers_unet_names_known_pairs():
    """Spot checks against names in real SD1.5 diffusers files."""
    ldm = _real_unet_keys("sd15")
    view = unet_from_diffusers(dict.fromkeys(fd.unet_key(k, 2, 4) for k in ldm))
    pairs = {
        "input_blocks.0.0.weight": "conv_in.weight",
        "time_embed.2.bias": "time_embedding.linear_2.bias",
        "input_blocks.3.0.op.weight": "down_blocks.0.downsamplers.0.conv.weight",
        "input_blocks.5.1.proj_in.weight": "down_blocks.1.attentions.1.proj_in.weight",
        "middle_block.2.emb_layers.1.weight": "mid_block.resnets.1.time_emb_proj.weight",
        "middle_block.1.transformer_blocks.0.ff.net.0.proj.weight":
            "mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight",
        "output_blocks.2.1.conv.weight": "up_blocks.0.upsamplers.0.conv.weight",
        "output_blocks.5.2.conv.weight": "up_blocks.1.upsamplers.0.conv.weight",
        "output_blocks.11.0.skip_connection.weight": "up_blocks.3.resnets.2.conv_shortcut.weight",
        "output_blocks.9.1.transformer_blocks.0.attn2.to_out.0.weight":
            "up_blocks.3.attentions.0.transformer_blocks.0.attn2.to_out.0.weight",
        "out.0.weight": "conv_norm_out.weight", "out.2.bias": "conv_out.bias",
    }
    for ldm_key, d_key in pairs.items():
        assert view.names[ldm_key] == d_key


def test_diffusers_controlnet_names_full_size():
    """The real SD1.5 ControlNet layout (tests/data/controlnet_layouts.json) through diffusers names and back."""
    pairs = json.loads((DATA / "controlnet_layouts.json").read_text())["controlnet_sd15"]
    ldm = [k.removeprefix("control_model.") for k, _ in pairs]
    names = {fd.unet_key(k, 2, 4): k for k in ldm}
    assert len(names) == len(ldm)
    view = controlnet_from_diffusers(dict.fromkeys(names))
    assert sorted(view) == sorted(ldm)
    known = {"input_hint_block.0.weight": "controlnet_cond_embedding.conv_in.weight",
             "input_hint_block.2.bias": "controlnet_cond_embedding.blocks.0.bias",
             "input_hint_block.12.weight": "controlnet_cond_embedding.blocks.5.weight",
             "input_hint_block.14.weight": "controlnet_cond_embedding.conv_out.weight",
             "zero_convs.11.0.weight": "controlnet_down_blocks.11.weight",
             "middle_block_out.0.bias": "controlnet_mid_block.bias",
             "input_blocks.4.1.proj_out.weight": "down_blocks.1.attentions.0.proj_out.weight"}
    for ldm_key, d_key in known.items():
        assert view.names[ldm_key] == d_key


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_diffusers_unet_file_loads_bit_identical(tmp_path, family):
    ldm = fm.unet_state_dict(family)
    a = fm.write(tmp_path / "ldm.safetensors", ldm)
    b = fm.write(tmp_path / "diffusion_pytorch_model.safetensors", fd.to_diffusers_unet(ldm, 1, 2))
    cache = ModelCache()
    m_ldm, m_d = cache.load_unet(a), cache.load_unet(b)
    assert m_d.spec == m_ldm.spec
    x, sigma, ctx = _inputs()
    kw = {}
    if family == "sdxl":
        ctx = torch.randn(2, 5, fm.TINY_UNETS["sdxl"].context_dim)
        kw["y"] = torch.randn(2, fm.TINY_UNETS["sdxl"].adm_in_channels)
    assert torch.equal(m_d(x, sigma, context=ctx, **kw), m_ldm(x, sigma, context=ctx, **kw))


_OLD_ATTN = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}


@pytest.mark.parametrize("old_names", [False, True], ids=["to_q", "query"])
def test_diffusers_vae_file_loads_bit_identical(tmp_path, old_names):
    ldm = fm.vae_state_dict()
    diff = fd.to_diffusers_vae(ldm, len(fm.TINY_VAE.ch_mult))
    if old_names:  # diffusers < 0.14 attention names
        for new, old in _OLD_ATTN.items():
            diff = {k.replace(new, old): v for k, v in diff.items()}
        assert "encoder.mid_block.attentions.0.proj_attn.weight" in diff
    assert diff["encoder.mid_block.attentions.0.group_norm.weight"].ndim == 1
    assert all(v.ndim == 2 for k, v in diff.items() if "mid_block.attentions" in k and "norm" not in k
               and k.endswith("weight"))  # Linear-stored, as diffusers has them
    a = fm.write(tmp_path / "ldm_vae.safetensors", ldm)
    b = fm.write(tmp_path / "diffusers_vae.safetensors", diff)
    cache = ModelCache()
    v_ldm, v_d = cache.load_vae(a), cache.load_vae(b)
    img = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    lat = v_ldm.encode(img)
    assert torch.equal(v_d.encode(img), lat)
    assert torch.equal(v_d.decode(lat), v_ldm.decode(lat))


@pytest.mark.parametrize("sdxl", [False, True])
def test_diffusers_controlnet_loads_bit_identical(tmp_path, sdxl):
    cfg = tiny_unet_config(sdxl)
    ldm = tiny_controlnet_sd(cfg, prefix="")
    diff = fd.to_diffusers_unet(ldm, 1, 2)
    assert "controlnet_cond_embedding.blocks.5.weight" in diff and "controlnet_down_blocks.3.bias" in diff
    a = fm.write(tmp_path / "ldm_cn.safetensors", ldm)
    b = fm.write(tmp_path / "diffusion_pytorch_model.safetensors", diff)
    cn_ldm, cn_d = load_controlnet(a), load_controlnet(b)
    sd_ldm, sd_d = cn_ldm.control_model.state_dict(), cn_d.control_model.state_dict()
    assert list(sd_ldm) == list(sd_d)
    assert all(torch.equal(sd_ldm[k], sd_d[k]) for k in sd_ldm)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    out = []
    for cn in (cn_ldm, cn_d):
        c = cn.copy().set_cond_hint(hint.movedim(-1, 1), 0.8)
        conds = {"context": torch.ones(2, 5, 16) * 0.1}
        if sdxl:
            conds["y"] = torch.ones(2, cfg.adm_in_channels) * 0.1
        out.append(c.get_control(x, torch.full((2,), 3.0), conds, [0, 1]))
    assert all(torch.equal(p, q) for p, q in zip(out[0]["output"], out[1]["output"]))
    assert torch.equal(out[0]["middle"][0], out[1]["middle"][0])


def test_unknown_and_broken_layouts_are_load_errors(tmp_path):
    junk = fm.write(tmp_path / "junk.safetensors", {"foo.weight": torch.zeros(2)})
    with pytest.raises(ModelLoadError, match="not a ControlNet"):
        load_controlnet(junk)
    with pytest.raises(ModelLoadError):
        ModelCache().load_unet(junk)
    ldm = fd.to_diffusers_unet(fm.unet_state_dict("sd1"), 1, 2)
    del ldm["down_blocks.0.attentions.0.proj_in.weight"]
    broken = fm.write(tmp_path / "broken.safetensors", ldm)
    with pytest.raises(ModelLoadError, match="proj_in"):
        ModelCache().load_unet(broken)
    vae = fd.to_diffusers_vae(fm.vae_state_dict(), 4)
    vae["decoder.mid_block.attentions.0.to_q.weight"] = torch.zeros(3, 5)
    with pytest.raises(ModelLoadError, match="attn_1.q"):
        ModelCache().load_vae(fm.write(tmp_path / "badvae.safetensors", vae))


# ------------------------------------------------------------------------------------------------ ztsnr


@pytest.mark.parametrize("family,v_pred,zsnr", [("sdxl", True, True), ("sdxl", False, False), ("sd1", True, False)])
def test_ztsnr_marker_gives_zero_terminal_snr_sampling(tmp_path, family, v_pred, zsnr):
    sd = fm.checkpoint_state_dict(family, text=False, vae=False, v_pred_key=v_pred)
    sd["ztsnr"] = torch.tensor([])
    model = ModelCache().load_unet(fm.write(tmp_path / "z.safetensors", sd))
    ms = model.model_sampling
    last = 4.8973451890853435e-08  # ComfyUI's alphā at the last step of a zero-terminal-SNR schedule
    if zsnr:
        assert ms.sigma_max.item() == pytest.approx(((1 - last) / last) ** 0.5, rel=1e-5)  # ~4518.8
        assert ms.sigmas[0].item() == pytest.approx(0.029167, rel=1e-3)  # the first step keeps its SNR
        assert ms.prediction == "v"
    else:
        assert ms.sigma_max.item() == pytest.approx(14.6146, rel=1e-4)  # the plain SD schedule
    assert model.clone().model_sampling is ms


# ------------------------------------------------------------------------------------------------ through the nodes


def test_loader_nodes_take_the_new_formats(tmp_path):
    from fixtures_nodes import node_context

    from comfy_core import context
    from comfy_core.nodes import controlnet as cn_nodes
    from comfy_core.nodes import loaders

    ctx = node_context(tmp_path, models=ModelCache(), device=torch.device("cpu"), dtype=torch.float32)
    root = Path(ctx.config.models_dir)
    ldm = fm.unet_state_dict("sd1")
    fm.write(root / "unet" / "diffusers_unet.safetensors", fd.to_diffusers_unet(ldm, 1, 2))
    fm.write(root / "vae" / "diffusers_vae.safetensors", fd.to_diffusers_vae(fm.vae_state_dict(), 4))
    cfg = tiny_unet_config()
    fm.write(root / "controlnet" / "diffusion_pytorch_model.safetensors",
             fd.to_diffusers_unet(tiny_controlnet_sd(cfg, prefix=""), 1, 2))
    with context.use(ctx):
        (m8,) = loaders.UNETLoader().load_unet("diffusers_unet.safetensors", "fp8_e4m3fn")
        (m32,) = loaders.UNETLoader().load_unet("diffusers_unet.safetensors", "default")
        (vae,) = loaders.VAELoader().load_vae("diffusers_vae.safetensors")
        (cn,) = cn_nodes.ControlNetLoader().load_controlnet("diffusion_pytorch_model.safetensors")
    assert m8.memory_bytes() * 4 == m32.memory_bytes() and m8.unet is not m32.unet
    assert vae.decode(torch.zeros(1, 4, 2, 2)).shape == (1, 16, 16, 3)
    assert cn.control_model.config.model_channels == cfg.model_channels
