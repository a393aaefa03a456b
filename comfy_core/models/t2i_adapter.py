"""T2I-Adapters (Mou et al. 2023, "T2I-Adapter: Learning Adapters to Dig out More Controllable Ability", arXiv:2302.08453)
as CONTROL_NET objects, following ComfyUI's comfy/t2i_adapter/adapter.py and its T2IAdapter control.

An adapter turns the hint image into one feature map per UNet level, computed once per hint size (it does not see
the latent or the timestep). The hint is pixel-unshuffled (8x8 blocks, 16x16 for SDXL adapters) to latent resolution
(1/2 of it for SDXL), then:
- full adapter (`conv_in`, `body.N.block1/2`): conv_in, then 4 levels x nums_rb residual blocks (1st block of a level
  may average-pool by 2 — or a strided conv `down_opt.op` — and widen with a 1x1/kxk `in_conv`); levels 1-3 pool in
  SD1 adapters, only level 2 in SDXL ones (level 1 widens at the same size);
- light adapter (`body.N.in_conv/out_conv`): 4 extractors, each [pool] -> 1x1 in_conv -> nums_rb light residual blocks
  -> 1x1 out_conv, pooling from the second on.
Routing (the "input" side: added to the UNet's hidden state after input block k, which then also feeds the skip):
SD1 features go after input blocks 2, 5, 8, 11 (the last block of each level); SDXL ones after blocks 3, 5, 8 with the
4th feature on the middle block output. The lists below are built so that the UNet, which pops "input" residuals from
the end, finds them there. Strength, percent window and chaining are the ControlNet ones (merge_control).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ComfyCoreError, ModelLoadError
from ..upscale import common_upscale
from .controlnet import COMPRESSION, ControlNet, broadcast_hint
from .detect import ShapeKeys

LEVELS = 4


def _pool(x: torch.Tensor) -> torch.Tensor:
    """2x average pool; odd sizes are zero-padded on both sides (counted in the mean) as the original Downsample."""
    return F.avg_pool2d(x, 2, 2, padding=(x.shape[2] % 2, x.shape[3] % 2))


class _ConvDown(nn.Module):
    """The strided-conv downsample of adapters trained with use_conv (`down_opt.op`)."""

    def __init__(self, ch: int):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class AdapterResBlock(nn.Module):
    """[down] -> [in_conv when the width changes] -> x + block2(relu(block1(x)))."""

    def __init__(self, in_c: int, out_c: int, down: bool, ksize: int, conv_down: bool):
        super().__init__()
        self.down = down
        if down and conv_down:
            self.down_opt = _ConvDown(in_c)
        self.in_conv = nn.Conv2d(in_c, out_c, ksize, 1, ksize // 2) if in_c != out_c else None
        self.block1 = nn.Conv2d(out_c, out_c, 3, 1, 1)
        self.block2 = nn.Conv2d(out_c, out_c, ksize, 1, ksize // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.down:
            x = self.down_opt(x) if hasattr(self, "down_opt") else _pool(x)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return x + self.block2(F.relu(self.block1(x)))


class Adapter(nn.Module):
    """The full adapter; `xl` = SDXL routing (16x unshuffle, only level 2 pools)."""

    def __init__(self, cin: int, channels: tuple[int, ...], nums_rb: int, ksize: int, conv_down: bool, xl: bool):
        super().__init__()
        self.xl, self.channels, self.nums_rb = xl, channels, nums_rb
        self.unshuffle_amount = 16 if xl else 8
        self.input_channels = cin // self.unshuffle_amount**2
        pooling = (2,) if xl else (1, 2, 3)
        self.conv_in = nn.Conv2d(cin, channels[0], 3, 1, 1)
        blocks = []
        for i, ch in enumerate(channels):
            for j in range(nums_rb):
                first = j == 0 and i > 0
                blocks.append(AdapterResBlock(channels[i - 1] if first else ch, ch, first and i in pooling, ksize,
                                              conv_down))
        self.body = nn.ModuleList(blocks)

    def forward(self, hint: torch.Tensor) -> dict[str, list[torch.Tensor | None]]:
        x = self.conv_in(F.pixel_unshuffle(hint, self.unshuffle_amount))
        feats = []
        for i in range(len(self.channels)):
            for j in range(self.nums_rb):
                x = self.body[i * self.nums_rb + j](x)
            feats.append(x)
        return route(feats, self.xl)


class _LightResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.block1 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.block2 = nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block2(F.relu(self.block1(x)))


class _Extractor(nn.Module):
    def __init__(self, in_c: int, inter_c: int, out_c: int, nums_rb: int, down: bool):
        super().__init__()
        self.down = down
        self.in_conv = nn.Conv2d(in_c, inter_c, 1)
        self.body = nn.Sequential(*(_LightResBlock(inter_c) for _ in range(nums_rb)))
        self.out_conv = nn.Conv2d(inter_c, out_c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(self.body(self.in_conv(_pool(x) if self.down else x)))


class AdapterLight(nn.Module):
    """The light adapter (SD1 only): one extractor per level, inner width = channels // 4."""

    def __init__(self, cin: int, channels: tuple[int, ...], inner: tuple[int, ...], nums_rb: int):
        super().__init__()
        self.xl, self.unshuffle_amount = False, 8
        self.input_channels = cin // 64
        ins = (cin, *channels[:-1])
        self.body = nn.ModuleList(_Extractor(ins[i], inner[i], channels[i], nums_rb, i > 0) for i in range(len(channels)))

    def forward(self, hint: torch.Tensor) -> dict[str, list[torch.Tensor | None]]:
        x, feats = F.pixel_unshuffle(hint, 8), []
        for extractor in self.body:
            x = extractor(x)
            feats.append(x)
        return route(feats, False)


def route(feats: list[torch.Tensor], xl: bool) -> dict[str, list[torch.Tensor | None]]:
    """Per-level features -> ComfyUI's control lists (read by the UNet from the end: last entry = input block 0)."""
    if not xl:  # SD1: blocks 2, 5, 8, 11
        slots: list[torch.Tensor | None] = []
        for f in feats:
            slots += [None, None, f]
        return {"input": slots[::-1]}
    gaps = (3, 1, 2, 1)  # SDXL: blocks 3, 5, 8, then the middle block
    slots = []
    for f, gap in zip(feats, gaps):
        slots += [None] * gap + [f]
    slots = slots[::-1]
    return {"input": slots[1:], "middle": slots[:1]}


# ------------------------------------------------------------------------------------------------ loading


def is_t2i_adapter(sd: Mapping) -> bool:
    full = "conv_in.weight" in sd and "body.0.block1.weight" in sd
    light = "body.0.in_conv.weight" in sd and "body.0.out_conv.weight" in sd
    return full or light or "adapter.body.0.resnets.0.block1.weight" in sd


def _from_diffusers(sd: Mapping) -> dict[str, Any]:
    """diffusers T2IAdapter keys (`adapter.body.I.resnets.J.*`) -> ComfyUI's (`body.{I*2+J}.*`, 2 blocks a level)."""
    out = {}
    for key in sd:
        name = key.removeprefix("adapter.")
        parts = name.split(".")
        if parts[0] == "body" and len(parts) > 3 and parts[2] == "resnets":
            name = ".".join(["body", str(int(parts[1]) * 2 + int(parts[3])), *parts[4:]])
        elif parts[0] == "body":
            name = ".".join(["body", str(int(parts[1]) * 2), *parts[2:]])
        out[name] = sd[key]
    return out


def build_adapter(sd: Mapping, source: str) -> nn.Module:
    """The adapter module of a T2I-Adapter state dict (structure read from key names and shapes)."""
    k = ShapeKeys(sd, "", source)
    if k.has("body.0.in_conv.weight") and k.has("body.0.out_conv.weight"):
        channels = tuple(k.shape(f"body.{i}.out_conv.weight")[0] for i in range(LEVELS))
        inner = tuple(k.shape(f"body.{i}.in_conv.weight")[0] for i in range(LEVELS))
        cin = k.shape("body.0.in_conv.weight")[1]
        return AdapterLight(cin, channels, inner, k.count("body.0.body.{}.block1.weight"))
    cin = k.shape("conv_in.weight")[1]
    blocks = k.count("body.{}.block1.weight")
    if blocks == 0 or blocks % LEVELS:
        raise ModelLoadError(f"{source}: T2I-Adapter has {blocks} residual blocks (expected a multiple of {LEVELS})")
    nums_rb = blocks // LEVELS
    channels = tuple(k.shape(f"body.{i * nums_rb}.block1.weight")[0] for i in range(LEVELS))
    conv_down = any(key.endswith("down_opt.op.weight") for key in k.keys)
    return Adapter(cin, channels, nums_rb, k.shape("body.0.block2.weight")[2], conv_down, xl=cin in (256, 768))


def t2i_adapter_from_state_dict(sd: Mapping, *, source: str = "", device: Any = "cpu",
                                dtype: torch.dtype = torch.float32) -> T2IAdapter:
    tensors = _from_diffusers(sd) if "adapter.body.0.resnets.0.block1.weight" in sd else {k: sd[k] for k in sd}
    with torch.device("meta"):
        module = build_adapter(tensors, source)
    expected = module.state_dict()
    missing = [k for k in expected if k not in tensors]
    bad = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if missing or bad:
        raise ModelLoadError(f"{source}: T2I-Adapter weights do not fit (missing {missing[:3]}, wrong shape {bad[:3]})")
    module.load_state_dict({k: tensors[k].to(device, dtype) for k in expected}, assign=True)
    return T2IAdapter(module.eval().requires_grad_(False), source=source)


# ------------------------------------------------------------------------------------------------ CONTROL_NET object


class T2IAdapter(ControlNet):
    """A T2I-Adapter behind the ControlNet sampler contract (see controlnet.py): same hint, strength, percent window
    and chaining; the features are computed once per hint size and reused at every step."""

    def __init__(self, model: nn.Module, *, source: str = ""):
        super().__init__(model, source=source)
        self._features: dict[str, list] | None = None
        self._features_size: tuple[int, ...] | None = None  # the latent size the cached features belong to

    def copy(self) -> T2IAdapter:
        other = super().copy()
        other._features = other._features_size = None
        return other

    def cleanup(self) -> None:
        self._features = self._features_size = None
        super().cleanup()

    def _adapter_hint(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The hint at 8x the latent size rounded UP to the unshuffle block, greyscale for 1-channel adapters."""
        net = self.control_model
        if self.cond_hint_original is None:
            raise ComfyCoreError("T2I-Adapter used without a hint image (apply it with a ControlNetApply node)")
        u = net.unshuffle_amount
        w = math.ceil(x.shape[3] * COMPRESSION / u) * u
        h = math.ceil(x.shape[2] * COMPRESSION / u) * u
        hint = common_upscale(self.cond_hint_original.float(), w, h, "nearest-exact", "center")
        if net.input_channels == 1 and hint.shape[1] > 1:
            hint = hint.mean(dim=1, keepdim=True)
        return hint.to(x.device, dtype)

    def _residuals(self, x: torch.Tensor, sigma: torch.Tensor, conds: Mapping[str, torch.Tensor],
                   batched: int) -> dict[str, list]:
        net = self.control_model
        size = tuple(x.shape[2:])
        if self._features is None or self._features_size != size:
            dtype = next(net.parameters()).dtype
            with torch.no_grad():
                self._features = net(self._adapter_hint(x, dtype))
            self._features_size = size
        return {key: [None if f is None else _fit_batch(f, x.shape[0], batched) for f in feats]
                for key, feats in self._features.items()}


def _fit_batch(f: torch.Tensor, batch: int, batched_number: int) -> torch.Tensor:
    """Features of the hint batch fitted to the model call's rows (a single hint serves every row)."""
    return f.expand(batch, *f.shape[1:]) if f.shape[0] == 1 else broadcast_hint(f, batch, batched_number)
