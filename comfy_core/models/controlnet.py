"""ControlNet (Zhang et al. 2023, "Adding Conditional Control to Text-to-Image Diffusion Models", arXiv:2302.05543)
and Stability's control-LoRA, as ComfyUI's CONTROL_NET objects.

A ControlNet is a trainable copy of the UNet encoder (time_embed, [label_emb], input_blocks, middle_block) plus a hint
encoder (`input_hint_block`: 3x3 convs 16,16,32(s2),32,96(s2),96,256(s2) -> model_channels, SiLU between) whose output
is added after input block 0, one zero-initialised 1x1 conv per input block (`zero_convs.N.0`) and one after the
middle block (`middle_block_out.0`). Its outputs, times `strength`, are added to the UNet's skip connections and
middle-block output.

Sampler contract (what `comfy_core/sampling` calls; ComfyUI's ControlBase API)
------------------------------------------------------------------------------
A conditioning entry's extras carry `"control"`: a `ControlNet` (or `ControlLora`) whose `previous_controlnet` chain
holds the ControlNets applied before it. Per sampling run:

1. `control.pre_run(model, percent_to_sigma)` once before the first step, for every distinct control object found in
   the positive and negative conds (`model` = the DiffusionModel being sampled, `percent_to_sigma` = its
   `model_sampling.percent_to_sigma`). It fixes the sigma window from (start_percent, end_percent) and, for a
   control-LoRA, builds the network from the model's current (LoRA-patched) UNet weights. Without it a plain
   ControlNet falls back to the standard SD noise schedule; a control-LoRA raises.
2. Per model call: `control.get_control(x, sigma, conds, cond_or_uncond)` with x [B,C,h,w] the batched UNet input in
   k-diffusion space (unscaled), sigma [B], conds = {"context": [B,T,D], optional "y": [B,adm],
   optional "crossattn_controlnet"}, cond_or_uncond = the list of 0/1 flags of the rows' conds (only its length is
   used: it tells how the hint batch is broadcast). Returns None (outside every window of the chain) or
   {"input": [], "middle": [1 tensor], "output": [one per input block]} -> pass as `control=` to the UNet, which adds
   "output"[i] to the skip of input block i (popping from the end) and "middle"[0] after the middle block.
   The residuals of the chain are summed element-wise; each ControlNet only contributes while
   sigma_end <= sigma[0] <= sigma_start.
3. `control.cleanup()` after sampling (drops cached hints and a control-LoRA's built network).

`ControlNetApply` (the old node) also sets `control_apply_to_uncond=True` on the entry: ComfyUI then copies the
positive entries' control onto negative entries that have none (its `apply_empty_x_to_equal_area`); the advanced node
sets False and puts its own control on the negative conds.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ComfyCoreError, ModelLoadError
from ..upscale import common_upscale
from .detect import ShapeKeys, encoder_config
from .diffusers_layout import controlnet_from_diffusers, is_diffusers_controlnet
from .model_sampling import ModelSampling
from .state_dict import open_state_dict
from .unet import UNetConfig, UNetModel, timestep_embedding

log = logging.getLogger(__name__)

HINT_WIDTHS = (16, 16, 32, 32, 96, 96, 256)
HINT_STRIDES = (1, 1, 2, 1, 2, 1, 2)
COMPRESSION = 8  # latent pixels -> image pixels


# ------------------------------------------------------------------------------------------------ detection


def find_controlnet_prefix(sd: Mapping[str, Any]) -> str | None:
    """'control_model.' (original .pth layout), '' (repacked safetensors) or None."""
    for prefix in ("control_model.", ""):
        if prefix + "zero_convs.0.0.weight" in sd:
            return prefix
    return None


def detect_controlnet_config(sd: Mapping[str, Any], prefix: str, source: str = "state dict") -> UNetConfig:
    """The UNet-encoder config of a ControlNet from its keys (a ControlNet has no output blocks)."""
    encoder = encoder_config(ShapeKeys(sd, prefix, source), "ControlNet")
    n_out = sum(r + 1 for r in encoder["num_res_blocks"])
    return UNetConfig(out_channels=encoder["in_channels"], transformer_depth_output=(0,) * n_out, **encoder)


# ------------------------------------------------------------------------------------------------ network


def _hint_block(hint_channels: int, model_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = hint_channels
    for width, stride in zip(HINT_WIDTHS, HINT_STRIDES):
        layers += [nn.Conv2d(c_in, width, 3, stride=stride, padding=1), nn.SiLU()]
        c_in = width
    layers.append(nn.Conv2d(c_in, model_channels, 3, padding=1))
    return nn.Sequential(*layers)  # convs at indices 0, 2, ..., 14 as in the checkpoint


class ControlNetModel(nn.Module):
    """forward(x [B,C,h,w] scaled latent, hint [B,hc,8h,8w], timesteps [B], context, y) -> residual lists."""

    def __init__(self, cfg: UNetConfig, hint_channels: int = 3):
        super().__init__()
        self.config, self.hint_channels = cfg, hint_channels
        unet = UNetModel(cfg)  # build under torch.device("meta") to avoid allocating the unused decoder
        self.time_embed, self.input_blocks, self.middle_block = unet.time_embed, unet.input_blocks, unet.middle_block
        if cfg.adm_in_channels is not None:
            self.label_emb = unet.label_emb
        self.input_hint_block = _hint_block(hint_channels, cfg.model_channels)
        chans = self._block_channels()
        self.zero_convs = nn.ModuleList(nn.Sequential(nn.Conv2d(c, c, 1)) for c in chans)
        mid = cfg.model_channels * cfg.channel_mult[-1]
        self.middle_block_out = nn.Sequential(nn.Conv2d(mid, mid, 1))

    def _block_channels(self) -> list[int]:
        cfg, chans = self.config, [self.config.model_channels]
        for level, mult in enumerate(cfg.channel_mult):
            chans += [mult * cfg.model_channels] * cfg.num_res_blocks[level]
            if level != len(cfg.channel_mult) - 1:
                chans.append(mult * cfg.model_channels)
        return chans

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None, backend: str | None = None) -> dict[str, list[torch.Tensor]]:
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(x.dtype))
        if self.config.adm_in_channels is not None:
            if y is None:
                raise ComfyCoreError("this ControlNet needs the ADM vector y (an SDXL-type model's conds)")
            emb = emb + self.label_emb(y.to(x.dtype))
        guided_hint = self.input_hint_block(hint)  # [B, mc, h, w]
        outputs, h = [], x
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context, backend)
            if i == 0:
                h = h + guided_hint
            outputs.append(zero_conv(h))
        h = self.middle_block(h, emb, context, backend)
        return {"middle": [self.middle_block_out(h)], "output": outputs}


def build_controlnet_model(sd: Mapping[str, torch.Tensor], prefix: str, *, source: str,
                           device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> ControlNetModel:
    """A ControlNetModel with every weight from `sd` (under `prefix`); missing or extra tensors are an error."""
    cfg = detect_controlnet_config(sd, prefix, source)
    hint_channels = ShapeKeys(sd, prefix, source).shape("input_hint_block.0.weight")[1]
    with torch.device("meta"):
        model = ControlNetModel(cfg, hint_channels)
    expected = model.state_dict().keys()
    missing = [k for k in expected if prefix + k not in sd]
    if missing:
        raise ModelLoadError(f"{source}: ControlNet weights incomplete ({len(missing)} missing, e.g. {missing[:3]})")
    model.load_state_dict({k: sd[prefix + k].to(device, dtype) for k in expected}, assign=True)
    return model.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------ CONTROL_NET objects


def broadcast_hint(hint: torch.Tensor, batch: int, batched_number: int) -> torch.Tensor:
    """Fit the hint batch to a model call of `batch` rows made of `batched_number` equal cond/uncond groups."""
    if hint.shape[0] == 1:
        return hint
    per_group = batch // batched_number
    hint = hint[:per_group]
    if per_group > hint.shape[0]:
        reps = per_group // hint.shape[0]
        hint = torch.cat([hint] * reps + [hint[:per_group % hint.shape[0]]], dim=0)
    return hint if hint.shape[0] == batch else torch.cat([hint] * batched_number, dim=0)


def merge_control(control: dict[str, list], previous: dict[str, list] | None, strength: float,
                  global_average_pooling: bool = False) -> dict[str, list]:
    """Scale this ControlNet's residuals by `strength` and add the previous ControlNets' residuals slot by slot."""
    out: dict[str, list] = {"input": [], "middle": [], "output": []}
    for key, residuals in control.items():
        for r in residuals:
            if r is not None:
                if global_average_pooling:
                    r = r.mean(dim=(2, 3), keepdim=True).expand_as(r)
                r = r * strength
            out[key].append(r)
    for key in ("input", "middle", "output") if previous else ():
        mine = out[key]
        for i, prev in enumerate(previous[key]):
            if i >= len(mine):
                mine.append(prev)
            elif prev is not None:
                mine[i] = prev if mine[i] is None else prev + mine[i]
    return out


class ControlNet:
    """A loaded ControlNet plus, once applied, its hint, strength, percent window and the ControlNets before it."""

    def __init__(self, model: ControlNetModel | None, *, global_average_pooling: bool = False,
                 source: str = ""):
        self.control_model = model
        self.global_average_pooling = global_average_pooling
        self.source = source
        self.cond_hint_original: torch.Tensor | None = None  # [B, C, H, W] 0..1
        self.strength = 1.0
        self.timestep_percent_range = (0.0, 1.0)
        self.previous_controlnet: ControlNet | None = None
        self.vae = None
        self._sigma_range: tuple[float, float] | None = None
        self._model_sampling: ModelSampling | None = None
        self._hint: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, strength={self.strength})"

    def memory_bytes(self) -> int:
        net = self.control_model
        return sum(p.numel() * p.element_size() for p in net.parameters()) if net is not None else 0

    # -- node-side API --------------------------------------------------------------------------------------------
    def copy(self) -> "ControlNet":
        """A new object sharing the network (as ControlNet.copy in ComfyUI: applying never changes the loaded one)."""
        other = copy.copy(self)
        other._hint, other._sigma_range, other.previous_controlnet = None, None, None
        return other

    def set_cond_hint(self, hint: torch.Tensor, strength: float = 1.0,
                      percent_range: tuple[float, float] = (0.0, 1.0), vae: Any = None) -> "ControlNet":
        """hint [B, C, H, W] in 0..1 (the IMAGE moved to channels-first)."""
        self.cond_hint_original, self.strength = hint, float(strength)
        self.timestep_percent_range, self.vae = (float(percent_range[0]), float(percent_range[1])), vae
        return self

    def set_previous_controlnet(self, previous: "ControlNet | None") -> "ControlNet":
        self.previous_controlnet = previous
        return self

    # -- sampler-side API -----------------------------------------------------------------------------------------
    def pre_run(self, model: Any, percent_to_sigma: Callable[[float], float] | None = None) -> None:
        ms = getattr(model, "model_sampling", None) or ModelSampling("eps")
        percent_to_sigma = percent_to_sigma or ms.percent_to_sigma
        self._model_sampling = ms
        start, end = self.timestep_percent_range
        self._sigma_range = (percent_to_sigma(start), percent_to_sigma(end))
        if self.previous_controlnet is not None:
            self.previous_controlnet.pre_run(model, percent_to_sigma)

    def cleanup(self) -> None:
        self._hint = None
        if self.previous_controlnet is not None:
            self.previous_controlnet.cleanup()

    def _network(self) -> ControlNetModel:
        assert self.control_model is not None
        return self.control_model

    def _active(self, sigma: torch.Tensor) -> bool:
        if self._sigma_range is None:
            self.pre_run(None)
        start, end = self._sigma_range
        s = float(sigma.reshape(-1)[0])
        return not (s > start or s < end)

    def _hint_for(self, x: torch.Tensor, batched_number: int, dtype: torch.dtype) -> torch.Tensor:
        """The hint resized (nearest-exact, centre crop) to 8x the latent, cached while the latent size holds."""
        h, w = x.shape[2] * COMPRESSION, x.shape[3] * COMPRESSION
        if self._hint is None or tuple(self._hint.shape[2:]) != (h, w):
            if self.cond_hint_original is None:
                raise ComfyCoreError("ControlNet used without a hint image (apply it with a ControlNetApply node)")
            hint = common_upscale(self.cond_hint_original.float(), w, h, "nearest-exact", "center")
            self._hint = hint.to(x.device, dtype)
        return broadcast_hint(self._hint, x.shape[0], batched_number)

    def get_control(self, x: torch.Tensor, sigma: torch.Tensor, conds: Mapping[str, torch.Tensor],
                    cond_or_uncond: list[int] | int) -> dict[str, list] | None:
        previous = None
        if self.previous_controlnet is not None:
            previous = self.previous_controlnet.get_control(x, sigma, conds, cond_or_uncond)
        if not self._active(sigma):
            return previous
        batched = cond_or_uncond if isinstance(cond_or_uncond, int) else len(cond_or_uncond)
        control = self._residuals(x, sigma, conds, batched)
        return merge_control(control, previous, self.strength, self.global_average_pooling)

    def _residuals(self, x: torch.Tensor, sigma: torch.Tensor, conds: Mapping[str, torch.Tensor],
                   batched: int) -> dict[str, list]:
        """This control's own residuals (unscaled) for one model call."""
        net = self._network()
        dtype = next(net.parameters()).dtype
        hint = self._hint_for(x, batched, dtype)
        ms = self._model_sampling
        context = conds.get("crossattn_controlnet", conds.get("context", conds.get("c_crossattn")))
        y = conds.get("y")
        with torch.no_grad():
            return net(ms.calculate_input(sigma, x).to(dtype), hint, ms.timestep(sigma).to(dtype),
                       context.to(x.device, dtype), y.to(x.device, dtype) if y is not None else None)


# ------------------------------------------------------------------------------------------------ control-LoRA


class ControlLora(ControlNet):
    """Stability's control-LoRA: a ControlNet stored as low-rank deltas against the UNet it is used with.

    At `pre_run` the network is built from the sampled model's config and current UNet weights; every file tensor
    with `.up`/`.down` gives W = W_unet + (up.flatten(1) @ down.flatten(1)).reshape(W.shape) (no scale), every other
    file tensor (biases, norms, hint block, zero convs, middle_block_out) is used as it is.
    """

    def __init__(self, lora_sd: Mapping[str, torch.Tensor], *, source: str = ""):
        super().__init__(None, source=source)
        self.lora_sd = dict(lora_sd)
        self._built: ControlNetModel | None = None

    def copy(self) -> "ControlLora":
        other = super().copy()
        other._built = None
        return other

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.lora_sd.values())

    def pre_run(self, model: Any, percent_to_sigma: Callable[[float], float] | None = None) -> None:
        super().pre_run(model, percent_to_sigma)
        if model is None or not hasattr(model, "patched_unet"):
            return
        self._built = build_control_lora(self.lora_sd, model, source=self.source)

    def cleanup(self) -> None:
        self._built = None
        super().cleanup()

    def _network(self) -> ControlNetModel:
        if self._built is None:
            raise ComfyCoreError(f"control-LoRA {self.source!r} has no network: the sampler must call "
                                 "pre_run(model) before sampling")
        return self._built


def control_lora_weights(lora_sd: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor],
                         expected: Mapping[str, torch.Size], source: str = "") -> dict[str, torch.Tensor]:
    """Effective ControlNet weights: base UNet tensors, replaced by full file tensors, plus up @ down deltas."""
    out = {k: base[k] for k in expected if k in base}
    for key, value in lora_sd.items():
        if key == "lora_controlnet" or "__" in key:
            continue
        if key.endswith((".up", ".down")):
            continue
        if key in expected:
            out[key] = value
    for key in lora_sd:
        if not key.endswith(".up"):
            continue
        name = key[: -len(".up")] + ".weight"
        if name not in out:
            raise ModelLoadError(f"{source}: control-LoRA delta {key!r} has no base weight {name!r}")
        up, down = lora_sd[key], lora_sd[key[: -len(".up")] + ".down"]
        w = out[name].float()
        out[name] = w + (up.flatten(1).float() @ down.flatten(1).float()).reshape(w.shape)
    missing = [k for k in expected if k not in out]
    if missing:
        raise ModelLoadError(f"{source}: control-LoRA leaves {len(missing)} ControlNet tensors unset, "
                             f"e.g. {missing[:3]} (is it meant for this model?)")
    return out


def build_control_lora(lora_sd: Mapping[str, torch.Tensor], model: Any, source: str = "") -> ControlNetModel:
    """Build the ControlNet of a control-LoRA for `model` (a DiffusionModel; LoRA patches of the model included)."""
    cfg: UNetConfig = model.spec.unet
    if "input_hint_block.0.weight" not in lora_sd:
        raise ModelLoadError(f"{source}: control-LoRA without input_hint_block.0.weight")
    hint_channels = lora_sd["input_hint_block.0.weight"].shape[1]
    with torch.device("meta"):
        net = ControlNetModel(cfg, hint_channels)
    expected = {k: v.shape for k, v in net.state_dict().items()}
    with model.patched_unet() as unet:
        base = {k: v.detach() for k, v in unet.state_dict().items() if k in expected}
        weights = control_lora_weights(lora_sd, base, expected, source)
        dtype, device = model.dtype, model.device
        net.load_state_dict({k: v.to(device, dtype, copy=True) for k, v in weights.items()}, assign=True)
    return net.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------ loading


def add_difference(sd: dict[str, torch.Tensor], prefix: str, model: Any, source: str) -> None:
    """A 'difference' ControlNet stores W_control - W_unet: add the model's UNet weights back (in place)."""
    if model is None:
        log.warning("%s is a difference ControlNet but no model was given; it will not work as intended", source)
        return
    with model.patched_unet() as unet:
        base = unet.state_dict()
        for key in list(sd):
            if key.startswith(prefix) and key[len(prefix):] in base:
                name = key[len(prefix):]
                sd[key] = sd[key].float() + base[name].float().to(sd[key].device)


def controlnet_from_state_dict(sd: Mapping[str, torch.Tensor], *, source: str = "", model: Any = None,
                               device: torch.device | str = "cpu",
                               dtype: torch.dtype = torch.float32) -> ControlNet:
    """Detect the file format and build a CONTROL_NET object (ControlNet or ControlLora)."""
    if "lora_controlnet" in sd:
        return ControlLora({k: sd[k] for k in sd}, source=source)
    prefix = find_controlnet_prefix(sd)
    if prefix is None and is_diffusers_controlnet(sd):
        sd, prefix = controlnet_from_diffusers(sd, source), ""
    if prefix is None:
        from .t2i_adapter import (  # imports this module
            is_t2i_adapter,
            t2i_adapter_from_state_dict,
        )

        if is_t2i_adapter(sd):
            return t2i_adapter_from_state_dict(sd, source=source, device=device, dtype=dtype)
        raise ModelLoadError(f"{source}: not a ControlNet or T2I-Adapter (no zero_convs.0.0.weight, control_model.*, "
                             "lora_controlnet, conv_in + body.* or adapter.* keys)")
    tensors = {k: sd[k] for k in sd if k.startswith(prefix) or k == "difference"}
    if "difference" in tensors:
        add_difference(tensors, prefix, model, source)
    net = build_controlnet_model(tensors, prefix, source=source, device=device, dtype=dtype)
    gap = Path(source).stem.endswith(("_shuffle", "_shuffle_fp16"))  # control_v11e_sd15_shuffle
    return ControlNet(net, global_average_pooling=gap, source=source)


def load_controlnet(path: str | Path, *, model: Any = None, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> ControlNet:
    """Load a ControlNet / control-LoRA file. `model` is needed for difference ControlNets (DiffControlNetLoader)."""
    sd = open_state_dict(path)
    try:
        return controlnet_from_state_dict(sd, source=str(path), model=model, device=device, dtype=dtype)
    finally:
        sd.close()
