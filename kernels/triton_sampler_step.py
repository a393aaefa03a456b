"""Triton kernels for the fused sampler steps of `sampler_step.py` (same math, fp32 in registers, one pass).

Each program handles BLOCK contiguous elements of the flattened tensors; all tensors share one shape, dtype and
device and are contiguous (the dispatcher checks this). Bytes per element: reads of x, cond, uncond (+ noise or
old_denoised), writes of x_next (+ denoised) — e.g. 2×4×128×128 fp16 with CFG: 5 × 131072 × 2 B = 1.3 MB for Euler.

Import only after `triton_available()`; it imports triton at the top.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from comfy_core.errors import ComfyCoreError

from ._triton import launch_device, module_interpreted

INTERPRETED: bool = module_interpreted(triton)
BLOCK = 1024
NUM_WARPS = 4


@triton.jit
def _guided(COND, UNCOND, offs, mask, cfg, HAS_UNCOND: tl.constexpr):
    c = tl.load(COND + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_UNCOND:
        u = tl.load(UNCOND + offs, mask=mask, other=0.0).to(tl.float32)
        den = u + (c - u) * cfg
    else:
        den = c
    return den


@triton.jit
def _cfg_euler_kernel(
    X, COND, UNCOND, NOISE, OUT, DEN, N, cfg, sigma, dt, noise_scale, s_noise,
    HAS_UNCOND: tl.constexpr, HAS_NOISE: tl.constexpr, RETURN_DENOISED: tl.constexpr,
    WRITE_DENOISED: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    den = _guided(COND, UNCOND, offs, mask, cfg, HAS_UNCOND)
    if WRITE_DENOISED:
        tl.store(DEN + offs, den.to(DEN.dtype.element_ty), mask=mask)
    if RETURN_DENOISED:  # Euler-ancestral with sigma_down == 0: x_next = denoised
        x_next = den
    else:
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        x_next = x + (x - den) / sigma * dt
        if HAS_NOISE:
            nz = tl.load(NOISE + offs, mask=mask, other=0.0).to(tl.float32)
            x_next = x_next + nz * s_noise * noise_scale
    tl.store(OUT + offs, x_next.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _cfg_dpmpp_2m_kernel(
    X, COND, UNCOND, OLD, OUT, DEN, N, cfg, ratio, expm1_neg_h, c_den, c_old,
    HAS_UNCOND: tl.constexpr, HAS_OLD: tl.constexpr, WRITE_DENOISED: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    den = _guided(COND, UNCOND, offs, mask, cfg, HAS_UNCOND)
    if WRITE_DENOISED:
        tl.store(DEN + offs, den.to(DEN.dtype.element_ty), mask=mask)
    if HAS_OLD:
        old = tl.load(OLD + offs, mask=mask, other=0.0).to(tl.float32)
        den_d = c_den * den - c_old * old
    else:
        den_d = den
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    x_next = ratio * x - expm1_neg_h * den_d
    tl.store(OUT + offs, x_next.to(OUT.dtype.element_ty), mask=mask)


def _check(x: torch.Tensor, *tensors: torch.Tensor | None) -> None:
    for t in (x, *tensors):
        if t is None:
            continue
        if not t.is_contiguous() or t.dtype != x.dtype or t.device != x.device or t.shape != x.shape:
            raise ComfyCoreError("fused sampler step wants contiguous tensors of one shape, dtype and device")
    if x.device.type == "cpu" and not INTERPRETED:
        raise ComfyCoreError("Triton kernels take CPU tensors only under TRITON_INTERPRET=1 (set before import)")


def cfg_euler(
    x: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None, noise: torch.Tensor | None,
    cfg: float, sigma: float, dt: float, noise_scale: float, s_noise: float,
    *, return_denoised: bool, write_denoised: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x_next, denoised | None): x_next = x + (x − D)/σ·dt [+ noise·s_noise·noise_scale], or D if return_denoised."""
    _check(x, cond, uncond, noise)
    n = x.numel()
    out = torch.empty_like(x)
    den = torch.empty_like(x) if write_denoised else out  # DEN unused when not written
    grid = (triton.cdiv(n, BLOCK),)
    with launch_device(x):
        _cfg_euler_kernel[grid](
            x, cond, uncond if uncond is not None else cond, noise if noise is not None else x, out, den, n,
            cfg, sigma, dt, noise_scale, s_noise,
            HAS_UNCOND=uncond is not None, HAS_NOISE=noise is not None, RETURN_DENOISED=return_denoised,
            WRITE_DENOISED=write_denoised, BLOCK=BLOCK, num_warps=NUM_WARPS,
        )
    return out, (den if write_denoised else None)


def cfg_dpmpp_2m(
    x: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None, old_denoised: torch.Tensor | None,
    cfg: float, coefficients: tuple[float, float, float, float], *, write_denoised: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x_next, denoised | None): x_next = ratio·x − expm1_neg_h·(c_den·D − c_old·old_denoised)."""
    _check(x, cond, uncond, old_denoised)
    ratio, expm1_neg_h, c_den, c_old = coefficients
    n = x.numel()
    out = torch.empty_like(x)
    den = torch.empty_like(x) if write_denoised else out
    grid = (triton.cdiv(n, BLOCK),)
    with launch_device(x):
        _cfg_dpmpp_2m_kernel[grid](
            x, cond, uncond if uncond is not None else cond, old_denoised if old_denoised is not None else x, out,
            den, n, cfg, ratio, expm1_neg_h, c_den, c_old,
            HAS_UNCOND=uncond is not None, HAS_OLD=old_denoised is not None, WRITE_DENOISED=write_denoised,
            BLOCK=BLOCK, num_warps=NUM_WARPS,
        )
    return out, (den if write_denoised else None)
