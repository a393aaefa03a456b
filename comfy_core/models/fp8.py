"""fp8 weight storage: weights stay float8 in memory and are cast per layer to the compute dtype when used.

ComfyUI's "manual cast" for `weight_dtype` fp8_e4m3fn / fp8_e5m2 (and checkpoints stored as float8): every weight of
the diffusion model (Linear, Conv2d, GroupNorm, LayerNorm, biases included) is held in fp8, half the bytes of fp16,
and each layer casts its own weight to the activation dtype right before its op, so only one layer's weights ever
exist at full width.

`cast_on_forward(module, compute_dtype)` converts a built network in place: each module's class is swapped for a
subclass whose `weight`/`bias` attributes read as compute-dtype casts of the stored fp8 parameters. Parameters,
state-dict keys and `named_parameters()` are untouched (still fp8), so saving, LoRA patching (float32 math, stored
back into fp8 with round-to-nearest; no stochastic rounding) and code that reads `layer.weight` directly keep working.

`fp8_e4m3fn_fast` additionally runs eligible Linear layers as fp8 x fp8 matmuls (`torch._scaled_mm`, scale 1, the
input clamped to e4m3fn's ±448 range) on CUDA devices of compute capability 8.9+; the choice is made per layer when
the model is converted (device, dtype and shapes), never by trying a kernel. Elsewhere `_fast` is the plain cast.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import ModelLoadError
from .conv import Conv2d, conv2d_gemm, conv_out_hw, gemm_pays

log = logging.getLogger(__name__)

FP8_WEIGHT_DTYPES: dict[str, torch.dtype] = {
    "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2,
}
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
E4M3_MAX = 448.0  # largest finite float8_e4m3fn


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_DTYPES


def storage_dtype(weight_dtype: str) -> torch.dtype | None:
    """UNETLoader's weight_dtype choice -> fp8 storage dtype (None for "default": the engine dtype)."""
    if weight_dtype == "default":
        return None
    if weight_dtype not in FP8_WEIGHT_DTYPES:
        raise ModelLoadError(f"unknown weight_dtype {weight_dtype!r}; expected default or one of "
                             f"{', '.join(FP8_WEIGHT_DTYPES)}")
    return FP8_WEIGHT_DTYPES[weight_dtype]


def stored_fp8_dtype(sd, keys) -> torch.dtype | None:
    """The fp8 dtype most of `keys` (the UNet's weights in a file) are stored in, or None when they are not fp8."""
    counts: dict[torch.dtype, int] = {}
    for key in keys:
        dt = sd.dtype(key)
        counts[dt] = counts.get(dt, 0) + 1
    if not counts:
        return None
    top = max(counts, key=counts.__getitem__)
    return top if is_fp8(top) else None


class _CastWeights:
    """Mixin: `weight` / `bias` read as the stored parameters cast to `compute_dtype` (ComfyUI's manual cast)."""

    compute_dtype: torch.dtype

    @property
    def weight(self) -> torch.Tensor:
        return self._parameters["weight"].to(self.compute_dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        b = self._parameters.get("bias")
        return None if b is None else b.to(self.compute_dtype)


class CastLinear(_CastWeights, nn.Linear):
    pass


class CastConv2d(_CastWeights, nn.Conv2d):
    pass


class CastGemmConv2d(_CastWeights, Conv2d):
    """conv.Conv2d with fp8 storage; casts its weight once per call (the base class reads `self.weight` twice)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if self.groups == 1 and self.padding_mode == "zeros" and isinstance(self.padding, tuple) and x.ndim == 4:
            out_hw = conv_out_hw(self, x.shape[-2], x.shape[-1])
            if gemm_pays(x, w, out_hw):
                return conv2d_gemm(x, w, b, self.stride, self.padding, self.dilation, out_hw)
        return self._conv_forward(x, w, b)


class CastGroupNorm(_CastWeights, nn.GroupNorm):
    pass


class CastLayerNorm(_CastWeights, nn.LayerNorm):
    pass


class Fp8MatmulLinear(CastLinear):
    """CastLinear that multiplies in fp8 on the tensor cores (weights e4m3fn; see module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _scaled_mm_fits(x):
            return super().forward(x)
        rows = x.reshape(-1, x.shape[-1])  # [N, in]
        out = fp8_linear(rows, self._parameters["weight"], self.bias, x.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def fp8_linear(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               out_dtype: torch.dtype) -> torch.Tensor:
    """rows [N, in] @ weightᵀ (+ bias) with both operands in e4m3fn: the input is clamped to ±448 and rounded to
    fp8, scales are 1 (ComfyUI's fp8_linear). weight [out, in] row-major, so weight.t() is the column-major operand
    torch._scaled_mm wants. -> [N, out] in out_dtype."""
    a = rows.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).contiguous()
    one = torch.ones((), device=rows.device, dtype=torch.float32)
    out = torch._scaled_mm(a, weight.t(), scale_a=one, scale_b=one, out_dtype=out_dtype)
    return out if bias is None else out + bias.to(out_dtype)


def _scaled_mm_fits(x: torch.Tensor) -> bool:
    """Shapes/dtypes torch._scaled_mm accepts: 2-D/3-D half/bf16/fp32 input with every matrix dim a multiple of 16."""
    if x.ndim not in (2, 3) or not x.is_cuda or x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    return x.numel() // x.shape[-1] % 16 == 0


def fp8_matmul_supported(device: torch.device) -> bool:
    """fp8 tensor-core matmul: CUDA compute capability 8.9 (Ada) or newer, with torch._scaled_mm available."""
    device = torch.device(device)
    if device.type != "cuda" or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


_CAST_CLASSES: dict[type, type] = {  # exact module class -> cast-on-forward subclass (an immutable table)
    nn.Linear: CastLinear, nn.Conv2d: CastConv2d, Conv2d: CastGemmConv2d, nn.GroupNorm: CastGroupNorm,
    nn.LayerNorm: CastLayerNorm,
}


def cast_on_forward(module: nn.Module, compute_dtype: torch.dtype, *, fp8_matmul: bool = False) -> nn.Module:
    """Convert `module` (already holding fp8 parameters) in place to cast-on-forward layers; returns it.

    Modules of other classes that own parameters get them cast to `compute_dtype` (they would not know how to use
    fp8). `fp8_matmul`: use Fp8MatmulLinear where the device supports it and the layer's dims are multiples of 16.
    """
    use_mm = fp8_matmul and fp8_matmul_supported(_device_of(module))
    for m in module.modules():
        cls = _CAST_CLASSES.get(type(m))
        if cls is not None:
            if cls is CastLinear and use_mm and _mm_eligible(m):
                cls = Fp8MatmulLinear
            m.__class__ = cls
            m.compute_dtype = compute_dtype
        elif type(m) in _CAST_CLASSES.values():
            m.compute_dtype = compute_dtype  # converted before: only the compute dtype may change
        else:
            for name, p in list(m._parameters.items()):
                if p is not None and is_fp8(p.dtype):
                    m._parameters[name] = nn.Parameter(p.to(compute_dtype), requires_grad=False)
    module.compute_dtype = compute_dtype
    log.debug("fp8 storage: %s computes in %s (fp8 matmul: %s)", type(module).__name__, compute_dtype, use_mm)
    return module


def _mm_eligible(m: nn.Linear) -> bool:
    w = m._parameters["weight"]
    return w.dtype == torch.float8_e4m3fn and m.in_features % 16 == 0 and m.out_features % 16 == 0


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")

