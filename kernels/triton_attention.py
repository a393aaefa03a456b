"""Triton flash-attention forward for the UNet: softmax(q·kᵀ·scale)·v without materialising the score matrix.

Layout (B, H, S, D): q [B,H,Sq,D], k/v [B,H,Skv,D] -> out [B,H,Sq,D]; any strides, Sq != Skv allowed (77/154 text
tokens for cross-attention). One program computes BLOCK_M query rows of one (batch, head) and streams the keys and
values in BLOCK_N blocks with the online softmax of FlashAttention (Dao et al. 2022, arXiv:2205.14135): a running
row max m_i and row sum l_i rescale the fp32 accumulator whenever the max grows.

Head dims that are not powers of two (SD1.5: 40/80/160) are padded inside the kernel to BLOCK_D = next power of two
with masked loads (zeros), so both dots do BLOCK_D/D times the useful work: 40->64, 80->128 and 160->256 all cost
1.6x the FLOPs of an exact-D kernel; 64 and 128 cost nothing extra. Keys past Skv (last, partial block) get a score of
-inf; query rows past Sq are computed on zeros and never stored.

FLOPs (counted as useful work, as benchmarks report them): 4·B·H·Sq·Skv·D (two matmuls of 2·Sq·Skv·D each).

Import this module only after `triton_available()`; it imports triton at the top. Whether kernels run compiled or in
Triton's numpy interpreter is fixed when this module is imported (TRITON_INTERPRET); see `INTERPRETED`.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from comfy_core.errors import ComfyCoreError

from ._triton import launch_device, module_interpreted
from .attention import check_qkv

# True when this module was imported under TRITON_INTERPRET=1: the kernel then runs on CPU tensors (numpy).
INTERPRETED: bool = module_interpreted(triton)
# Head dims the kernel is written for: BLOCK_D = next_pow2(D) must fit registers / shared memory.
MAX_HEAD_DIM = 256
MIN_HEAD_DIM = 16  # tl.dot needs K >= 16
LOG2E = 1.4426950408889634
# (BLOCK_M, BLOCK_N, num_warps, num_stages) used under the interpreter and when a caller pins a config.
# Large blocks keep the interpreter fast (few programs, few loop iterations).
INTERPRETER_CONFIG = (64, 64, 4, 1)


# Sequence lengths vary with the image size: no integer specialisation on them (one compile serves all lengths).
@triton.jit(do_not_specialize=["H", "SEQ_Q", "SEQ_KV", "Q_BUCKET", "KV_BUCKET"])
def _flash_attn_fwd(
    Q, K, V, O,
    stride_qb, stride_qh, stride_qm, stride_qd,
    stride_kb, stride_kh, stride_kn, stride_kd,
    stride_vb, stride_vh, stride_vn, stride_vd,
    stride_ob, stride_oh, stride_om, stride_od,
    H, SEQ_Q, SEQ_KV, qk_scale,
    Q_BUCKET, KV_BUCKET,  # autotune keys only (sequence lengths rounded up to powers of two)
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    DOT_FP32: tl.constexpr, ALIGN: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)  # batch*heads in the grid
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM  # padding of D to a power of two (all true, folded away, when D == BLOCK_D)

    # ALIGN: every row starts on a 16-byte boundary (checked by the launcher). Triton cannot infer it when a stride
    # is not a multiple of 16 elements (D = 40: stride 40), and without it loads are neither vectorised nor async.
    q_rows = tl.multiple_of(b * stride_qb + h * stride_qh + offs_m * stride_qm, ALIGN)
    q_ptrs = Q + q_rows[:, None] + offs_d[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=(offs_m[:, None] < SEQ_Q) & d_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    k_head = b * stride_kb + h * stride_kh
    v_head = b * stride_vb + h * stride_vh

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)  # running row max (log2 domain)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)  # running row sum of exp2
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, SEQ_KV, BLOCK_N):
        n = start_n + offs_n
        n_ok = n < SEQ_KV
        k_rows = tl.multiple_of(k_head + n * stride_kn, ALIGN)
        v_rows = tl.multiple_of(v_head + n * stride_vn, ALIGN)
        kt = tl.trans(tl.load(K + k_rows[:, None] + offs_d[None, :] * stride_kd,
                              mask=n_ok[:, None] & d_ok[None, :], other=0.0))  # [BLOCK_D, BLOCK_N]
        if DOT_FP32:  # fp32 inputs, and bf16 under the interpreter (its bf16 dot is wrong)
            qk = tl.dot(q.to(tl.float32), kt.to(tl.float32), input_precision="ieee")
        else:
            qk = tl.dot(q, kt)
        qk = tl.where(n_ok[None, :], qk * qk_scale, float("-inf"))  # [BLOCK_M, BLOCK_N]
        # every block holds >= 1 valid key, so m_new is finite and alpha = exp2(-inf) = 0 on the first block
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.math.exp2(qk - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = tl.load(V + v_rows[:, None] + offs_d[None, :] * stride_vd,
                    mask=n_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_N, BLOCK_D]
        if DOT_FP32:
            acc += tl.dot(p, v.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(p.to(v.dtype), v)
        m_i = m_new

    out = acc / l_i[:, None]
    o_rows = tl.multiple_of(b * stride_ob + h * stride_oh + offs_m * stride_om, ALIGN)
    o_ptrs = O + o_rows[:, None] + offs_d[None, :] * stride_od
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(offs_m[:, None] < SEQ_Q) & d_ok[None, :])


def _cuda_configs() -> list[triton.Config]:
    """A small set that covers SD shapes on Ampere/Hopper; `_prune` drops what cannot fit for big head dims."""
    shapes = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 32, 4, 3), (64, 64, 4, 3),
              (64, 64, 8, 2), (64, 32, 4, 2)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in shapes]


def _prune(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop configs that are wasteful for the problem: blocks longer than the sequence, big tiles at D=256
    (BLOCK_D = 256 fp16: Q 64×256 + 2 stages of K and V 64×256 = 160 KB shared memory; more does not fit)."""
    args = {**named_args, **kwargs}
    block_d, seq_q, seq_kv = args["BLOCK_D"], args["SEQ_Q"], args["SEQ_KV"]
    kept = []
    for c in configs:
        m, n = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]
        if block_d >= 256 and (n > 64 or m > 64 or c.num_stages > 2):
            continue  # K/V tiles of 256 columns: keep shared memory under ~160 KB
        if (m > 64 and seq_q <= 64) or (n > 64 and seq_kv <= 64):
            continue
        kept.append(c)
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])]


_flash_attn_fwd_tuned = triton.autotune(
    configs=_cuda_configs(), key=["HEAD_DIM", "Q_BUCKET", "KV_BUCKET"], prune_configs_by={"early_config_prune": _prune}
)(_flash_attn_fwd)


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """Raise a clear error for inputs the kernel cannot take (the dispatcher checks the same before choosing it)."""
    check_qkv(q, k, v)
    if not MIN_HEAD_DIM <= q.shape[3] <= MAX_HEAD_DIM:
        raise ComfyCoreError(f"flash attention supports head dims {MIN_HEAD_DIM}..{MAX_HEAD_DIM}, got {q.shape[3]}")
    if q.device.type == "cpu" and not INTERPRETED:
        raise ComfyCoreError("Triton kernels take CPU tensors only under TRITON_INTERPRET=1 (set before import)")


def _row_alignment(*tensors: torch.Tensor) -> int:
    """Elements per 16 bytes when every stride but the last is a multiple of it (rows start 16-byte aligned
    relative to the base pointer), else 1. The kernel passes it to tl.multiple_of, so it must be true."""
    per_16_bytes = 16 // tensors[0].element_size()
    ok = all(st % per_16_bytes == 0 for t in tensors for st in t.stride()[:-1])
    return per_16_bytes if ok else 1


def flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
    *, config: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """softmax(q·kᵀ·scale)·v for q [B,H,Sq,D], k/v [B,H,Skv,D] -> [B,H,Sq,D] in q's dtype (fp32 accumulation).

    `scale` defaults to 1/sqrt(D). `config` = (BLOCK_M, BLOCK_N, num_warps, num_stages) pins one launch config;
    without it CUDA autotunes over a small pruned set, and the interpreter uses `INTERPRETER_CONFIG`.
    """
    check_inputs(q, k, v)
    batch, heads, seq_q, head_dim = q.shape
    seq_kv = k.shape[2]
    scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
    out = torch.empty_like(q)
    block_d = max(triton.next_power_of_2(head_dim), MIN_HEAD_DIM)
    # fp32 dots for fp32 inputs (exact "ieee" products), and for bf16 under the interpreter (its bf16 dot is wrong)
    dot_fp32 = q.dtype == torch.float32 or (INTERPRETED and q.dtype == torch.bfloat16)
    align = _row_alignment(q, k, v, out)
    args = (q, k, v, out, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
            heads, seq_q, seq_kv, scale * LOG2E, triton.next_power_of_2(seq_q), triton.next_power_of_2(seq_kv))
    constexprs = {"HEAD_DIM": head_dim, "BLOCK_D": block_d, "DOT_FP32": dot_fp32, "ALIGN": align}
    with launch_device(q):
        if config is None and not INTERPRETED:
            grid = lambda meta: (triton.cdiv(seq_q, meta["BLOCK_M"]), batch * heads)  # noqa: E731
            _flash_attn_fwd_tuned[grid](*args, **constexprs)
            return out
        block_m, block_n, num_warps, num_stages = config or INTERPRETER_CONFIG
        grid = (triton.cdiv(seq_q, block_m), batch * heads)
        _flash_attn_fwd[grid](*args, **constexprs, BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps,
                              num_stages=num_stages)
    return out
