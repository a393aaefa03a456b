"""More checkpoint formats: fp8 weight storage (UNETLoader weight_dtype, float8 files)."""
from __future__ import annotations

import fixtures_models as fm
import fixtures_text
import pytest
import torch
from safetensors.torch import save_file

from comfy_core.errors import ModelLoadError
from comfy_core.models import fp8
from comfy_core.models.cache import ModelCache
from comfy_core.models.checkpoint import build_diffusion_model
from comfy_core.models.lora import LoraPatch, LoraWeights
from comfy_core.models.state_dict import TensorDict


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


def test_fp8_decisions():
    assert fp8.storage_dtype("default") is None
    assert fp8.storage_dtype("fp8_e4m3fn_fast") is torch.float8_e4m3fn
    assert not fp8.fp8_matmul_supported(torch.device("cpu"))
    sd = TensorDict({"a.weight": torch.zeros(2, dtype=torch.float8_e4m3fn),
                     "b.weight": torch.zeros(2, dtype=torch.float8_e4m3fn), "c.weight": torch.zeros(2)})
    assert fp8.stored_fp8_dtype(sd, list(sd)) is torch.float8_e4m3fn
    assert fp8.stored_fp8_dtype(sd, ["c.weight"]) is None
