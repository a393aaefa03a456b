"""T2I-Adapters through the ControlNet loader: real key layouts, feature equations, routing into the UNet."""
from __future__ import annotations

import fixtures_models as fm
import pytest
import torch
import torch.nn.functional as F

from comfy_core.errors import ModelLoadError
from comfy_core.models.controlnet import load_controlnet
from comfy_core.models.t2i_adapter import T2IAdapter, _from_diffusers, build_adapter
from comfy_core.models.unet import UNetConfig, UNetModel


def _full_sd1_layout(c: int = 320, cin: int = 192) -> dict[str, tuple]:
    """t2iadapter_*_sd15v2 keys: conv_in, 4 levels x 2 blocks (block2 1x1), in_conv where the width grows."""
    shapes = {"conv_in.weight": (c, cin, 3, 3), "conv_in.bias": (c,)}
    widths = (c, 2 * c, 4 * c, 4 * c)
    for n in range(8):
        w = widths[n // 2]
        shapes |= {f"body.{n}.block1.weight": (w, w, 3, 3), f"body.{n}.block1.bias": (w,),
                   f"body.{n}.block2.weight": (w, w, 1, 1), f"body.{n}.block2.bias": (w,)}
    for n, (a, b) in {2: (c, 2 * c), 4: (2 * c, 4 * c)}.items():
        shapes |= {f"body.{n}.in_conv.weight": (b, a, 1, 1), f"body.{n}.in_conv.bias": (b,)}
    return shapes


def _light_layout(c: int = 320, cin: int = 192, rb: int = 4) -> dict[str, tuple]:
    """t2iadapter_color_sd14v1 keys: per level in_conv (1x1 to c/4), rb light blocks, out_conv (1x1)."""
    shapes = {}
    widths, ins = (c, 2 * c, 4 * c, 4 * c), (cin, c, 2 * c, 4 * c)
    for i in range(4):
        inner = widths[i] // 4
        shapes |= {f"body.{i}.in_conv.weight": (inner, ins[i], 1, 1), f"body.{i}.in_conv.bias": (inner,),
                   f"body.{i}.out_conv.weight": (widths[i], inner, 1, 1), f"body.{i}.out_conv.bias": (widths[i],)}
        for k in range(rb):
            for blk in ("block1", "block2"):
                shapes |= {f"body.{i}.body.{k}.{blk}.weight": (inner, inner, 3, 3), f"body.{i}.body.{k}.{blk}.bias": (inner,)}
    return shapes


def _sdxl_diffusers_layout(c: int = 320) -> dict[str, tuple]:
    """diffusers T2IAdapter (full_adapter_xl) keys: adapter.conv_in, adapter.body.I.[in_conv,resnets.J.block1/2]."""
    shapes = {"adapter.conv_in.weight": (c, 768, 3, 3), "adapter.conv_in.bias": (c,)}
    widths = (c, 2 * c, 4 * c, 4 * c)
    for i in range(4):
        w = widths[i]
        for j in range(2):
            shapes |= {f"adapter.body.{i}.resnets.{j}.block1.weight": (w, w, 3, 3),
                       f"adapter.body.{i}.resnets.{j}.block1.bias": (w,),
                       f"adapter.body.{i}.resnets.{j}.block2.weight": (w, w, 1, 1),
                       f"adapter.body.{i}.resnets.{j}.block2.bias": (w,)}
    for i, (a, b) in {1: (c, 2 * c), 2: (2 * c, 4 * c)}.items():
        shapes |= {f"adapter.body.{i}.in_conv.weight": (b, a, 1, 1), f"adapter.body.{i}.in_conv.bias": (b,)}
    return shapes


def _meta(shapes):
    return {k: torch.empty(s, device="meta") for k, s in shapes.items()}


@pytest.mark.parametrize("layout,xl", [(_full_sd1_layout(), False), (_light_layout(), False),
                                       (_sdxl_diffusers_layout(), True)], ids=["sd15_full", "light", "sdxl"])
def test_full_size_layouts_build_exactly(layout, xl):
    sd = _meta(layout)
    if xl:
        sd = _from_diffusers(sd)
    with torch.device("meta"):
        module = build_adapter(sd, "real layout")
    got = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    assert got == {k: tuple(v.shape) for k, v in sd.items()}
    assert module.xl is xl and module.unshuffle_amount == (16 if xl else 8) and module.input_channels == 3


def _write(tmp_path, shapes, name, seed=0):
    return fm.write(tmp_path / name, fm.randomize(shapes, seed))


def _tiny_unet(mult):
    n = len(mult)
    cfg = UNetConfig(model_channels=32, channel_mult=mult, num_res_blocks=(2,) * n, transformer_depth=(0,) * (2 * n),
                     transformer_depth_output=(0,) * (3 * n), transformer_depth_middle=-1, context_dim=16)
    with torch.device("meta"):
        unet = UNetModel(cfg)
    shapes = {k: v.shape for k, v in unet.state_dict().items()}
    unet.load_state_dict(fm.randomize(shapes, 7), assign=True)
    return unet.eval()


def _hooked(unet, x, t, feats: dict, strength: float):
    """Reference: the UNet with `feats` added by forward hooks (block index or "middle" -> tensor)."""
    handles = []
    for where, f in feats.items():
        mod = unet.middle_block if where == "middle" else unet.input_blocks[where]
        handles.append(mod.register_forward_hook(lambda m, i, out, f=f: out + strength * f))
    try:
        return unet(x, t, context=torch.zeros(x.shape[0], 1, 16))
    finally:
        for h in handles:
            h.remove()


def _levels(adapter, hint):
    """Per-level features: the non-None control entries in level order."""
    out = adapter.control_model(hint)
    flat = [f for f in out.get("middle", []) + out["input"] if f is not None]
    return flat[::-1]


@pytest.mark.parametrize("xl", [False, True])
def test_full_adapter_features_land_on_the_right_unet_blocks(tmp_path, xl):
    layout = _sdxl_diffusers_layout(32) if xl else _full_sd1_layout(32)
    adapter = load_controlnet(_write(tmp_path, layout, "t2i.safetensors"))
    assert isinstance(adapter, T2IAdapter)
    unet = _tiny_unet((1, 2, 4) if xl else (1, 2, 4, 4))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 9, 9, generator=g)  # odd latent: adapters round the hint up to their unshuffle block
    image = torch.rand(1, 3, 72, 72, generator=g)
    c = adapter.copy().set_cond_hint(image, 0.7)
    sigma = torch.full((2,), 1.0)
    control = c.get_control(x, sigma, {"context": torch.zeros(2, 1, 16)}, [0, 1])
    t = torch.full((2,), 500.0)
    got = unet(x, t, context=torch.zeros(2, 1, 16), control=control)
    # reference features: the hint resized to a multiple of the unshuffle block, then the adapter levels
    size = 80 if xl else 72
    hint = F.interpolate(image, size=(size, size), mode="nearest-exact")
    f = _levels(c, hint)
    where = (3, 5, 8, "middle") if xl else (2, 5, 8, 11)
    ref = _hooked(unet, x, t, dict(zip(where, f)), 0.7)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, unet(x, t, context=torch.zeros(2, 1, 16)), atol=1e-3)


def test_light_adapter_equations(tmp_path):
    layout = _light_layout(32, rb=2)
    path = _write(tmp_path, layout, "light.safetensors", seed=3)
    sd = fm.randomize(layout, 3)
    adapter = load_controlnet(path)
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    feats = _levels(adapter, image)
    assert [tuple(f.shape) for f in feats] == [(1, 32, 8, 8), (1, 64, 4, 4), (1, 128, 2, 2), (1, 128, 1, 1)]
    # by hand: pixel-unshuffle 8, then per level [2x average pool] -> in_conv -> 2 x (x + conv(relu(conv x))) -> out_conv
    x = F.pixel_unshuffle(image, 8)  # [1, 192, 8, 8]
    for level in range(4):
        x = _light_level(sd, level, F.avg_pool2d(x, 2) if level else x)
        torch.testing.assert_close(feats[level], x, rtol=1e-5, atol=1e-5)


def _light_level(sd, i, x):
    x = F.conv2d(x, sd[f"body.{i}.in_conv.weight"], sd[f"body.{i}.in_conv.bias"])
    for k in range(2):
        h = F.relu(F.conv2d(x, sd[f"body.{i}.body.{k}.block1.weight"], sd[f"body.{i}.body.{k}.block1.bias"], padding=1))
        x = x + F.conv2d(h, sd[f"body.{i}.body.{k}.block2.weight"], sd[f"body.{i}.body.{k}.block2.bias"], padding=1)
    return F.conv2d(x, sd[f"body.{i}.out_conv.weight"], sd[f"body.{i}.out_conv.bias"])


def test_strength_window_chain_and_grey_hint(tmp_path):
    adapter = load_controlnet(_write(tmp_path, _full_sd1_layout(32, cin=64), "grey.safetensors"))
    assert adapter.control_model.input_channels == 1
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    x = torch.zeros(2, 4, 8, 8)
    conds = {"context": torch.zeros(2, 1, 16)}
    one = adapter.copy().set_cond_hint(image, 1.0).get_control(x, torch.full((2,), 1.0), conds, [0, 1])
    half = adapter.copy().set_cond_hint(image, 0.5).get_control(x, torch.full((2,), 1.0), conds, [0, 1])
    grey = adapter.copy().set_cond_hint(image.mean(1, keepdim=True).expand(1, 3, 64, 64), 1.0)
    grey_out = grey.get_control(x, torch.full((2,), 1.0), conds, [0, 1])
    for a, b, g in zip(one["input"], half["input"], grey_out["input"]):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.shape[0] == 2
            torch.testing.assert_close(b, 0.5 * a)
            torch.testing.assert_close(g, a)
    windowed = adapter.copy().set_cond_hint(image, 1.0, (0.5, 1.0))
    windowed.pre_run(None)
    assert windowed.get_control(x, torch.full((2,), 14.0), conds, [0, 1]) is None  # sigma_max: 0% of sampling
    first = adapter.copy().set_cond_hint(image, 1.0)
    chained = adapter.copy().set_cond_hint(image, 0.5).set_previous_controlnet(first)
    both = chained.get_control(x, torch.full((2,), 1.0), conds, [0, 1])
    for a, s in zip(one["input"], both["input"]):
        if a is not None:
            torch.testing.assert_close(s, 1.5 * a)


def test_broken_adapter_is_a_load_error(tmp_path):
    layout = _full_sd1_layout(32)
    layout["body.2.in_conv.weight"] = (64, 16, 1, 1)
    with pytest.raises(ModelLoadError, match="T2I-Adapter"):
        load_controlnet(_write(tmp_path, layout, "bad.safetensors"))
    del layout["body.7.block1.weight"], layout["body.7.block1.bias"]
    with pytest.raises(ModelLoadError, match="T2I-Adapter"):
        load_controlnet(_write(tmp_path, layout, "bad2.safetensors"))
