"""LoRA file formats beyond plain low-rank pairs: LyCORIS LoHa / LoKr, DoRA weight decomposition, full-weight diffs,
bias diffs and weight replacement, and the reader that turns a LoRA state dict into per-parameter patch parts.

Every part computes in float32 on the running weight (see lora.py's `apply_chain`), with ComfyUI's formulas:
    LoHa:  W += s·(alpha/r)·((w1a@w1b) ⊙ (w2a@w2b))          (Tucker: each factor rebuilt from t, a, b)
    LoKr:  W += s·(alpha/r)·kron(w1, w2)                        (w1, w2 given or rebuilt as a@b; r from the last b)
    DoRA:  V = W + (alpha/r)·Δ;  V' = V·m/‖V‖ (norm per input channel);  W += s·(V' − W)
    diff:  W += s·D;  set: W = D (strength ignored)
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..errors import ModelLoadError
from .lora import LoraWeights, Rows, WeightDiff

log = logging.getLogger(__name__)


def _check_fits(diff: torch.Tensor, shape: torch.Size, kind: str) -> None:
    if diff.numel() != torch.Size(shape).numel():
        raise ModelLoadError(f"{kind} delta of shape {list(diff.shape)} does not fit a weight of shape {list(shape)}")


def _tucker(t: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """LyCORIS CP rebuild: t [r, r, kh, kw], b [r, in], a [r, out] -> [out, in, kh, kw]."""
    return torch.einsum("i j k l, j r, i p -> p r k l", t.float(), b.float(), a.float()).contiguous()


@dataclass(frozen=True, eq=False)
class LohaWeights:
    """LyCORIS LoHa: the Hadamard product of two low-rank products, scaled by alpha / rank (rank of w1b)."""

    w1a: torch.Tensor
    w1b: torch.Tensor
    w2a: torch.Tensor
    w2b: torch.Tensor
    alpha: float | None = None
    t1: torch.Tensor | None = None
    t2: torch.Tensor | None = None

    def delta(self, shape: torch.Size) -> torch.Tensor:
        scale = self.alpha / self.w1b.shape[0] if self.alpha is not None else 1.0
        if self.t1 is not None and self.t2 is not None:
            m1, m2 = _tucker(self.t1, self.w1b, self.w1a), _tucker(self.t2, self.w2b, self.w2a)
        else:
            m1 = torch.mm(self.w1a.float(), self.w1b.float())
            m2 = torch.mm(self.w2a.float(), self.w2b.float())
        diff = m1 * m2
        _check_fits(diff, shape, "LoHa")
        return scale * diff.reshape(shape)

    def apply(self, target: torch.Tensor, strength: float, name: str) -> None:
        target += strength * self.delta(target.shape).to(target.device)


@dataclass(frozen=True, eq=False)
class LokrWeights:
    """LyCORIS LoKr: kron(w1, w2), each factor stored whole or as a low-rank pair (w2 optionally Tucker)."""

    w1: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    alpha: float | None = None
    w1a: torch.Tensor | None = None
    w1b: torch.Tensor | None = None
    w2a: torch.Tensor | None = None
    w2b: torch.Tensor | None = None
    t2: torch.Tensor | None = None

    def delta(self, shape: torch.Size) -> torch.Tensor:
        rank = None  # the rank of the last factor rebuilt from a pair scales the delta (as ComfyUI)
        if self.w1 is not None:
            w1 = self.w1.float()
        else:
            rank, w1 = self.w1b.shape[0], torch.mm(self.w1a.float(), self.w1b.float())
        if self.w2 is not None:
            w2 = self.w2.float()
        else:
            rank = self.w2b.shape[0]
            w2 = torch.mm(self.w2a.float(), self.w2b.float()) if self.t2 is None else _tucker(self.t2, self.w2b,
                                                                                               self.w2a)
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]  # [o1, i1] -> [o1, i1, 1, 1] so kron scales the conv kernel dims by 1
        scale = self.alpha / rank if self.alpha is not None and rank is not None else 1.0
        diff = torch.kron(w1, w2)
        _check_fits(diff, shape, "LoKr")
        return scale * diff.reshape(shape)

    def apply(self, target: torch.Tensor, strength: float, name: str) -> None:
        target += strength * self.delta(target.shape).to(target.device)


LowRank = LoraWeights | LohaWeights | LokrWeights


@dataclass(frozen=True, eq=False)
class DoraWeights:
    """DoRA (Liu et al. 2024): the adapted weight's per-input-channel norm rescaled to the learned magnitude."""

    inner: LowRank
    scale: torch.Tensor  # dora_scale, broadcastable to [1, in, ...]

    def apply(self, target: torch.Tensor, strength: float, name: str) -> None:
        calc = target + self.inner.delta(target.shape).to(target.device)
        cols = calc.transpose(0, 1).reshape(calc.shape[1], -1)  # [in, out·k…]
        norm = cols.norm(dim=1, keepdim=True).reshape(calc.shape[1], *[1] * (calc.dim() - 1)).transpose(0, 1)
        calc *= self.scale.to(target.device, torch.float32) / norm
        if strength != 1.0:
            target += strength * (calc - target)
        else:
            target.copy_(calc)


@dataclass(frozen=True, eq=False)
class SetWeight:
    """`.set_weight`: replace the weight outright (ComfyUI ignores the strength for these)."""

    value: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.value.shape

    def apply(self, target: torch.Tensor, strength: float, name: str) -> None:
        if tuple(self.value.shape) != tuple(target.shape):
            log.warning("shape mismatch %s: weight not set %s != %s", name, list(self.value.shape), list(target.shape))
            return
        target.copy_(self.value.to(target.device, torch.float32))


Part = LoraWeights | LohaWeights | LokrWeights | DoraWeights | WeightDiff | SetWeight

# ------------------------------------------------------------------------------------------------------------------
# Reading a LoRA file
# ------------------------------------------------------------------------------------------------------------------
_PAIRS = (  # (up, down, mid) suffixes of the low-rank layouts, in ComfyUI's lookup order
    (".lora_up.weight", ".lora_down.weight", ".lora_mid.weight"),
    ("_lora.up.weight", "_lora.down.weight", None),
    (".lora_B.weight", ".lora_A.weight", None),
    (".lora.up.weight", ".lora.down.weight", None),
    (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight", None),
)
_LOHA = (".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b")
_LOKR = (".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2")
_OTHER = (".alpha", ".dora_scale", ".hada_t1", ".hada_t2", ".diff", ".diff_b", ".set_weight", ".w_norm", ".b_norm")
# every suffix that ends a key of a LoRA module: how a key is traced back to its module name
MODULE_SUFFIXES = tuple(s for trio in _PAIRS for s in trio if s) + _LOHA + _LOKR + _OTHER


class _Reader:
    """The tensors of one LoRA module `x`, recording which keys were used."""

    def __init__(self, sd: Mapping[str, torch.Tensor], x: str, used: set[str]) -> None:
        self.sd, self.x, self.used = sd, x, used

    def get(self, suffix: str) -> torch.Tensor | None:
        value = self.sd.get(self.x + suffix)
        if value is not None:
            self.used.add(self.x + suffix)
        return value

    def has(self, suffix: str) -> bool:
        return self.x + suffix in self.sd


def _low_rank(r: _Reader, alpha: float | None) -> LowRank | None:
    """The first adapter found for the module, in ComfyUI's order: LoRA/LoCon, LoHa, LoKr."""
    for up, down, mid in _PAIRS:
        if r.has(up) and r.has(down):
            return LoraWeights(r.get(up), r.get(down), alpha, r.get(mid) if mid else None)
    if r.has(".hada_w1_a"):
        if not all(r.has(s) for s in _LOHA):
            log.error("LoHa module %s lacks one of %s: not loaded", r.x, ", ".join(_LOHA))
            return None
        t1, t2 = (r.get(".hada_t1"), r.get(".hada_t2")) if r.has(".hada_t1") else (None, None)
        w1a, w1b, w2a, w2b = (r.get(s) for s in _LOHA)
        return LohaWeights(w1a, w1b, w2a, w2b, alpha, t1, t2)
    if any(r.has(s) for s in (".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w2_a")):
        if not ((r.has(".lokr_w1") or r.has(".lokr_w1_a") and r.has(".lokr_w1_b"))
                and (r.has(".lokr_w2") or r.has(".lokr_w2_a") and r.has(".lokr_w2_b"))):
            log.error("LoKr module %s lacks lokr_w1 / lokr_w2 or their _a/_b factors: not loaded", r.x)
            return None
        w1, w2, w1a, w1b, w2a, w2b, t2 = (r.get(s) for s in _LOKR)
        return LokrWeights(w1, w2, alpha, w1a, w1b, w2a, w2b, t2)
    return None


def _bias_name(param: str) -> str | None:
    for weight, bias in ((".weight", ".bias"), ("_weight", "_bias")):  # fused OpenCLIP: in_proj_weight/_bias
        if param.endswith(weight):
            return param[: -len(weight)] + bias
    return None


def module_parts(sd: Mapping[str, torch.Tensor], x: str, param: str, used: set[str]) -> list[tuple[str, Part]]:
    """[(parameter, part), ...] for LoRA module `x` aimed at `param`: a low-rank adapter (with DoRA when the file
    has `dora_scale`), then full diffs / replacements, which override it on the same parameter as in ComfyUI."""
    r = _Reader(sd, x, used)
    alpha_t, dora = r.get(".alpha"), r.get(".dora_scale")
    alpha = float(alpha_t.item()) if alpha_t is not None else None
    found: dict[str, Part] = {}
    adapter = _low_rank(r, alpha)
    if adapter is not None:
        found[param] = DoraWeights(adapter, dora) if dora is not None else adapter
    bias = _bias_name(param)
    w_norm, b_norm = r.get(".w_norm"), r.get(".b_norm")
    if w_norm is not None:
        found[param] = WeightDiff(w_norm)
        if b_norm is not None and bias:
            found[bias] = WeightDiff(b_norm)
    for suffix, target, make in ((".diff", param, WeightDiff), (".diff_b", bias, WeightDiff),
                                 (".set_weight", param, SetWeight)):
        value = r.get(suffix)
        if value is not None and target:
            found[target] = make(value)
    return list(found.items())


Target = tuple[str, Rows]


def split_lora(
    lora_sd: Mapping[str, torch.Tensor], targets: Mapping[str, Mapping[str, Target]]
) -> tuple[dict[str, dict[str, tuple[tuple[Part, Rows], ...]]], list[str]]:
    """Split a LoRA file into per-target weight maps; see lora.lora_patches_for."""
    result: dict[str, dict[str, tuple]] = {t: {} for t in targets}
    used: set[str] = set()
    seen: set[str] = set()
    for key in lora_sd:
        for suffix in MODULE_SUFFIXES:
            x = key[: -len(suffix)] if key.endswith(suffix) else None
            if x is None or x in seen:
                continue
            hit = next(((t, m[x]) for t, m in targets.items() if x in m), None)
            if hit is None:
                continue
            seen.add(x)
            target, (param, rows) = hit
            for name, part in module_parts(lora_sd, x, param, used):
                result[target][name] = result[target].get(name, ()) + ((part, rows),)
    unused = [k for k in lora_sd if k not in used]
    for key in unused:
        log.warning("lora key not loaded: %s", key)
    if lora_sd and not any(result.values()):
        log.warning("LoRA has no key for this model: it changes nothing")
    return result, unused
