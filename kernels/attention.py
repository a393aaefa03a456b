"""Scaled dot-product attention for the UNet, with one dispatcher over three backends.

Layout (B, H, S, D): `attention(q, k, v)` takes q [B,H,Sq,D], k/v [B,H,Skv,D] and returns [B,H,Sq,D] in q's dtype.
Sq and Skv may differ (cross-attention on 77/154 text tokens).

Backends:
- "triton": our flash-attention forward (`triton_attention.py`); chosen by "auto" on CUDA (compute capability 8.0+)
  for fp16/bf16 with a head dim in 16..256 when Triton is installed.
- "sdpa": `torch.nn.functional.scaled_dot_product_attention` with torch's own kernel choice (the default everywhere
  else, CPU fp32 included); "sdpa:flash" | "sdpa:efficient" | "sdpa:cudnn" | "sdpa:math" pin one SDPA kernel
  (for benchmarks; torch raises if the pinned kernel cannot take the inputs).
- "reference": softmax(q·kᵀ·scale)·v computed in fp32 (tests, debugging).

Which one runs is decided before any launch by `select_backend`, a pure function of device, dtype, shapes and the
request. The request comes from the `backend` argument (the engine passes `EngineConfig.attention_backend`), else from
the COMFY_CORE_ATTENTION environment variable, else "auto"; an argument of None or "auto" defers to the variable.
A forced "triton" that cannot run on the given inputs (no Triton, CPU without the interpreter, head dim out of range)
falls back to "sdpa" rather than failing a whole model.

FLOPs of one call: 4·B·H·Sq·Skv·D (q·kᵀ and p·v, 2·Sq·Skv·D each per head).
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from comfy_core.errors import ComfyCoreError

from ._triton import MIN_CAPABILITY, device_capability, requested_choice, triton_available, triton_interpreting

log = logging.getLogger(__name__)

ENV_VAR = "COMFY_CORE_ATTENTION"
SDPA_KERNELS = ("flash", "efficient", "cudnn", "math")
BACKENDS = ("auto", "triton", "sdpa", "reference", *(f"sdpa:{k}" for k in SDPA_KERNELS))
TRITON_HEAD_DIMS = (16, 256)  # inclusive range the Triton kernel takes (D padded to the next power of two)
TRITON_MAX_BATCH_HEADS = 65535  # CUDA grid y limit; B*H is the kernel's second grid axis
_REFERENCE_CHUNK_BYTES = 256 * 1024**2  # fp32 score block per chunk of query rows in the reference


def attention_flops(batch: int, heads: int, seq_q: int, seq_kv: int, head_dim: int) -> int:
    """Useful FLOPs of one attention forward: two matmuls of 2·Sq·Skv·D per (batch, head)."""
    return 4 * batch * heads * seq_q * seq_kv * head_dim


def requested_backend(backend: str | None = None) -> str:
    """The backend asked for: the argument unless None/"auto", else $COMFY_CORE_ATTENTION, else "auto"."""
    return requested_choice(backend, ENV_VAR, BACKENDS, "attention")


def select_backend(
    *, device_type: str, dtype: torch.dtype, head_dim: int, seq_q: int = 1, seq_kv: int = 1, batch_heads: int = 1,
    requested: str = "auto", triton_available: bool, interpreting: bool = False,
    capability: tuple[int, int] | None = None,
) -> str:
    """Pure choice of the backend for inputs with these properties. Returns one of BACKENDS except "auto".

    "auto": "triton" on CUDA (compute capability >= 8.0 when given) for fp16/bf16 when the kernel takes the shapes
    and Triton is importable, else "sdpa".
    "triton": also on CUDA fp32, and on CPU when `interpreting` (TRITON_INTERPRET=1); "sdpa" when it cannot run.
    "sdpa", "sdpa:<kernel>", "reference": always honoured.
    """
    if requested not in BACKENDS:
        raise ComfyCoreError(f"unknown attention backend {requested!r}; expected one of {', '.join(BACKENDS)}")
    if requested not in ("auto", "triton"):
        return requested
    shapes_ok = (TRITON_HEAD_DIMS[0] <= head_dim <= TRITON_HEAD_DIMS[1] and seq_q > 0 and seq_kv > 0
                 and 0 < batch_heads <= TRITON_MAX_BATCH_HEADS
                 and batch_heads * max(seq_q, seq_kv) * head_dim < 2**31)  # the kernel's offsets are int32
    gpu_ok = device_type != "cuda" or capability is None or tuple(capability) >= MIN_CAPABILITY
    if not (triton_available and shapes_ok and gpu_ok):
        return "sdpa"
    if requested == "auto":
        return "triton" if device_type == "cuda" and dtype in (torch.float16, torch.bfloat16) else "sdpa"
    dtype_ok = dtype in (torch.float16, torch.bfloat16, torch.float32)
    device_ok = device_type == "cuda" or (device_type == "cpu" and interpreting)
    return "triton" if dtype_ok and device_ok else "sdpa"


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q [B,H,Sq,D], k/v [B,H,Skv,D] of one dtype on one device, or a clear error (every backend needs it)."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ComfyCoreError(f"attention wants (B, H, S, D) tensors, got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                             f"v {tuple(v.shape)}")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ComfyCoreError(f"attention shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                             "(want q [B,H,Sq,D], k/v [B,H,Skv,D])")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ComfyCoreError(f"attention wants one dtype and device, got {q.dtype}/{k.dtype}/{v.dtype} on "
                             f"{q.device}/{k.device}/{v.device}")


def resolve_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str | None = None) -> str:
    """The backend `attention(q, k, v, backend=backend)` will use (validates shapes first)."""
    check_qkv(q, k, v)
    batch, heads, seq_q, head_dim = q.shape
    return select_backend(
        device_type=q.device.type, dtype=q.dtype, head_dim=head_dim, seq_q=seq_q, seq_kv=k.shape[2],
        batch_heads=batch * heads, requested=requested_backend(backend),
        triton_available=triton_available(), interpreting=triton_interpreting(),
        capability=device_capability(q.device),
    )


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float | None = None, backend: str | None = None,
) -> torch.Tensor:
    """softmax(q·kᵀ·scale)·v; q [B,H,Sq,D], k/v [B,H,Skv,D] -> [B,H,Sq,D]. `scale` defaults to 1/sqrt(D)."""
    name = resolve_backend(q, k, v, backend)
    log.debug("attention %s q%s k%s %s", name, tuple(q.shape), tuple(k.shape), q.dtype)
    if name == "triton":
        from . import triton_attention  # imported only once Triton is known to be importable

        return triton_attention.flash_attention(q, k, v, scale)
    if name == "reference":
        return reference_attention(q, k, v, scale)
    return sdpa_attention(q, k, v, scale, kernel=name.partition(":")[2] or None)


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, *, kernel: str | None = None,
) -> torch.Tensor:
    """torch's scaled_dot_product_attention; `kernel` in SDPA_KERNELS pins one implementation."""
    if kernel is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    pinned = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
              "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    if kernel not in pinned:
        raise ComfyCoreError(f"unknown SDPA kernel {kernel!r}; expected one of {', '.join(SDPA_KERNELS)}")
    with sdpa_kernel(pinned[kernel]):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
) -> torch.Tensor:
    """softmax(q·kᵀ·scale)·v in fp32, in chunks of query rows so the score matrix stays under ~256 MB."""
    check_qkv(q, k, v)
    batch, heads, seq_q, head_dim = q.shape
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    kt = k.float().transpose(-1, -2)  # [B,H,D,Skv]
    vf = v.float()
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    rows = max(1, _REFERENCE_CHUNK_BYTES // (4 * batch * heads * max(k.shape[2], 1)))
    for start in range(0, seq_q, rows):
        scores = torch.matmul(q[:, :, start:start + rows].float(), kt) * scale  # [B,H,rows,Skv]
        out[:, :, start:start + rows] = torch.matmul(torch.softmax(scores, dim=-1), vf)
    return out.to(q.dtype)
