"""Upscale models: ESRGAN-family layouts, detection, forward vs an independent reference, tiling, nodes, workflow."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from comfy_core import Engine, EngineConfig
from comfy_core.errors import ModelLoadError
from comfy_core.models.esrgan import CompactConfig, RRDBConfig, RRDBNet, SRVGGNetCompact
from comfy_core.models.state_dict import TensorDict
from comfy_core.models.tiling import tiled_scale, tiled_scale_steps
from comfy_core.models.upscale_layouts import (
    build_upscaler,
    detect_upscaler,
    load_upscale_model,
)
from comfy_core.nodes import upscale_models as nodes

# -- tiny random weights in the real key layouts, built from hand-written key names -----------------------------------


def rrdb_weights(cfg: RRDBConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the old ESRGAN names (model.0, model.1.sub.N.RDBk.convj.0, model.1.sub.<nb>, ...)."""
    g = torch.Generator().manual_seed(seed)
    nf, gc, s = cfg.num_feat, cfg.growth, cfg.up_stages

    def conv(cin: int, cout: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.randn(cout, cin, 3, 3, generator=g) * (1.0 / (3 * cin ** 0.5)),
                torch.randn(cout, generator=g) * 0.05)

    sd: dict[str, torch.Tensor] = {}

    def put(name: str, cin: int, cout: int) -> None:
        sd[f"{name}.weight"], sd[f"{name}.bias"] = conv(cin, cout)

    put("model.0", cfg.in_nc, nf)
    for n in range(cfg.num_blocks):
        for k in (1, 2, 3):
            for j in range(1, 6):
                put(f"model.1.sub.{n}.RDB{k}.conv{j}.0", nf + (j - 1) * gc, gc if j < 5 else nf)
    put(f"model.1.sub.{cfg.num_blocks}", nf, nf)
    for i in range(s):
        put(f"model.{3 * (i + 1)}", nf, nf)
    put(f"model.{3 * s + 2}", nf, nf)
    put(f"model.{3 * s + 4}", nf, cfg.out_nc)
    return sd


def to_layout(old: dict[str, torch.Tensor], cfg: RRDBConfig, layout: str) -> dict[str, torch.Tensor]:
    """The same weights renamed to the BasicSR ("basicsr") or BSRGAN ("bsrgan") layout ("old" = unchanged)."""
    if layout == "old":
        return dict(old)
    s, nb = cfg.up_stages, cfg.num_blocks
    trunk, rdb, body, up, hr = (("body", "rdb", "conv_body", "conv_up", "conv_hr") if layout == "basicsr"
                                else ("RRDB_trunk", "RDB", "trunk_conv", "upconv", "HRconv"))
    names = {"model.0": "conv_first", f"model.1.sub.{nb}": body, f"model.{3 * s + 2}": hr,
             f"model.{3 * s + 4}": "conv_last", **{f"model.{3 * (i + 1)}": f"{up}{i + 1}" for i in range(s)}}
    out = {}
    for key, t in old.items():
        stem, kind = key.rsplit(".", 1)
        if ".RDB" in stem:  # model.1.sub.N.RDBk.convj.0
            parts = stem.split(".")
            out[f"{trunk}.{parts[3]}.{rdb}{parts[4][3:]}.{parts[5]}.{kind}"] = t
        else:
            out[f"{names[stem]}.{kind}"] = t
    return out


def compact_weights(in_nc: int, nf: int, num_conv: int, scale: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    chans = [in_nc] + [nf] * (num_conv + 1)
    for i, cin in enumerate(chans):
        cout = nf if i < len(chans) - 1 else in_nc * scale * scale
        sd[f"body.{2 * i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) / (3 * cin ** 0.5)
        sd[f"body.{2 * i}.bias"] = torch.randn(cout, generator=g) * 0.05
        if i < len(chans) - 1:
            sd[f"body.{2 * i + 1}.weight"] = torch.rand(nf, generator=g) * 0.5  # PReLU slopes
    return sd


# -- independent reference forwards (plain functional ops on the old-layout / compact keys) ---------------------------

def _nearest2(x: torch.Tensor) -> torch.Tensor:
    return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def _unshuffle(x: torch.Tensor, s: int) -> torch.Tensor:
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // s, s, w // s, s)  # channel order c·s² + i·s + j
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * s * s, h // s, w // s)


def reference_rrdb(sd: dict[str, torch.Tensor], x: torch.Tensor, nb: int, stages: int, shuffle: int) -> torch.Tensor:
    def conv(name: str, t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, sd[f"{name}.weight"], sd[f"{name}.bias"], padding=1)

    def lrelu(t: torch.Tensor) -> torch.Tensor:
        return torch.where(t >= 0, t, 0.2 * t)

    if shuffle > 1:
        x = _unshuffle(x, shuffle)
    fea = conv("model.0", x)
    h = fea
    for n in range(nb):
        block_in = h
        for k in (1, 2, 3):
            rdb_in, feats = h, [h]
            for j in range(1, 5):
                feats.append(lrelu(conv(f"model.1.sub.{n}.RDB{k}.conv{j}.0", torch.cat(feats, 1))))
            h = rdb_in + 0.2 * conv(f"model.1.sub.{n}.RDB{k}.conv5.0", torch.cat(feats, 1))
        h = block_in + 0.2 * h
    h = fea + conv(f"model.1.sub.{nb}", h)
    for i in range(stages):
        h = lrelu(conv(f"model.{3 * (i + 1)}", _nearest2(h)))
    return conv(f"model.{3 * stages + 4}", lrelu(conv(f"model.{3 * stages + 2}", h)))


def reference_compact(sd: dict[str, torch.Tensor], x: torch.Tensor, num_conv: int, r: int) -> torch.Tensor:
    h = x
    for i in range(num_conv + 1):
        h = F.conv2d(h, sd[f"body.{2 * i}.weight"], sd[f"body.{2 * i}.bias"], padding=1)
        a = sd[f"body.{2 * i + 1}.weight"].view(1, -1, 1, 1)
        h = torch.where(h >= 0, h, a * h)
    last = 2 * (num_conv + 1)
    h = F.conv2d(h, sd[f"body.{last}.weight"], sd[f"body.{last}.bias"], padding=1)
    b, c, hh, ww = h.shape
    h = h.reshape(b, c // (r * r), r, r, hh, ww).permute(0, 1, 4, 2, 5, 3).reshape(b, c // (r * r), hh * r, ww * r)
    base = x.repeat_interleave(r, dim=-2).repeat_interleave(r, dim=-1)
    return h + base


def built(sd: dict[str, torch.Tensor]):
    """An UpscaleModel straight from a tensor dict (no file)."""
    return build_upscaler(detect_upscaler(TensorDict(sd)))


X4 = RRDBConfig(in_nc=3, out_nc=3, num_feat=8, num_blocks=2, growth=4, up_stages=2)
X2 = RRDBConfig(in_nc=12, out_nc=3, num_feat=8, num_blocks=1, growth=4, up_stages=2, shuffle=2)
X1 = RRDBConfig(in_nc=48, out_nc=3, num_feat=6, num_blocks=1, growth=3, up_stages=2, shuffle=4)
X8 = RRDBConfig(in_nc=3, out_nc=3, num_feat=4, num_blocks=1, growth=2, up_stages=3)
CONFIGS = {"x4": (X4, 4), "x2": (X2, 2), "x1": (X1, 1), "x8": (X8, 8)}


# -- detection ---------------------------------------------------------------------------------------------------------

def test_old_layout_keys_are_the_real_esrgan_names():
    keys = set(rrdb_weights(RRDBConfig(3, 3, 8, 23, 4, 2)))
    for key in ("model.0.weight", "model.1.sub.0.RDB1.conv1.0.weight", "model.1.sub.22.RDB3.conv5.0.bias",
                "model.1.sub.23.weight", "model.3.weight", "model.6.weight", "model.8.weight", "model.10.weight"):
        assert key in keys


@pytest.mark.parametrize("layout", ["old", "basicsr", "bsrgan"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_rrdb_detection(layout, name):
    cfg, scale = CONFIGS[name]
    found = detect_upscaler(TensorDict(to_layout(rrdb_weights(cfg), cfg, layout)))
    assert found.architecture == "ESRGAN"
    assert found.layout == {"old": "esrgan_old", "basicsr": "basicsr", "bsrgan": "bsrgan"}[layout]
    assert found.config == cfg
    assert found.config.scale == scale
    assert found.config.image_channels == 3


def test_compact_detection():
    found = detect_upscaler(TensorDict(compact_weights(3, 8, 5, 4)))
    assert found.architecture == "SRVGGNetCompact" and found.layout == "compact"
    assert found.config == CompactConfig(in_nc=3, out_nc=3, num_feat=8, num_conv=5, scale=4)
    assert detect_upscaler(TensorDict(compact_weights(3, 4, 2, 2))).config.scale == 2


def test_basicsr_layout_names():
    keys = set(to_layout(rrdb_weights(X4), X4, "basicsr"))
    assert {"conv_first.weight", "body.1.rdb3.conv5.weight", "conv_body.weight", "conv_up1.weight",
            "conv_up2.weight", "conv_hr.weight", "conv_last.weight"} <= keys
    keys = set(to_layout(rrdb_weights(X4), X4, "bsrgan"))
    assert {"RRDB_trunk.1.RDB2.conv3.bias", "trunk_conv.weight", "upconv2.weight", "HRconv.weight"} <= keys


# -- forward vs reference -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["old", "basicsr", "bsrgan"])
@pytest.mark.parametrize("name", ["x4", "x2", "x1"])
def test_rrdb_forward_matches_reference(tmp_path, layout, name):
    cfg, scale = CONFIGS[name]
    old = rrdb_weights(cfg, seed=3)
    path = tmp_path / "m.safetensors"
    save_file(to_layout(old, cfg, layout), str(path))
    model = load_upscale_model(path)
    x = torch.rand(2, 3, 12, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3, 12 * scale, 8 * scale)
    torch.testing.assert_close(out, reference_rrdb(old, x, cfg.num_blocks, cfg.up_stages, cfg.shuffle),
                               rtol=1e-5, atol=1e-5)


def test_unshuffle_models_pad_odd_sizes_and_crop():
    cfg = X1
    model = built(to_layout(rrdb_weights(cfg), cfg, "basicsr"))
    x = torch.rand(1, 3, 10, 7)  # not multiples of 4
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 3, 10, 7)
    padded = F.pad(x, (0, 1, 0, 2), mode="reflect")
    torch.testing.assert_close(out, reference_rrdb(rrdb_weights(cfg), padded, 1, 2, 4)[..., :10, :7],
                               rtol=1e-5, atol=1e-5)


def test_compact_forward_matches_reference(tmp_path):
    sd = compact_weights(3, 8, 3, 4, seed=5)
    save_file(sd, str(tmp_path / "c.safetensors"))
    model = load_upscale_model(tmp_path / "c.safetensors")
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, 3, 36, 44) and model.scale == 4
    torch.testing.assert_close(out, reference_compact(sd, x, 3, 4), rtol=1e-5, atol=1e-5)


def test_modules_have_the_canonical_parameter_names():
    assert "ups.1.weight" in RRDBNet(X4).state_dict()
    assert "body.3.weight" in SRVGGNetCompact(CompactConfig(3, 3, 4, 1, 2)).state_dict()  # the 2nd PReLU


# -- file formats and errors ----------------------------------------------------------------------------------------

def test_pth_with_params_ema_wrapper(tmp_path):
    old = rrdb_weights(X2, seed=7)
    other = rrdb_weights(X2, seed=8)
    torch.save({"params_ema": to_layout(old, X2, "basicsr"), "params": to_layout(other, X2, "basicsr")},
               tmp_path / "RealESRGAN_x2plus.pth")
    model = load_upscale_model(tmp_path / "RealESRGAN_x2plus.pth")
    assert model.scale == 2 and model.layout == "basicsr"
    torch.testing.assert_close(model.net.conv_first.weight, old["model.0.weight"])  # params_ema wins


def test_pth_with_module_prefix_and_plain_params(tmp_path):
    old = rrdb_weights(X4, seed=9)
    torch.save({"params": {f"module.{k}": v for k, v in old.items()}}, tmp_path / "esrgan.pt")
    model = load_upscale_model(tmp_path / "esrgan.pt")
    assert model.layout == "esrgan_old"
    torch.testing.assert_close(model.net.conv_last.bias, old["model.10.bias"])


def test_legacy_pickle_pth(tmp_path):
    old = rrdb_weights(X4, seed=2)
    torch.save(old, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    assert load_upscale_model(tmp_path / "old.pth").config == X4


@pytest.mark.parametrize("content", [b"not a pickle at all", b"PK\x03\x04broken zip"])
def test_corrupt_pth_is_a_model_load_error(tmp_path, content):
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(ModelLoadError, match="bad.pth"):
        load_upscale_model(tmp_path / "bad.pth")


def test_truncated_safetensors_is_a_model_load_error(tmp_path):
    save_file(compact_weights(3, 4, 1, 2), str(tmp_path / "c.safetensors"))
    data = (tmp_path / "c.safetensors").read_bytes()
    (tmp_path / "c.safetensors").write_bytes(data[:-100])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_upscale_model(tmp_path / "c.safetensors")


def test_unknown_layout_names_what_is_supported(tmp_path):
    save_file({"encoder.conv.weight": torch.zeros(4, 3, 3, 3)}, str(tmp_path / "swinir.safetensors"))
    with pytest.raises(ModelLoadError, match=r"unknown upscale model layout .*encoder\.conv\.weight.*conv_first"):
        load_upscale_model(tmp_path / "swinir.safetensors")


def test_missing_tensor_is_named(tmp_path):
    sd = to_layout(rrdb_weights(X4), X4, "basicsr")
    del sd["conv_last.weight"]
    save_file(sd, str(tmp_path / "m.safetensors"))
    with pytest.raises(ModelLoadError, match="conv_last.weight"):
        load_upscale_model(tmp_path / "m.safetensors")


def test_wrong_shape_is_named(tmp_path):
    sd = to_layout(rrdb_weights(X4), X4, "bsrgan")
    sd["HRconv.weight"] = torch.zeros(8, 8, 1, 3)
    save_file(sd, str(tmp_path / "m.safetensors"))
    with pytest.raises(ModelLoadError, match="conv_hr.weight"):
        load_upscale_model(tmp_path / "m.safetensors")


def test_esrgan_plus_is_refused(tmp_path):
    sd = rrdb_weights(X4)
    sd["model.1.sub.0.RDB1.conv1x1.weight"] = torch.zeros(4, 8, 1, 1)
    with pytest.raises(ModelLoadError, match="ESRGAN\\+"):
        detect_upscaler(TensorDict(sd))


# -- tiling ---------------------------------------------------------------------------------------------------------

def test_tiled_scale_steps_hand_counts():
    assert tiled_scale_steps(512, 512, 512, 512, 32) == 1
    assert tiled_scale_steps(600, 600, 512, 512, 32) == 4  # ceil(568 / 480) = 2 per side
    assert tiled_scale_steps(1000, 200, 512, 512, 32) == 3  # ceil(968 / 480) = 3 columns, 1 row


def test_tiled_blend_weights_by_hand():
    """12-wide image, 8-wide tiles, overlap 4: tiles at x=0 and x=4. Each tile's output is the constant value of its
    first input pixel (0 and 10), so the output shows the feather weights: at x=5 tile 0 weighs 3/4 (2 from its end)
    and tile 1 weighs 2/4 (1 from its start): (0·0.75 + 10·0.5) / 1.25 = 4."""
    x = (torch.arange(12, dtype=torch.float32) * 2.5).expand(1, 1, 4, 12).contiguous()
    out = tiled_scale(x, lambda t: torch.full_like(t, float(t[0, 0, 0, 0])), tile_x=8, tile_y=8, overlap=4,
                      upscale_amount=1, out_channels=1)
    row = out[0, 0, 0]
    assert row[:4].tolist() == [0.0] * 4
    assert row[4].item() == pytest.approx(2.5 / 1.25)  # weights 1 and 1/4
    assert row[5].item() == pytest.approx(4.0)
    assert row[6].item() == pytest.approx(10 * 0.75 / 1.25)  # weights 2/4 and 3/4
    assert row[8:].tolist() == [10.0] * 4
    assert torch.equal(out[0, 0], row.expand(4, 12))


def test_tiled_pointwise_function_equals_untiled():
    x = torch.rand(2, 3, 70, 45)
    def fn(t):  # each output pixel depends on one input pixel only
        return _nearest2(t * 2 - 1)

    calls = []
    out = tiled_scale(x, fn, tile_x=16, tile_y=24, overlap=4, upscale_amount=2, on_tile=lambda: calls.append(1))
    torch.testing.assert_close(out, fn(x), rtol=0, atol=1e-6)
    assert len(calls) == 2 * tiled_scale_steps(45, 70, 16, 24, 4)


def test_tiled_model_equals_untiled_away_from_seams():
    """A compact net with 3 convs sees 3 pixels each side: outside those bands around the tile cuts the tiled result
    is the untiled one; inside them it is a blend of both tiles and still close."""
    model = built(compact_weights(3, 4, 1, 2, seed=4))
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        full = model(x)
    tiled = tiled_scale(x, model, tile_x=24, tile_y=40, overlap=8, upscale_amount=2)  # tiles at x = 0, 16
    diff = (tiled - full).abs()[0].amax(dim=(0, 1))  # per output column
    assert diff[:2 * (16 - 3)].max() < 1e-5  # left of the second tile's start (minus the receptive radius)
    assert diff[2 * (24 + 3):].max() < 1e-5  # right of the first tile's end
    assert diff.max() < 0.5


class _OomAbove:
    """Wraps a model; raises CUDA-style out-of-memory for tiles larger than `limit` pixels on a side."""

    def __init__(self, model, limit):
        self.model, self.limit, self.sizes = model, limit, []

    def __call__(self, x):
        self.sizes.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model(x)

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_out_of_memory_halves_the_tile():
    model = built(compact_weights(3, 4, 1, 2, seed=6))
    image = torch.rand(1, 300, 300, 3)
    oom = _OomAbove(model, 256)
    out = nodes.upscale_image(oom, image)
    assert oom.sizes[0] == 300 and max(oom.sizes[1:]) == 256  # 512 failed, 256 worked
    expected = nodes.upscale_image(model, image, tile=256)
    torch.testing.assert_close(out, expected)
    with pytest.raises(torch.OutOfMemoryError):
        nodes.upscale_image(_OomAbove(model, 100), image)  # 512 -> 256 -> 128 fail, 64 < 128: give up


def test_upscale_image_clamps_and_checks_channels():
    model = built(compact_weights(3, 4, 1, 2, seed=6))
    for p in model.net.parameters():
        p.data.mul_(50)  # push outputs far outside 0..1
    out = nodes.upscale_image(model, torch.rand(2, 10, 12, 3))
    assert out.shape == (2, 20, 24, 3) and out.dtype == torch.float32
    assert out.min() == 0.0 and out.max() == 1.0
    with pytest.raises(ValueError, match="3-channel"):
        nodes.upscale_image(model, torch.rand(1, 10, 12, 4))


# -- nodes and workflow ---------------------------------------------------------------------------------------------

def test_node_schemas():
    assert nodes.UpscaleModelLoader.INPUT_TYPES()["required"]["model_name"][0] == "COMBO"
    assert nodes.ImageUpscaleWithModel.RETURN_TYPES == ("IMAGE",)
    assert nodes.UpscaleModelLoader.RETURN_TYPES == ("UPSCALE_MODEL",)


def test_workflow_load_upscale_save(tmp_path):
    cfg = EngineConfig(models_dir=str(tmp_path / "m"), input_dir=str(tmp_path / "i"), output_dir=str(tmp_path / "o"),
                       temp_dir=str(tmp_path / "t"))
    (tmp_path / "m" / "upscale_models").mkdir(parents=True)
    sd = compact_weights(3, 4, 1, 2, seed=11)
    save_file(sd, str(tmp_path / "m" / "upscale_models" / "tiny_x2.safetensors"))
    (tmp_path / "i").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, size=(60, 540, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "i" / "pic.png")
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "pic.png"}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "tiny_x2.safetensors"}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "up"}},
    }
    progress = []
    with Engine(cfg) as engine:
        sub = engine.events.subscribe(lambda m: progress.append(m.event.to_builtins()) if m.type == "progress" else 0)
        info = engine.object_info()["UpscaleModelLoader"]["input"]["required"]["model_name"]
        assert info[1]["options"] == ["tiny_x2.safetensors"]
        result = engine.run(prompt, timeout=120)
        sub.close()
    (path,) = result.images["4"]
    with Image.open(path) as im:
        assert im.size == (1080, 120)
        got = np.asarray(im).astype(np.int16)
    x = torch.from_numpy(pixels).float().div(255).permute(2, 0, 1)[None]
    ref = reference_compact(sd, x, 1, 2)  # untiled: the two tiles only differ in their overlap band
    ref = (ref.clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.int16)
    assert np.abs(got[:, :2 * 470] - ref[:, :2 * 470]).max() <= 1  # left of the overlap's receptive band
    assert [(p["value"], p["max"]) for p in progress if p["node"] == "3"] == [(1, 2), (2, 2)]


@pytest.mark.parametrize(("config", "params"), [
    (RRDBConfig(3, 3, 64, 23, 32, 2), 16_697_987),  # RealESRGAN_x4plus / ESRGAN x4 (23 blocks, 64 features)
    (RRDBConfig(3, 3, 64, 6, 32, 2), 4_467_779),  # RealESRGAN_x4plus_anime_6B
    (CompactConfig(3, 3, 64, 16, 4), 621_424),  # realesr-animevideov3
])
def test_full_size_parameter_counts(config, params):
    with torch.device("meta"):
        net = RRDBNet(config) if isinstance(config, RRDBConfig) else SRVGGNetCompact(config)
    assert sum(p.numel() for p in net.parameters()) == params


def test_progress_per_tile_and_interrupt_between_tiles():
    """Tile progress goes through the node context; an interrupt set after the first tile stops at the second."""
    from comfy_core import context
    from comfy_core.errors import Interrupted

    model = _CountingModel(built(compact_weights(3, 4, 1, 2, seed=6)))
    seen = []
    ctx = context.NodeContext(config=None, storage=None, folders=None)

    def hook(value, total, preview):
        seen.append((value, total))
        ctx.cancel.set()

    ctx.on_progress = hook
    with context.use(ctx), pytest.raises(Interrupted):
        nodes.upscale_image(model, torch.rand(1, 600, 600, 3))  # 4 tiles of 512 with overlap 32
    assert seen == [(1, 4)]
    assert model.calls == 2


class _CountingModel(_OomAbove):
    def __init__(self, model):
        super().__init__(model, limit=10**9)

    @property
    def calls(self):
        return len(self.sizes)
