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
    torch.manual_seed(0)
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
    x = torch.rand(2, 3, *hw, generator=torch.Generator().manual_seed(scale))
    with torch.no_grad():
        got = model(x)
    assert got.shape == (2, 3, hw[0] * scale, hw[1] * scale)
    ref = reference_span(sd, x, scale, norm)
    assert torch.allclose(got, ref, rtol=1e-3, atol=1e-4 * ref.abs().max().item())  # ×255 input: float32 noise


def test_span_stale_eval_conv_is_ignored_and_deployed_files_use_it():
    sd = span_weights(3, 5, 2, seed=3)
    model = built(sd)
    x = torch.rand(1, 3, 6, 5, generator=torch.Generator().manual_seed(1))
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
    x = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(2))
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


# -- SwinIR -------------------------------------------------------------------------------------------------------------

def _ref_rel_index(ws: int) -> torch.Tensor:
    """Loop version: token t = y·ws + x; offset (dy, dx) -> (dy + ws − 1)·(2ws − 1) + dx + ws − 1."""
    n = ws * ws
    idx = torch.zeros(n, n, dtype=torch.long)
    for a in range(n):
        for b in range(n):
            dy, dx = a // ws - b // ws, a % ws - b % ws
            idx[a, b] = (dy + ws - 1) * (2 * ws - 1) + dx + ws - 1
    return idx


def swinir_weights(*, in_nc=3, dim=8, depths=(2, 2), heads=(2, 2), ws=4, hidden=16, kind="pixelshuffle", scale=2,
                   nf=8, resi="1conv", out_nc=None, seed=0, img_size=16) -> dict[str, torch.Tensor]:
    """Random weights under SwinIR's real names, with the stored index / mask buffers real files carry."""
    g = torch.Generator().manual_seed(seed)
    out_nc = out_nc or in_nc
    sd: dict[str, torch.Tensor] = {}

    def conv(name: str, cin: int, cout: int, k: int = 3) -> None:
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) / (k * cin ** 0.5)
        sd[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.05

    def linear(name: str, cin: int, cout: int) -> None:
        sd[f"{name}.weight"] = torch.randn(cout, cin, generator=g) / cin ** 0.5
        sd[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.05

    def norm(name: str, c: int) -> None:
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)

    def body_conv(name: str) -> None:
        if resi == "1conv":
            conv(name, dim, dim)
        else:
            conv(f"{name}.0", dim, dim // 4)
            conv(f"{name}.2", dim // 4, dim // 4, 1)
            conv(f"{name}.4", dim // 4, dim)

    conv("conv_first", in_nc, dim)
    norm("patch_embed.norm", dim)
    for i, (depth, h) in enumerate(zip(depths, heads, strict=True)):
        for j in range(depth):
            p = f"layers.{i}.residual_group.blocks.{j}"
            norm(f"{p}.norm1", dim)
            sd[f"{p}.attn.relative_position_bias_table"] = torch.randn((2 * ws - 1) ** 2, h, generator=g)
            sd[f"{p}.attn.relative_position_index"] = _ref_rel_index(ws)
            linear(f"{p}.attn.qkv", dim, 3 * dim)
            linear(f"{p}.attn.proj", dim, dim)
            norm(f"{p}.norm2", dim)
            linear(f"{p}.mlp.fc1", dim, hidden)
            linear(f"{p}.mlp.fc2", hidden, dim)
            if j % 2:
                sd[f"{p}.attn_mask"] = torch.zeros((img_size // ws) ** 2, ws * ws, ws * ws)
        body_conv(f"layers.{i}.conv")
    norm("norm", dim)
    body_conv("conv_after_body")
    if kind in ("pixelshuffle", "nearest+conv"):
        conv("conv_before_upsample.0", dim, nf)
    if kind == "pixelshuffle":
        steps = [9] if scale == 3 else [4] * (scale.bit_length() - 1)
        for k, r2 in enumerate(steps):
            conv(f"upsample.{2 * k}", nf, r2 * nf)
        conv("conv_last", nf, out_nc)
    elif kind == "pixelshuffledirect":
        conv("upsample.0", dim, out_nc * scale * scale)
    elif kind == "nearest+conv":
        for k in range(1, scale.bit_length()):
            conv(f"conv_up{k}", nf, nf)
        conv("conv_hr", nf, nf)
        conv("conv_last", nf, out_nc)
    else:
        conv("conv_last", dim, out_nc)
    return sd


def _ln(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * sd[f"{name}.weight"] + sd[f"{name}.bias"]


def _lin(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _region(i: int, size: int, ws: int, s: int) -> int:
    return 0 if i < size - ws else (1 if i < size - s else 2)


def ref_attention(sd: dict, p: str, tokens: torch.Tensor, heads: int, ws: int, allowed: torch.Tensor) -> torch.Tensor:
    """One window [N,C]: softmax(q·kᵀ/√d + table bias, −100 where `allowed` is false)·v per head, then proj."""
    c = tokens.shape[1]
    d = c // heads
    qkv = _lin(tokens, sd, f"{p}.attn.qkv")  # [N, 3C] as (q | k | v), each split into heads
    table, idx = sd[f"{p}.attn.relative_position_bias_table"], _ref_rel_index(ws)
    outs = []
    for hd in range(heads):
        q = qkv[:, hd * d:(hd + 1) * d]
        k = qkv[:, c + hd * d:c + (hd + 1) * d]
        v = qkv[:, 2 * c + hd * d:2 * c + (hd + 1) * d]
        logits = q @ k.T / d ** 0.5 + table[idx, hd] + torch.where(allowed, 0.0, -100.0)
        outs.append(torch.softmax(logits, -1) @ v)
    return _lin(torch.cat(outs, -1), sd, f"{p}.attn.proj")


def ref_block(sd: dict, p: str, x: torch.Tensor, heads: int, ws: int, shift: int) -> torch.Tensor:
    """x [H,W,C] (one image): shifted-window attention window by window, then the MLP."""
    h, w, _ = x.shape
    y = torch.roll(_ln(x, sd, f"{p}.norm1"), (-shift, -shift), (0, 1))
    out = torch.zeros_like(y)
    for wy in range(0, h, ws):
        for wx in range(0, w, ws):
            coords = [(wy + a, wx + b) for a in range(ws) for b in range(ws)]
            labels = torch.tensor([(_region(yy, h, ws, shift) * 3 + _region(xx, w, ws, shift)) if shift else 0
                                   for yy, xx in coords])
            tokens = torch.stack([y[yy, xx] for yy, xx in coords])
            att = ref_attention(sd, p, tokens, heads, ws, labels[:, None] == labels[None, :])
            for t, (yy, xx) in enumerate(coords):
                out[yy, xx] = att[t]
    x = x + torch.roll(out, (shift, shift), (0, 1))
    m = _lin(F.gelu(_lin(_ln(x, sd, f"{p}.norm2"), sd, f"{p}.mlp.fc1")), sd, f"{p}.mlp.fc2")
    return x + m


def _ref_body_conv(sd: dict, name: str, x: torch.Tensor, resi: str) -> torch.Tensor:
    if resi == "1conv":
        return F.conv2d(x, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)
    y = F.leaky_relu(F.conv2d(x, sd[f"{name}.0.weight"], sd[f"{name}.0.bias"], padding=1), 0.2)
    y = F.leaky_relu(F.conv2d(y, sd[f"{name}.2.weight"], sd[f"{name}.2.bias"]), 0.2)
    return F.conv2d(y, sd[f"{name}.4.weight"], sd[f"{name}.4.bias"], padding=1)


def reference_swinir(sd: dict, x: torch.Tensor, *, depths, heads, ws, kind, scale, resi="1conv",
                     img_range=1.0) -> torch.Tensor:
    def conv(name: str, t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=sd[f"{name}.weight"].shape[-1] // 2)

    h0, w0 = x.shape[-2:]
    x = F.pad(x, (0, -w0 % ws, 0, -h0 % ws), mode="reflect")
    mean = MEAN if x.shape[1] == 3 else torch.zeros(1, 1, 1, 1)
    x = (x - mean) * img_range
    first = conv("conv_first", x)
    outs = []
    for b in range(x.shape[0]):
        t = _ln(first[b].permute(1, 2, 0), sd, "patch_embed.norm")  # [H,W,C]
        for i, (depth, nh) in enumerate(zip(depths, heads, strict=True)):
            y = t
            for j in range(depth):
                y = ref_block(sd, f"layers.{i}.residual_group.blocks.{j}", y, nh, ws, (j % 2) * (ws // 2))
            t = _ref_body_conv(sd, f"layers.{i}.conv", y.permute(2, 0, 1)[None], resi)[0].permute(1, 2, 0) + t
        outs.append(_ln(t, sd, "norm").permute(2, 0, 1))
    feat = _ref_body_conv(sd, "conv_after_body", torch.stack(outs), resi) + first
    if kind == "pixelshuffle":
        y = F.leaky_relu(conv("conv_before_upsample.0", feat), 0.01)
        steps = [3] if scale == 3 else [2] * (scale.bit_length() - 1)
        for k, r in enumerate(steps):
            y = _shuffle(conv(f"upsample.{2 * k}", y), r)
        out = conv("conv_last", y)
    elif kind == "pixelshuffledirect":
        out = _shuffle(conv("upsample.0", feat), scale)
    elif kind == "nearest+conv":
        y = F.leaky_relu(conv("conv_before_upsample.0", feat), 0.01)
        for k in range(1, scale.bit_length()):
            y = F.leaky_relu(conv(f"conv_up{k}", y.repeat_interleave(2, -2).repeat_interleave(2, -1)), 0.2)
        out = conv("conv_last", F.leaky_relu(conv("conv_hr", y), 0.2))
    else:
        out = x + conv("conv_last", feat)
    return (out / img_range + mean)[..., : h0 * scale, : w0 * scale]


SWIN_CASES = {
    "ps_x2": {"kind": "pixelshuffle", "scale": 2},
    "ps_x4_3conv": {"kind": "pixelshuffle", "scale": 4, "resi": "3conv"},
    "ps_x3": {"kind": "pixelshuffle", "scale": 3, "depths": (3,), "heads": (4,)},
    "direct_x2": {"kind": "pixelshuffledirect", "scale": 2, "depths": (2,), "heads": (1,)},
    "nearest_x4": {"kind": "nearest+conv", "scale": 4},
    "nearest_x2_gray": {"kind": "nearest+conv", "scale": 2, "in_nc": 1, "depths": (2,), "heads": (2,)},
    "restore_w7": {"kind": "", "scale": 1, "ws": 7, "depths": (2,), "heads": (2,)},
}


@pytest.mark.parametrize("case", list(SWIN_CASES))
def test_swinir_detection(case):
    args = {"depths": (2, 2), "heads": (2, 2), "ws": 4, "resi": "1conv", "in_nc": 3, **SWIN_CASES[case]}
    found = detect_upscaler(TensorDict(swinir_weights(**args)))
    c = found.config
    assert found.architecture == "SwinIR"
    assert found.layout == (args["kind"] or "restoration")
    assert (c.upsampler, c.scale, c.window, c.depths, c.heads) == (args["kind"], args["scale"], args["ws"],
                                                                  args["depths"], args["heads"])
    assert (c.in_nc, c.out_nc, c.embed_dim, c.mlp_hidden, c.resi) == (args["in_nc"], args["in_nc"], 8, 16,
                                                                     args["resi"])
    assert c.img_range == (255.0 if args["ws"] == 7 else 1.0)
    if args["kind"] in ("pixelshuffle", "nearest+conv"):
        assert c.num_feat == 8


def test_swinir_shifted_block_matches_hand_written_attention():
    from comfy_core.models.upscale_swinir import SwinBlock
    sd = swinir_weights(depths=(2,), heads=(2,), ws=4, seed=4)
    for shift in (0, 2):
        p = f"layers.0.residual_group.blocks.{shift // 2}"
        block = SwinBlock(8, 2, 4, 16, shift)
        block.load_state_dict({k[len(p) + 1:]: v for k, v in sd.items() if k.startswith(p + ".")
                               and not k.endswith(("relative_position_index", "attn_mask"))})
        x = torch.randn(8, 12, 8, generator=torch.Generator().manual_seed(shift))
        with torch.no_grad():
            got = block(x[None])[0]
        assert torch.allclose(got, ref_block(sd, p, x, 2, 4, shift), atol=1e-5)


@pytest.mark.parametrize("case", list(SWIN_CASES))
def test_swinir_forward_matches_reference(case, tmp_path):
    args = {"depths": (2, 2), "heads": (2, 2), "ws": 4, "resi": "1conv", "in_nc": 3, **SWIN_CASES[case]}
    sd = swinir_weights(**args, seed=len(case))
    save_file(sd, str(tmp_path / "swin.safetensors"))
    model = load_upscale_model(tmp_path / "swin.safetensors")
    hw = (9, 10) if args["ws"] == 7 else (9, 7)  # odd sizes: padded to the window, cropped back
    x = torch.rand(2, args["in_nc"], *hw, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        got = model(x)
    s = args["scale"]
    assert got.shape == (2, args["in_nc"], hw[0] * s, hw[1] * s)
    ref = reference_swinir(sd, x, depths=args["depths"], heads=args["heads"], ws=args["ws"], kind=args["kind"],
                           scale=s, resi=args["resi"], img_range=255.0 if args["ws"] == 7 else 1.0)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_swinir_padding_changes_nothing_inside_a_window_multiple():
    """A 8×8 image needs no padding: the crop is a no-op and the output is exactly the ×2 size."""
    sd = swinir_weights(seed=9)
    model = built(sd)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model(x)
    ref = reference_swinir(sd, x, depths=(2, 2), heads=(2, 2), ws=4, kind="pixelshuffle", scale=2)
    assert got.shape == (1, 3, 16, 16) and torch.allclose(got, ref, atol=1e-4)


def test_swinir_partial_and_unsupported_files_are_model_load_errors(tmp_path):
    sd = swinir_weights()
    partial = {k: v for k, v in sd.items() if not k.startswith("layers.1.residual_group.blocks.1.mlp.fc2")}
    with pytest.raises(ModelLoadError, match="mlp.fc2"):
        built(partial)
    no_table = {k: v for k, v in sd.items() if "layers.1.residual_group.blocks.0.attn.relative_position" not in k}
    with pytest.raises(ModelLoadError, match="relative_position_bias_table"):
        detect_upscaler(TensorDict(no_table))
    odd = dict(sd, **{"layers.0.residual_group.blocks.0.attn.relative_position_bias_table": torch.zeros(50, 2)})
    with pytest.raises(ModelLoadError, match="bias_table"):
        detect_upscaler(TensorDict(odd))
    ape = dict(sd, absolute_pos_embed=torch.zeros(1, 256, 8))
    with pytest.raises(ModelLoadError, match="absolute position"):
        detect_upscaler(TensorDict(ape))
    torch.save({"params_ema": partial}, tmp_path / "bad.pth")
    with pytest.raises(ModelLoadError, match="bad.pth"):
        load_upscale_model(tmp_path / "bad.pth")


def test_swinir_workflow(tmp_path):
    sd = swinir_weights(kind="nearest+conv", scale=2, depths=(2,), heads=(2,), seed=12)
    for k in ("conv_last.weight", "conv_last.bias"):
        sd[k] = sd[k] * 0.05
    pixels, got = _run_upscale_workflow(tmp_path, "swinir_x2.safetensors", sd, (11, 9))
    assert got.shape == (22, 18, 3)
    x = torch.from_numpy(pixels).float().div(255).permute(2, 0, 1)[None]
    ref = _to_png_values(reference_swinir(sd, x, depths=(2,), heads=(2,), ws=4, kind="nearest+conv", scale=2))
    assert np.abs(got - ref).max() <= 1
