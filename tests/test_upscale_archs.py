"""More upscale architectures (SPAN, SwinIR): real key layouts, detection, forward vs independent references, nodes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from comfy_core import Engine, EngineConfig
from comfy_core.errors import ModelLoadError
from comfy_core.models.state_dict import TensorDict
from comfy_core.models.upscale_layouts import (
    build_upscaler,
    detect_upscaler,
    load_upscale_model,
)
from comfy_core.models.upscale_span import Conv3XC

MEAN = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1)


def built(sd: dict[str, torch.Tensor]):
    return build_upscaler(detect_upscaler(TensorDict(sd)))


def _shuffle(h: torch.Tensor, r: int) -> torch.Tensor:
    """Pixel shuffle by hand: channel c·r² + i·r + j goes to (y·r + i, x·r + j)."""
    b, c, hh, ww = h.shape
    h = h.reshape(b, c // (r * r), r, r, hh, ww).permute(0, 1, 4, 2, 5, 3)
    return h.reshape(b, c // (r * r), hh * r, ww * r)


# -- SPAN -------------------------------------------------------------------------------------------------------------

SPAN_CONVS = ["conv_1", "conv_2"] + [f"block_{n}.c{j}_r" for n in range(1, 7) for j in (1, 2, 3)]


def span_weights(in_nc: int, nf: int, scale: int, seed: int = 0, out_nc: int | None = None,
                 norm: bool = True) -> dict[str, torch.Tensor]:
    """Random weights under SPAN's real names (training branches plus a stale eval_conv, as the files hold)."""
    g = torch.Generator().manual_seed(seed)
    out_nc = out_nc or in_nc
    sd: dict[str, torch.Tensor] = {}

    def put(name: str, cin: int, cout: int, k: int) -> None:
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) / (k * cin ** 0.5)
        sd[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.05

    for conv in SPAN_CONVS:
        cin = in_nc if conv == "conv_1" else nf
        put(f"{conv}.sk", cin, nf, 1)
        put(f"{conv}.conv.0", cin, 2 * cin, 1)
        put(f"{conv}.conv.1", 2 * cin, 2 * nf, 3)
        put(f"{conv}.conv.2", 2 * nf, nf, 1)
        put(f"{conv}.eval_conv", cin, nf, 3)  # stale: spandrel recomputes it from the branches
    put("conv_cat", 4 * nf, nf, 1)
    put("upsampler.0", nf, out_nc * scale * scale, 3)
    if not norm:
        sd["no_norm"] = torch.zeros(1)
    return sd


def ref_conv3xc(sd: dict[str, torch.Tensor], name: str, x: torch.Tensor) -> torch.Tensor:
    """Sequential branches without biases (zero padding on the 1×1 output = on the input), plus their total bias."""
    w = {k: sd[f"{name}.{k}.weight"] for k in ("sk", "conv.0", "conv.1", "conv.2")}
    b = {k: sd[f"{name}.{k}.bias"] for k in ("sk", "conv.0", "conv.1", "conv.2")}
    t = F.conv2d(x, w["conv.0"])
    t = F.conv2d(F.pad(t, (1, 1, 1, 1)), w["conv.1"])
    t = F.conv2d(t, w["conv.2"]) + F.conv2d(x, w["sk"])
    mid = torch.einsum("bakl,a->b", w["conv.1"], b["conv.0"]) + b["conv.1"]
    bias = w["conv.2"][:, :, 0, 0] @ mid + b["conv.2"] + b["sk"]
    return t + bias.view(1, -1, 1, 1)


def reference_span(sd: dict[str, torch.Tensor], x: torch.Tensor, scale: int, norm: bool = True) -> torch.Tensor:
    if norm:
        x = (x - MEAN) * 255.0
    first = ref_conv3xc(sd, "conv_1", x)
    h, outs, c1 = first, [], None
    for n in range(1, 7):
        c1 = ref_conv3xc(sd, f"block_{n}.c1_r", h)
        a = c1 * torch.sigmoid(c1)
        c2 = ref_conv3xc(sd, f"block_{n}.c2_r", a)
        c3 = ref_conv3xc(sd, f"block_{n}.c3_r", c2 * torch.sigmoid(c2))
        h = (c3 + h) * (torch.sigmoid(c3) - 0.5)
        outs.append(h)
    cat = torch.cat([first, ref_conv3xc(sd, "conv_2", h), outs[0], c1], 1)
    fused = F.conv2d(cat, sd["conv_cat.weight"], sd["conv_cat.bias"])
    return _shuffle(F.conv2d(fused, sd["upsampler.0.weight"], sd["upsampler.0.bias"], padding=1), scale)


@pytest.mark.parametrize(("in_nc", "out_nc", "scale"), [(3, 3, 4), (3, 3, 2), (3, 3, 1), (1, 1, 2), (3, 4, 2)])
def test_span_detection(in_nc, out_nc, scale):
    sd = span_weights(in_nc, 6, scale, out_nc=out_nc, norm=in_nc == 3)
    found = detect_upscaler(TensorDict(sd))
    c = found.config
    assert (found.architecture, found.layout) == ("SPAN", "span")
    assert (c.in_nc, c.out_nc, c.num_feat, c.scale, c.norm, c.deployed) == (in_nc, out_nc, 6, scale, in_nc == 3,
                                                                           False)


def test_span_conv3xc_fusion_equals_the_training_path():
    """Fused 3×3 conv == zero-pad the input → 1×1 → 3×3 → 1×1, plus the 1×1 skip, at every pixel."""
    conv = Conv3XC(4, 5, deployed=False)
    for p in conv.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(1, 4, 9, 7)
    c1, c2, c3 = conv.conv
    with torch.no_grad():
        got = conv(x)
    x_pad = F.pad(x, (1, 1, 1, 1))
    with torch.no_grad():
        train = c3(c2(c1(x_pad))) + conv.sk(x)  # the training path: zero-pad the input, conv.0's bias reaches the pad
        no_bias_pad = c3(c2(F.pad(c1(x), (1, 1, 1, 1)))) + conv.sk(x)
    assert torch.allclose(got, train, atol=1e-5)
    assert not torch.allclose(got[..., 0, :], no_bias_pad[..., 0, :], atol=1e-3)  # the border depends on where
    assert torch.allclose(got[..., 1:-1, 1:-1], no_bias_pad[..., 1:-1, 1:-1], atol=1e-5)  # the padding goes


@pytest.mark.parametrize(("scale", "norm", "hw"), [(4, True, (7, 9)), (2, False, (5, 4)), (1, True, (3, 3))])
def test_span_forward_matches_reference(tmp_path, scale, norm, hw):
    sd = span_weights(3, 6, scale, seed=scale, norm=norm)
    path = tmp_path / "span.safetensors"
    save_file(sd, str(path))
    model = load_upscale_model(path)
    assert (model.architecture, model.scale, model.input_channels, model.output_channels) == ("SPAN", scale, 3, 3)
    x = torch.rand(2, 3, *hw)
    with torch.no_grad():
        got = model(x)
    assert got.shape == (2, 3, hw[0] * scale, hw[1] * scale)
    ref = reference_span(sd, x, scale, norm)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_span_stale_eval_conv_is_ignored_and_deployed_files_use_it():
    sd = span_weights(3, 5, 2, seed=3)
    model = built(sd)
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        want = model(x)
        deployed = {k: v for k, v in sd.items() if ".sk." not in k and ".conv." not in k}
        for conv in SPAN_CONVS:  # the file as a deploy script would write it: fused kernels only
            w, b = model.net.get_submodule(conv).fused()
            deployed[f"{conv}.eval_conv.weight"], deployed[f"{conv}.eval_conv.bias"] = w.clone(), b.clone()
        found = detect_upscaler(TensorDict(deployed))
        assert (found.layout, found.config.deployed) == ("span_deployed", True)
        got = build_upscaler(found)(x)
    assert torch.allclose(got, want, atol=1e-5 * want.abs().max().item())


def test_span_missing_and_wrong_tensors_are_model_load_errors(tmp_path):
    sd = span_weights(3, 4, 2)
    partial = {k: v for k, v in sd.items() if not k.startswith("block_4.c2_r.conv.1")}
    with pytest.raises(ModelLoadError, match="block_4.c2_r.conv.1.weight"):
        detect_upscaler(TensorDict(partial))
    bad = dict(sd)
    bad["block_2.c1_r.sk.weight"] = torch.zeros(4, 3, 1, 1)
    with pytest.raises(ModelLoadError, match="block_2.c1_r.sk.weight"):
        built(bad)
    odd = dict(sd)
    odd["upsampler.0.weight"] = torch.zeros(7, 4, 3, 3)
    odd["upsampler.0.bias"] = torch.zeros(7)
    with pytest.raises(ModelLoadError, match="7 output channels"):
        detect_upscaler(TensorDict(odd))
    (tmp_path / "cut.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    with pytest.raises(ModelLoadError):
        load_upscale_model(tmp_path / "cut.safetensors")


def test_span_pth_with_params_wrapper(tmp_path):
    sd = span_weights(3, 4, 2, seed=5)
    torch.save({"params": sd}, tmp_path / "span.pth")
    model = load_upscale_model(tmp_path / "span.pth")
    x = torch.rand(1, 3, 4, 4)
    with torch.no_grad():
        assert torch.allclose(model(x), reference_span(sd, x, 2), rtol=1e-4, atol=1e-3)


# -- workflow -----------------------------------------------------------------------------------------------------------

def _run_upscale_workflow(tmp_path, name: str, sd: dict[str, torch.Tensor], size: tuple[int, int]) -> np.ndarray:
    cfg = EngineConfig(models_dir=str(tmp_path / "m"), input_dir=str(tmp_path / "i"), output_dir=str(tmp_path / "o"),
                       temp_dir=str(tmp_path / "t"))
    (tmp_path / "m" / "upscale_models").mkdir(parents=True)
    save_file(sd, str(tmp_path / "m" / "upscale_models" / name))
    (tmp_path / "i").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "i" / "pic.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "pic.png"}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": name}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "up"}},
    }
    with Engine(cfg) as engine:
        result = engine.run(prompt, timeout=120)
    (path,) = result.images["4"]
    with Image.open(path) as im:
        got = np.asarray(im).astype(np.int16)
    return pixels, got


def _to_png_values(t: torch.Tensor) -> np.ndarray:
    return (t.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.int16)


def test_span_workflow(tmp_path):
    sd = span_weights(3, 4, 2, seed=7)
    for k in [k for k in sd if k.startswith("upsampler.0.")]:
        sd[k] = sd[k] * 0.01  # keep the output mostly inside 0..1 so the PNG comparison means something
    pixels, got = _run_upscale_workflow(tmp_path, "span_x2.safetensors", sd, (13, 11))
    assert got.shape == (26, 22, 3)
    x = torch.from_numpy(pixels).float().div(255).permute(2, 0, 1)[None]
    ref = _to_png_values(reference_span(sd, x, 2))
    assert np.abs(got - ref).max() <= 1
