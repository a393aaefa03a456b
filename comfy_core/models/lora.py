"""Weight patches on shared modules: LoRA / LoCon deltas (Hu et al. 2021) in kohya-ss and related key layouts,
merges with another model's weights, differences and scales (ComfyUI's model_patcher "diff" patches).

Strategy (no copies of the base model): a MODEL or CLIP carries an immutable tuple of `LoraPatch`es; the shared,
cached nn.Module carries a `PatchState`. Before a forward pass the owner calls `PatchState.ensure(module, patches)`:
if the module currently holds a different patch set, the touched weights are restored from exact backups and the new
set is applied in place. Each touched weight is computed once in float32 from its original value, every patch in
order, then cast back, as ComfyUI does:
    LoRA:  W += strength·(alpha/rank)·up@down
    diff:  W = W·strength_model + strength·D      (D: a tensor, or another module's weight with that owner's patches)
    LoHa / LoKr / DoRA / set_weight: see lora_formats.py, which also reads LoRA files in their many key layouts.
The cached base weights are therefore never corrupted: whoever uses the module next with other (or no) patches gets
the exact original values back. Patching happens once per patch-set switch, not per step.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..errors import ModelLoadError
from .unet import UNetConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class LoraWeights:
    """One low-rank module: delta = (alpha/rank) · up @ [mid] @ down, reshaped to the target weight."""

    up: torch.Tensor  # [out, r] or [out, r, 1, 1]
    down: torch.Tensor  # [r, in] or [r, in, kh, kw]
    alpha: float | None = None
    mid: torch.Tensor | None = None  # LoCon Tucker core [r, r, kh, kw]

    def delta(self, shape: torch.Size) -> torch.Tensor:
        """float32 delta with the target's shape."""
        up, down = self.up.float(), self.down.float()
        rank = down.shape[0]
        scale = (self.alpha / rank) if self.alpha is not None else 1.0
        if self.mid is not None:  # Tucker: down' = (down^T @ mid^T)^T with the kernel from mid
            mid = self.mid.float()
            final = [down.shape[1], down.shape[0], mid.shape[2], mid.shape[3]]
            down = torch.mm(down.transpose(0, 1).flatten(1), mid.transpose(0, 1).flatten(1)).reshape(final).transpose(0, 1)
        diff = torch.mm(up.flatten(1), down.flatten(1))
        if diff.numel() != torch.Size(shape).numel():
            raise ModelLoadError(f"LoRA shapes up {list(self.up.shape)} / down {list(self.down.shape)} do not fit a "
                                 f"weight of shape {list(shape)}")
        return scale * diff.reshape(shape)

    def apply(self, target: torch.Tensor, strength: float, name: str) -> None:
        target += strength * self.delta(target.shape).to(target.device)


@dataclass(frozen=True, eq=False)
class ModelWeight:
    """Another module's parameter as its owner sees it: the original value with the owner's patches applied.

    The merge source of ComfyUI's `get_key_patches`: read lazily (float32, on the device of the weight it patches)
    from the owner's exact originals, so it is right whatever patch set the owner's shared module holds right now.
    """

    module: torch.nn.Module
    name: str
    patches: tuple = ()

    @property
    def shape(self) -> torch.Size:
        return self.module.get_parameter(self.name).shape

    def value(self, device: torch.device) -> torch.Tensor:
        state = PatchState.of(self.module)
        with state.lock, torch.no_grad():
            base = state.backups.get(self.name)
            if base is None:
                base = self.module.get_parameter(self.name)
            out = base.detach().to(device=device, dtype=torch.float32, copy=True)
        return apply_chain(out, self.patches, self.name)


@dataclass(frozen=True, eq=False)
class WeightDiff:
    """ComfyUI's "diff" patch on one weight: W = W·strength_model + strength·source (source None: a pure scale)."""

    source: torch.Tensor | ModelWeight | None
    strength_model: float = 1.0

    def apply(self, target: torch.Tensor, strength: float, name: str) -> None:
        if self.strength_model != 1.0:
            target *= self.strength_model
        if strength == 0.0 or self.source is None:
            return
        if tuple(self.source.shape) != tuple(target.shape):
            log.warning("shape mismatch %s: weight not merged %s != %s", name, list(self.source.shape),
                        list(target.shape))
            return
        src = self.source
        value = src.value(target.device) if isinstance(src, ModelWeight) else src.to(target.device, torch.float32)
        target += strength * value


Rows = tuple[int, int] | None  # a row range of the target (q/k/v inside a fused OpenCLIP in_proj_weight)
Part = LoraWeights | WeightDiff  # and lora_formats' LoHa / LoKr / DoRA / SetWeight: anything with `apply`


@dataclass(frozen=True)
class LoraPatch:
    """A set of weight patches for one module (the UNet, or one text encoder by role), with one strength.

    `weights`: parameter name -> ((part, rows), ...), a part being anything with `apply(target, strength, name)`
    (LoraWeights, WeightDiff, lora_formats' adapters); rows=None patches the whole tensor.
    `uid` makes every patch object its own cache identity (its contents never change after creation).
    """

    weights: Mapping[str, tuple[tuple[Part, Rows], ...]]
    strength: float
    name: str = ""
    target: str = "unet"  # "unet" or a text-encoder role ("l", "g", "h")
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)

    def key(self) -> tuple[str, float]:
        return (self.uid, self.strength)


WeightPatch = LoraPatch  # the general name; LoraPatch stays for existing callers


def apply_chain(weight: torch.Tensor, patches: Iterable[LoraPatch], name: str) -> torch.Tensor:
    """Apply, in order, every patch's parts for parameter `name` to `weight` (float32, modified in place)."""
    for patch in patches:
        for part, rows in patch.weights.get(name, ()):
            target = weight if rows is None else weight[rows[0]:rows[1]]
            part.apply(target, patch.strength, name)
    return weight


class PatchState:
    """What patch set a shared module currently holds, with exact backups of the weights it changed."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.applied: tuple = ()
        self.backups: dict[str, torch.Tensor] = {}

    @staticmethod
    def of(module: torch.nn.Module) -> PatchState:
        state = module.__dict__.get("_comfy_patch_state")
        if state is None:
            state = module.__dict__.setdefault("_comfy_patch_state", PatchState())
        return state

    def ensure(self, module: torch.nn.Module, patches: tuple[LoraPatch, ...]) -> None:
        """Make `module` hold exactly `patches` (restore first if it holds others). Call with `lock` held."""
        key = tuple(p.key() for p in patches)
        if key == self.applied:
            return
        self.restore(module)
        names = dict.fromkeys(n for patch in patches for n in patch.weights)  # first-touch order, no repeats
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name in names:
                p = params.get(name)
                if p is None:
                    continue
                self.backups[name] = p.detach().clone()
                new = apply_chain(p.detach().to(torch.float32, copy=True), patches, name)
                p.copy_(new.to(p.dtype))
        self.applied = key

    def restore(self, module: torch.nn.Module) -> None:
        if not self.backups:
            self.applied = ()
            return
        params = dict(module.named_parameters())
        with torch.no_grad():
            for name, saved in self.backups.items():
                params[name].copy_(saved)
        self.backups.clear()
        self.applied = ()


@contextmanager
def patched(module: torch.nn.Module, patches: tuple[LoraPatch, ...], *, restore_after: bool = False
            ) -> Iterator[torch.nn.Module]:
    """Hold the module's lock with `patches` applied (the usual wrapper around a forward pass).

    With `restore_after` the original weights are back when the block ends (for modules that other code may run
    without going through `patched`, like the text encoders); otherwise they stay patched until someone needs
    different patches, so a sampler patches once per run, not once per step.
    """
    state = PatchState.of(module)
    with state.lock:
        state.ensure(module, patches)
        try:
            yield module
        finally:
            if restore_after and patches:
                state.restore(module)


# ------------------------------------------------------------------------------------------------------------------
# Key mapping: LoRA module names -> parameter names of our modules
# ------------------------------------------------------------------------------------------------------------------
_RESNET_MAP = {
    "norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection",
}


def unet_diffusers_map(cfg: UNetConfig) -> dict[str, str]:
    """diffusers UNet2DConditionModel module path -> LDM module path, for any level/depth layout (SD1, SD2, SDXL)."""
    out: dict[str, str] = {}
    levels = len(cfg.channel_mult)
    n = 1
    for i in range(levels):
        for j in range(cfg.num_res_blocks[i]):
            _block(out, f"down_blocks.{i}.resnets.{j}", f"input_blocks.{n}.0", f"down_blocks.{i}.attentions.{j}",
                   f"input_blocks.{n}.1")
            n += 1
        if i != levels - 1:
            out[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{n}.0.op"
            n += 1
    for j in range(2):
        _block(out, f"mid_block.resnets.{j}", f"middle_block.{2 * j}", "", "")
    out["mid_block.attentions.0"] = "middle_block.1"
    n = 0
    for i in range(levels):
        level = levels - 1 - i
        for j in range(cfg.num_res_blocks[level] + 1):
            has_attn = cfg.transformer_depth_output[n] > 0
            _block(out, f"up_blocks.{i}.resnets.{j}", f"output_blocks.{n}.0", f"up_blocks.{i}.attentions.{j}",
                   f"output_blocks.{n}.1")
            if level != 0 and j == cfg.num_res_blocks[level]:
                out[f"up_blocks.{i}.upsamplers.0.conv"] = f"output_blocks.{n}.{2 if has_attn else 1}.conv"
            n += 1
    return out


def _block(out: dict[str, str], d_res: str, ldm_res: str, d_attn: str, ldm_attn: str) -> None:
    for d, l in _RESNET_MAP.items():
        out[f"{d_res}.{d}"] = f"{ldm_res}.{l}"
    if d_attn:
        out[d_attn] = ldm_attn


def unet_diffusers_params(cfg: UNetConfig, param_names: Iterable[str]) -> dict[str, str]:
    """diffusers module path (`down_blocks.0.attentions.0.proj_in`) -> UNet weight parameter name.

    Inside attention blocks (Transformer2DModel) diffusers and LDM sub-paths are identical (proj_in,
    transformer_blocks.0.attn1.to_q, ...), so only the block prefix is translated.
    """
    names = [p for p in param_names if p.endswith(".weight")]
    name_set = set(names)
    out: dict[str, str] = {}
    for d, ldm in unet_diffusers_map(cfg).items():
        if ldm + ".weight" in name_set:
            out[d] = ldm + ".weight"
        elif ".attentions." in d:
            for p in names:
                if p.startswith(ldm + "."):
                    out[d + p[len(ldm): -len(".weight")]] = p
    return out


def _kohya_names(names: Iterable[str], diffusers: Mapping[str, str]) -> dict[str, str]:
    result = {p[: -len(".weight")].replace(".", "_"): p for p in names if p.endswith(".weight")}  # LDM paths
    result.update((d.replace(".", "_"), p) for d, p in diffusers.items())
    return result


def unet_lora_names(cfg: UNetConfig, param_names: Iterable[str]) -> dict[str, str]:
    """kohya name (without `lora_unet_`) -> UNet weight parameter name, both diffusers-style and LDM-style names."""
    names = list(param_names)
    return _kohya_names(names, unet_diffusers_params(cfg, names))


Target = tuple[str, Rows]  # (parameter name, row range or None)


def lora_patches_for(
    lora_sd: Mapping[str, torch.Tensor], targets: Mapping[str, Mapping[str, Target]]
) -> tuple[dict[str, dict[str, tuple[tuple[Part, Rows], ...]]], list[str]]:
    """Split a LoRA file (LoRA / LoCon / LoHa / LoKr / DoRA / diff / set_weight, see lora_formats) into per-target
    weight maps.

    `targets`: target id ("unet", "l", "g", ...) -> {LoRA module name -> (parameter name, rows)}. Returns
    ({target id -> {parameter name -> ((part, rows), ...)}}, keys of the file nothing used, each logged as ComfyUI
    does: "lora key not loaded: <key>").
    """
    from .lora_formats import (
        split_lora,  # lora_formats builds on this module's patch types
    )

    return split_lora(lora_sd, targets)


def unet_targets(cfg: UNetConfig, param_names: Iterable[str]) -> dict[str, Target]:
    """LoRA module name -> (UNet parameter, None), for the names LoRA trainers use (ComfyUI's
    model_lora_keys_unet): kohya `lora_unet_` + LDM or diffusers path, SimpleTuner `lycoris_` + diffusers path,
    diffusers attention-processor paths (`[unet.]…attn1.processor.to_q`, `…processor.to_out`), plain diffusers /
    PEFT module paths with or without `unet.`, and plain LDM paths (`diffusion_model.…`, biases included)."""
    names = list(param_names)
    diffusers = unet_diffusers_params(cfg, names)
    mapping: dict[str, Target] = {f"lora_unet_{k}": (v, None) for k, v in _kohya_names(names, diffusers).items()}
    for d, p in diffusers.items():
        mapping[f"lycoris_{d.replace('.', '_')}"] = (p, None)
        proc = d.replace(".to_", ".processor.to_")
        proc = proc[: -len(".0")] if proc.endswith(".to_out.0") else proc
        for prefix in ("", "unet."):
            mapping[prefix + proc] = (p, None)
            mapping.setdefault(prefix + d, (p, None))
    for p in names:  # plain LDM paths, as some trainers write them
        stem = p.removesuffix(".weight")  # a bias keeps its full name, as in ComfyUI
        mapping[f"diffusion_model.{stem}"] = (p, None)
        if p.endswith(".weight"):
            mapping[f"model.diffusion_model.{stem}"] = (p, None)
    return mapping


_HF_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2")
# kohya name prefixes per (CLIP family, encoder role)
KOHYA_TE_PREFIXES = {("sd1", "l"): ("lora_te_", "lora_te1_"), ("sd2", "h"): ("lora_te_", "lora_te1_"),
                     ("sdxl", "l"): ("lora_te_", "lora_te1_"), ("sdxl", "g"): ("lora_te2_",),
                     ("sdxl_refiner", "g"): ("lora_te_", "lora_te2_")}
# diffusers / PEFT text-encoder prefixes (`text_encoder.text_model.encoder.layers.N.self_attn.q_proj`)
DIFFUSERS_TE_PREFIXES = {("sdxl", "g"): ("text_encoder_2.",)}  # every other encoder: "text_encoder."


def text_encoder_targets(prefixes: Iterable[str], module: torch.nn.Module, dotted: Iterable[str] = ()
                         ) -> dict[str, Target]:
    """kohya `lora_te*_text_model_encoder_layers_N_<linear>` (and, for each `dotted` prefix,
    `<prefix>text_model.encoder.layers.N.<linear>`) -> (parameter, rows) of a text encoder module.

    HF layout (`text_model.encoder.layers.N.self_attn.q_proj.weight`) maps one to one; the OpenCLIP layout maps
    q/k/v onto row thirds of the fused `transformer.resblocks.N.attn.in_proj_weight`, out_proj/fc1/fc2 onto
    attn.out_proj / mlp.c_fc / mlp.c_proj.
    """
    params = dict(module.named_parameters())
    mapping: dict[str, Target] = {}
    layer = 0
    while True:
        hf = f"text_model.encoder.layers.{layer}."
        oc = f"transformer.resblocks.{layer}."
        if hf + "self_attn.q_proj.weight" in params:
            found = {lin: (hf + lin + ".weight", None) for lin in _HF_LINEARS}
        elif oc + "attn.in_proj_weight" in params:
            w = params[oc + "attn.in_proj_weight"].shape[0] // 3
            found = {"self_attn.q_proj": (oc + "attn.in_proj_weight", (0, w)),
                     "self_attn.k_proj": (oc + "attn.in_proj_weight", (w, 2 * w)),
                     "self_attn.v_proj": (oc + "attn.in_proj_weight", (2 * w, 3 * w)),
                     "self_attn.out_proj": (oc + "attn.out_proj.weight", None),
                     "mlp.fc1": (oc + "mlp.c_fc.weight", None), "mlp.fc2": (oc + "mlp.c_proj.weight", None)}
        else:
            break
        for lin, target in found.items():
            for prefix in prefixes:
                mapping[f"{prefix}text_model_encoder_layers_{layer}_{lin.replace('.', '_')}"] = target
            for prefix in dotted:
                mapping[f"{prefix}text_model.encoder.layers.{layer}.{lin}"] = target
        layer += 1
    return mapping


def clip_lora_targets(clip) -> dict[str, dict[str, Target]]:
    """role -> LoRA name map for every text encoder of a CLIP object (text_encoders.CLIP)."""
    return {role: text_encoder_targets(
                KOHYA_TE_PREFIXES.get((clip.family, role), ("lora_te_",)), module,
                DIFFUSERS_TE_PREFIXES.get((clip.family, role), ("text_encoder.",))
                + (f"text_encoders.clip_{role}.transformer.",))  # ComfyUI's generic names
            for role, module in clip.modules().items()}


@contextmanager
def clip_patched(clip) -> Iterator[None]:
    """Hold every text encoder of `clip` locked with the CLIP's patches (by role) applied, restored afterwards
    (plain CLIP objects sharing the modules encode without going through here)."""
    with contextlib.ExitStack() as stack:
        for role, module in clip.modules().items():
            mine = tuple(p for p in getattr(clip, "patches", ()) if p.target == role)
            stack.enter_context(patched(module, mine, restore_after=True))
        yield
