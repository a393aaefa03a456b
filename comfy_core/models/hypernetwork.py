"""A1111 hypernetworks (.pt), as ComfyUI's nodes_hypernetwork applies them.

The file maps an attention input width (320, 640, 768, 1024, 1280) to two small MLPs; whatever attention sees inputs
of that width (self-attention of that UNet level, cross-attention on 768-wide text) gets its key and value inputs
changed before the projections:  k += strength·mlp_k(k),  v += strength·mlp_v(v).
It is installed as both an "attn1_patch" and an "attn2_patch" (patch(n, context, value, extra) -> same triple).

MLP layout: the ".weight" keys of each state dict in file order are Linear layers, each followed by the file's
activation (not after the last unless `activate_output`) and, with `is_layer_norm`, by the next ".weight" key as a
LayerNorm. Dropout layers are left out: ComfyUI builds them in training mode (random at inference); in eval they
are the identity, which is their expected value. A file with an activation ComfyUI does not know is logged and
ignored (the model is left unpatched), as ComfyUI does.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelLoadError

log = logging.getLogger(__name__)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "swish": nn.Hardswish,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softsign": nn.Softsign, "mish": nn.Mish,
}


class HypernetworkPatch:
    """The attn1/attn2 patch: per input width, the (key MLP, value MLP) pair."""

    def __init__(self, nets: dict[int, tuple[nn.Module, nn.Module]], strength: float):
        self.nets, self.strength = nets, float(strength)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra: dict[str, Any]):
        pair = self.nets.get(k.shape[-1])
        if pair is None:
            return q, k, v
        net_k, net_v = (net.to(k.device, k.dtype) for net in pair)
        return q, k + net_k(k) * self.strength, v + net_v(v) * self.strength


def _mlp(weights: Mapping[str, torch.Tensor], options: Mapping[str, Any], source: str) -> nn.Sequential:
    activation = ACTIVATIONS[options["activation_func"]]
    names = [key[: -len(".weight")] for key in weights if key.endswith(".weight")]
    layers: list[nn.Module] = []
    i = 0
    while i < len(names):
        weight, bias = weights[f"{names[i]}.weight"], weights.get(f"{names[i]}.bias")
        if weight.ndim != 2 or bias is None:
            raise ModelLoadError(f"{source}: hypernetwork layer {names[i]!r} is not a Linear layer")
        linear = nn.Linear(weight.shape[1], weight.shape[0])
        linear.load_state_dict({"weight": weight, "bias": bias})
        layers.append(linear)
        if options["activation_func"] != "linear" and (i < len(names) - 1 or options["activate_output"]):
            layers.append(activation())
        if options["is_layer_norm"]:
            i += 1
            if i >= len(names):
                raise ModelLoadError(f"{source}: hypernetwork layer norm missing after {names[i - 1]!r}")
            norm = nn.LayerNorm(weights[f"{names[i]}.weight"].shape[0])
            norm.load_state_dict({"weight": weights[f"{names[i]}.weight"], "bias": weights[f"{names[i]}.bias"]})
            layers.append(norm)
        i += 1
    return nn.Sequential(*layers).eval().requires_grad_(False)


def hypernetwork_from_dict(data: Mapping[Any, Any], strength: float,
                           source: str = "hypernetwork") -> HypernetworkPatch | None:
    options = {"activation_func": data.get("activation_func", "linear"),
               "is_layer_norm": bool(data.get("is_layer_norm", False)),
               "activate_output": bool(data.get("activate_output", False))}
    if options["activation_func"] not in ACTIVATIONS:
        log.error("unsupported hypernetwork %s (activation %r); the model is left unpatched", source,
                  options["activation_func"])
        return None
    nets = {}
    for key, value in data.items():
        try:
            width = int(key)
        except (TypeError, ValueError):
            continue  # the option entries ("activation_func", "name", ...)
        if not isinstance(value, (list, tuple)) or len(value) < 2:
            raise ModelLoadError(f"{source}: hypernetwork entry {key!r} is not a (key, value) pair of layers")
        nets[width] = (_mlp(value[0], options, source), _mlp(value[1], options, source))
    if not nets:
        raise ModelLoadError(f"{source}: no hypernetwork layers found")
    return HypernetworkPatch(nets, strength)


def load_hypernetwork(path: str | Path, strength: float) -> HypernetworkPatch | None:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle/zip errors and refused globals all mean "not a hypernetwork file"
        raise ModelLoadError(f"{path}: cannot read as a hypernetwork file: {e}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: expected a dict, found {type(data).__name__}")
    return hypernetwork_from_dict(data, strength, str(path))
