"""Upscale-model files: reading them, detecting the architecture and its size from the keys, and loading.

Key layouts recognised (the same weights under different names, mapped onto esrgan.py's canonical names):
- ESRGAN "old" (the original 2018 repository and most community models): `model.0` first conv,
  `model.1.sub.N.RDBk.convj.0` dense blocks, `model.1.sub.<nb>` trunk conv, `model.3`, `model.6`, ... one conv per ×2
  stage (3 sequential slots each: upsample, conv, activation), then the HR conv and the last conv 2 and 4 slots on.
- BasicSR / Real-ESRGAN: `conv_first`, `body.N.rdbK.convJ`, `conv_body`, `conv_up1..`, `conv_hr`, `conv_last`.
- BSRGAN / older BasicSR: `conv_first`, `RRDB_trunk.N.RDBk.convj`, `trunk_conv`, `upconv1..`, `HRconv`, `conv_last`.
- SRVGGNetCompact: `body.0` conv, `body.1` PReLU, ... , `body.<2n+2>` last conv with out·scale² channels.
- SwinIR: `conv_first`, `layers.i.residual_group.blocks.j.{norm1,attn.qkv,...}`, `conv_after_body`, `upsample.K` /
  `conv_up1..` / `conv_last` by reconstruction kind (upscale_swinir.py).
- SPAN: `conv_1.sk`, `block_N.c1_r.{sk,conv.K,eval_conv}`, `conv_cat`, `conv_2`, `upsampler.0` (upscale_span.py).

.pth/.pt files are unpickled with `torch.load(weights_only=True)` (no code runs); training wrappers (`params_ema`,
`params`, `state_dict`, ...) and a DataParallel `module.` prefix are removed, as spandrel (ComfyUI's loader) does.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError
from .esrgan import CompactConfig, RRDBConfig, RRDBNet, SRVGGNetCompact
from .state_dict import RenamedView, StateDict, TensorDict, materialize, open_state_dict
from .upscale_span import SPAN, SPANConfig, detect_span
from .upscale_swinir import SwinIR, SwinIRConfig, detect_swinir

_WRAPPER_KEYS = ("params_ema", "params-ema", "params", "state_dict", "model", "net")
_KNOWN = ("ESRGAN old (model.0.weight, model.1.sub.0.RDB1.conv1.0.weight), "
          "Real-ESRGAN/BasicSR (conv_first.weight, body.0.rdb1.conv1.weight, conv_body.weight, conv_last.weight), "
          "BSRGAN (conv_first.weight, RRDB_trunk.0.RDB1.conv1.weight, trunk_conv.weight, conv_last.weight), "
          "SRVGGNetCompact (body.0.weight, body.1.weight as PReLU), "
          "SPAN (conv_1.sk.weight, block_1.c1_r.sk.weight, conv_cat.weight, upsampler.0.weight), "
          "SwinIR (conv_first.weight, layers.0.residual_group.blocks.0.norm1.weight, conv_after_body.weight)")
_NETS = {RRDBConfig: RRDBNet, CompactConfig: SRVGGNetCompact, SPANConfig: SPAN, SwinIRConfig: SwinIR}
UpscaleConfig = RRDBConfig | CompactConfig | SPANConfig | SwinIRConfig


@dataclass(frozen=True)
class Detected:
    architecture: str  # "ESRGAN" | "SRVGGNetCompact" | "SPAN" | "SwinIR"
    layout: str  # "esrgan_old" | "basicsr" | "bsrgan" | "compact" | "span" | "span_deployed" | SwinIR's upsampler
    config: UpscaleConfig
    tensors: RenamedView  # the file's tensors under the canonical names


# -- reading ---------------------------------------------------------------------------------------------------------

def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The flat tensor dict inside a training checkpoint's wrappers, without a `module.` prefix."""
    for _ in range(len(_WRAPPER_KEYS)):
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def open_upscaler_file(path: str | Path) -> StateDict:
    """Safetensors lazily; .pth/.pt/.ckpt/.bin through the safe unpickler, unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    if path.suffix.lower() in (".safetensors", ".sft"):
        return open_state_dict(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle, zip and refused-global errors all mean "not a weights file"
        raise ModelLoadError(f"{path}: cannot read as a PyTorch weights file: {e}") from None
    return TensorDict(_unwrap(obj, path), path)


# -- detection -------------------------------------------------------------------------------------------------------

def _block_names(sd: StateDict, pattern: str, template: str) -> tuple[int, dict[str, str]]:
    """(number of RRDB blocks, canonical name -> file key) for the dense-block convs matching `pattern`."""
    rx, names, blocks = re.compile(pattern), {}, set()
    for key in sd:
        m = rx.fullmatch(key)
        if m:
            n, k, j, kind = m.groups()
            blocks.add(int(n))
            names[template.format(n=n, k=k, j=j, kind=kind)] = key
    return (max(blocks) + 1 if blocks else 0), names


def _need(sd: StateDict, keys: tuple[str, ...], what: str) -> None:
    missing = [k for k in keys if k not in sd]
    if missing:
        raise ModelLoadError(f"{what} layout is missing {', '.join(missing)}")


def _rrdb_config(sd: StateDict, names: dict[str, str], nb: int, stages: int) -> RRDBConfig:
    first, last = sd.shape(names["conv_first.weight"]), sd.shape(names["conv_last.weight"])
    growth = sd.shape(names["body.0.rdb1.conv1.weight"])[0]
    in_nc, out_nc = first[1], last[0]
    shuffle = {out_nc * 4: 2, out_nc * 16: 4}.get(in_nc, 1)  # Real-ESRGAN ×2 / ×1: pixel-unshuffled input
    if stages < 1 or 2 ** stages < shuffle:
        raise ModelLoadError(f"RRDBNet with {stages} upsampling stages and a ×{shuffle} unshuffle is not supported")
    return RRDBConfig(in_nc, out_nc, first[0], nb, growth, stages, shuffle)


def _detect_old(sd: StateDict) -> Detected:
    if any(".conv1x1." in k for k in sd):
        raise ModelLoadError("ESRGAN+ models (RRDB blocks with conv1x1 layers) are not supported")
    nb, names = _block_names(sd, r"model\.1\.sub\.(\d+)\.RDB([123])\.conv([1-5])\.0\.(weight|bias)",
                             "body.{n}.rdb{k}.conv{j}.{kind}")
    slots = sorted({int(k.split(".")[1]) for k in sd if re.match(r"model\.\d+\.(weight|bias)$", k)} - {0})
    stages = (slots[-1] - 4) // 3 if slots else 0
    expected = [3 * (i + 1) for i in range(stages)] + [3 * stages + 2, 3 * stages + 4]
    if slots != expected:
        raise ModelLoadError(f"ESRGAN (old layout): unexpected layer slots model.{slots}; expected model.{expected}")
    plain = {"conv_first": "model.0", "conv_body": f"model.1.sub.{nb}", "conv_hr": f"model.{3 * stages + 2}",
             "conv_last": f"model.{3 * stages + 4}", **{f"ups.{i}": f"model.{3 * (i + 1)}" for i in range(stages)}}
    for new, old in plain.items():
        names.update({f"{new}.weight": f"{old}.weight", f"{new}.bias": f"{old}.bias"})
    _need(sd, tuple(names.values()), "ESRGAN (old)")
    return Detected("ESRGAN", "esrgan_old", _rrdb_config(sd, names, nb, stages), RenamedView(sd, names))


def _detect_new(sd: StateDict, layout: str) -> Detected:
    basicsr = layout == "basicsr"
    trunk, rdb, body_conv, up, hr = (("body", "rdb", "conv_body", "conv_up", "conv_hr") if basicsr
                                     else ("RRDB_trunk", "RDB", "trunk_conv", "upconv", "HRconv"))
    nb, names = _block_names(sd, rf"{trunk}\.(\d+)\.{rdb}([123])\.conv([1-5])\.(weight|bias)",
                             "body.{n}.rdb{k}.conv{j}.{kind}")
    stages = len({m.group(1) for k in sd if (m := re.fullmatch(rf"{up}(\d+)\.weight", k))})
    plain = {"conv_first": "conv_first", "conv_body": body_conv, "conv_hr": hr, "conv_last": "conv_last",
             **{f"ups.{i}": f"{up}{i + 1}" for i in range(stages)}}
    for new, old in plain.items():
        names.update({f"{new}.weight": f"{old}.weight", f"{new}.bias": f"{old}.bias"})
    _need(sd, tuple(names.values()), "Real-ESRGAN/BasicSR" if basicsr else "BSRGAN")
    return Detected("ESRGAN", layout, _rrdb_config(sd, names, nb, stages), RenamedView(sd, names))


def _detect_compact(sd: StateDict) -> Detected:
    idx = sorted({int(m.group(1)) for k in sd if (m := re.fullmatch(r"body\.(\d+)\.weight", k))})
    last = idx[-1]
    if last % 2 or last < 2 or len(sd.shape(f"body.{last}.weight")) != 4:
        raise ModelLoadError(f"SRVGGNetCompact: unexpected last layer body.{last}")
    first = sd.shape("body.0.weight")
    in_nc, nf = first[1], first[0]
    scale = math.isqrt(sd.shape(f"body.{last}.weight")[0] // in_nc)
    if scale < 1 or scale * scale * in_nc != sd.shape(f"body.{last}.weight")[0]:
        raise ModelLoadError(f"SRVGGNetCompact: last conv has {sd.shape(f'body.{last}.weight')[0]} channels, not "
                             f"{in_nc}·scale²")
    names = {k: k for k in sd if k.startswith("body.")}
    return Detected("SRVGGNetCompact", "compact", CompactConfig(in_nc, in_nc, nf, (last - 2) // 2, scale),
                    RenamedView(sd, names))


def _detect_span(sd: StateDict) -> Detected:
    config = detect_span(sd)
    names = {k: k for k in sd if k != "no_norm" and (config.deployed or ".eval_conv." not in k)}
    return Detected("SPAN", "span_deployed" if config.deployed else "span", config, RenamedView(sd, names))


def _detect_swinir(sd: StateDict) -> Detected:
    config = detect_swinir(sd)
    names = {k: k for k in sd if not k.endswith((".relative_position_index", ".attn_mask"))}  # recomputed buffers
    return Detected("SwinIR", config.upsampler or "restoration", config, RenamedView(sd, names))


def detect_upscaler(sd: StateDict) -> Detected:
    """The architecture, layout and size of an upscale model's tensors; ModelLoadError when none fits."""
    if "model.0.weight" in sd and "model.1.sub.0.RDB1.conv1.0.weight" in sd:
        return _detect_old(sd)
    if "conv_first.weight" in sd and "body.0.rdb1.conv1.weight" in sd:
        return _detect_new(sd, "basicsr")
    if "conv_first.weight" in sd and "RRDB_trunk.0.RDB1.conv1.weight" in sd:
        return _detect_new(sd, "bsrgan")
    if "body.0.weight" in sd and "body.1.weight" in sd and len(sd.shape("body.1.weight")) == 1:
        return _detect_compact(sd)
    if "layers.0.residual_group.blocks.0.norm1.weight" in sd:
        return _detect_swinir(sd)
    if "conv_1.sk.weight" in sd or "conv_1.eval_conv.weight" in sd:
        return _detect_span(sd)
    sample = ", ".join(list(sd)[:5]) or "no tensors"
    raise ModelLoadError(f"unknown upscale model layout (keys: {sample}); supported: {_KNOWN}")


# -- loading ---------------------------------------------------------------------------------------------------------

class UpscaleModel:
    """What the UPSCALE_MODEL socket carries: the network plus what tiling needs (scale, channels)."""

    def __init__(self, net: nn.Module, found: Detected, source: str):
        self.net, self.architecture, self.layout, self.source = net, found.architecture, found.layout, source
        self.config = found.config
        self.scale = found.config.scale
        self.input_channels = found.config.image_channels
        self.output_channels = found.config.out_nc

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.net.state_dict().values())

    def __repr__(self) -> str:
        return f"UpscaleModel({self.architecture}, {self.layout}, x{self.scale}, {self.config})"


def build_upscaler(found: Detected, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   source: str = "upscale model") -> UpscaleModel:
    net_class = _NETS[type(found.config)]
    net = materialize(lambda: net_class(found.config), found.tensors, dtype=dtype, device=device, source=source, what=found.architecture)
    return UpscaleModel(net, found, source)


def load_upscale_model(path: str | Path, *, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> UpscaleModel:
    """Read, detect and build an upscale model file (float32 by default, as ComfyUI runs them)."""
    sd = open_upscaler_file(path)
    try:
        try:
            found = detect_upscaler(sd)
        except ModelLoadError as e:
            raise ModelLoadError(f"{path}: {e}") from None
        return build_upscaler(found, device=device, dtype=dtype, source=str(path))
    finally:
        sd.close()
