"""Fused sampler steps: classifier-free guidance combined with one Euler / Euler-ancestral / DPM++(2M) update.

Each step reads every input tensor once and writes x_next (and, optionally, the guided denoised prediction that
callbacks and previews need). On CUDA the Triton kernels in `triton_sampler_step.py` do it in one pass; elsewhere the
torch references below run. Both compute in fp32 and round once to x's dtype; for fp32 inputs the references use the
operation order of k-diffusion/ComfyUI, so on CPU they give ComfyUI's numbers bit for bit.

Inputs: x, cond, uncond (and noise / old_denoised) of one shape. `cond`/`uncond` are *denoised* predictions
(ComfyUI's models return x0 estimates); `uncond=None` means no guidance (denoised = cond, ComfyUI's cfg == 1 shortcut).
Scalars (cfg, sigmas, s_noise) are Python floats or 0-d tensors; tensors are read with float(), which waits for the
device, so a sampler loop should pass floats (e.g. `sigmas.tolist()` once). Sigma-derived coefficients are computed
in fp32 with the same operations as k-diffusion (sigmas there are fp32 tensors).

Bytes moved per element (fp16 x, CFG): Euler 3 reads + 1-2 writes; Euler-a 4 + 1-2; DPM++ 2M 4 + 1-2.
The unfused torch version makes ~6-10 passes over memory.

Backend choice: `backend` argument ("auto" | "triton" | "torch"), else $COMFY_CORE_SAMPLER_STEP, else "auto".
"auto" picks Triton on CUDA (capability 8.0+) when Triton is importable and all tensors are contiguous with one
shape, dtype (fp16/bf16/fp32) and device; "triton" also runs on CPU under TRITON_INTERPRET=1; anything else runs torch.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from comfy_core.errors import ComfyCoreError

from ._triton import (
    MIN_CAPABILITY, TRITON_DTYPES, device_capability, requested_choice, triton_available, triton_interpreting,
)

ENV_VAR = "COMFY_CORE_SAMPLER_STEP"
STEP_BACKENDS = ("auto", "triton", "torch")
Scalar = float | torch.Tensor


class StepResult(NamedTuple):
    x: torch.Tensor  # x_next
    denoised: torch.Tensor | None  # guided denoised prediction, None when write_denoised=False


# --- scalar coefficients, in fp32 like k-diffusion's tensor sigmas -------------------------------------------------

def _f32(value: Scalar) -> torch.Tensor:
    return torch.tensor(float(value), dtype=torch.float32)


def _round32(value: Scalar) -> float:
    """`value` rounded to float32 (numpy scalars: no tensor allocation on the per-step path)."""
    return float(np.float32(float(value)))


def euler_dt(sigma: Scalar, sigma_next: Scalar) -> float:
    """dt = sigma_next − sigma, rounded like an fp32 tensor subtraction (IEEE float32 subtraction in numpy is the
    same correctly rounded operation)."""
    return float(np.float32(float(sigma_next)) - np.float32(float(sigma)))


def dpmpp_2m_coefficients(
    sigma: Scalar, sigma_next: Scalar, sigma_prev: Scalar | None = None,
) -> tuple[float, float, float, float]:
    """(ratio, expm1_neg_h, c_den, c_old) of DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095, Alg. 2).

    With t = −log σ and h = t_next − t:  x_next = ratio·x − expm1_neg_h·D,  ratio = σ_next/σ (as e^{−t_next}/e^{−t}),
    expm1_neg_h = e^{−h} − 1, and D = c_den·denoised − c_old·old_denoised, where r = h_last/h, c_den = 1 + 1/(2r),
    c_old = 1/(2r). First-order (c_den = 1, c_old = 0) without `sigma_prev` or when sigma_next == 0.
    """
    s, s_next = _f32(sigma), _f32(sigma_next)
    t, t_next = s.log().neg(), s_next.log().neg()
    h = t_next - t
    ratio = float(t_next.neg().exp() / t.neg().exp())
    expm1_neg_h = float(h.neg().expm1())
    if sigma_prev is None or float(sigma_next) == 0.0:
        return ratio, expm1_neg_h, 1.0, 0.0
    h_last = t - _f32(sigma_prev).log().neg()
    r = h_last / h
    return ratio, expm1_neg_h, float(1 + 1 / (2 * r)), float(1 / (2 * r))


# --- torch references (the same math, fp32 inside) ------------------------------------------------------------------

def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor | None, cfg: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): uncond + cfg·(cond − uncond), in fp32."""
    if uncond is None:
        return cond.float()
    u = uncond.float()
    return u + (cond.float() - u) * cfg


def euler_step_reference(
    x: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None, cfg: float, sigma: float, dt: float,
    noise: torch.Tensor | None = None, noise_scale: float = 0.0, s_noise: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_next, denoised) in fp32: d = (x − denoised)/σ; x_next = x + d·dt [+ noise·s_noise·noise_scale]."""
    denoised = cfg_combine(cond, uncond, cfg)
    xf = x.float()
    x_next = (xf - denoised).div_(sigma).mul_(dt).add_(xf)  # x + d·dt, in place on the one temporary
    if noise is not None:
        scaled = noise.float() if s_noise == 1.0 else noise.float() * s_noise  # ×1.0 is exact: skip the pass
        x_next.add_(scaled * noise_scale)
    return x_next, denoised


def dpmpp_2m_step_reference(
    x: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None, cfg: float,
    coefficients: tuple[float, float, float, float], old_denoised: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_next, denoised) in fp32 for `dpmpp_2m_coefficients`."""
    ratio, expm1_neg_h, c_den, c_old = coefficients
    denoised = cfg_combine(cond, uncond, cfg)
    denoised_d = denoised if old_denoised is None or c_old == 0.0 else c_den * denoised - c_old * old_denoised.float()
    return ratio * x.float() - expm1_neg_h * denoised_d, denoised


# --- dispatch --------------------------------------------------------------------------------------------------------

def requested_step_backend(backend: str | None = None) -> str:
    """The argument unless None/"auto", else $COMFY_CORE_SAMPLER_STEP, else "auto"."""
    return requested_choice(backend, ENV_VAR, STEP_BACKENDS, "sampler-step")


def select_step_backend(
    *, device_type: str, dtype: torch.dtype, uniform: bool, requested: str = "auto", triton_available: bool,
    interpreting: bool = False, capability: tuple[int, int] | None = None,
) -> str:
    """Pure choice between "triton" and "torch". `uniform`: every tensor contiguous, one shape/dtype/device;
    `capability`: the CUDA device's compute capability (Triton needs 8.0+)."""
    if requested not in STEP_BACKENDS:
        raise ComfyCoreError(f"unknown sampler-step backend {requested!r}; expected one of {', '.join(STEP_BACKENDS)}")
    if requested == "torch" or not (triton_available and uniform and dtype in TRITON_DTYPES):
        return "torch"
    if device_type == "cuda":
        return "triton" if capability is None or tuple(capability) >= MIN_CAPABILITY else "torch"
    if requested == "triton" and device_type == "cpu" and interpreting:
        return "triton"
    return "torch"


def _check_same_shape(x: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.shape != x.shape:
            raise ComfyCoreError(f"sampler step: {name} has shape {tuple(t.shape)}, x has {tuple(x.shape)}")


def resolve_step_backend(x: torch.Tensor, *others: torch.Tensor | None, backend: str | None = None) -> str:
    """The backend a step on these tensors will use."""
    requested = requested_step_backend(backend)
    if x.device.type == "cpu" and not (requested == "triton" and triton_interpreting()):
        return "torch"  # the per-step fast path: on CPU only a forced, interpreted run goes to Triton
    tensors = [x, *(t for t in others if t is not None)]
    uniform = all(t.is_contiguous() and t.dtype == x.dtype and t.device == x.device and t.shape == x.shape
                  for t in tensors) and x.numel() < 2**31
    return select_step_backend(
        device_type=x.device.type, dtype=x.dtype, uniform=uniform, requested=requested,
        triton_available=triton_available(), interpreting=triton_interpreting(),
        capability=device_capability(x.device),
    )


def _finish(x: torch.Tensor, x_next: torch.Tensor, denoised: torch.Tensor, write_denoised: bool) -> StepResult:
    return StepResult(x_next.to(x.dtype), denoised.to(x.dtype) if write_denoised else None)


# --- public steps ----------------------------------------------------------------------------------------------------

def cfg_euler_step(
    x: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None, cfg: Scalar, sigma: Scalar,
    sigma_next: Scalar, *, write_denoised: bool = True, backend: str | None = None,
) -> StepResult:
    """Euler step (Karras et al. 2022, Alg. 2, no churn) on the CFG-guided denoised prediction.

    denoised = uncond + cfg·(cond − uncond); d = (x − denoised)/σ; x_next = x + d·(σ_next − σ).
    """
    _check_same_shape(x, cond=cond, uncond=uncond)
    cfg, sigma, dt = float(cfg), _round32(sigma), euler_dt(sigma, sigma_next)
    if resolve_step_backend(x, cond, uncond, backend=backend) == "triton":
        from . import triton_sampler_step

        return StepResult(*triton_sampler_step.cfg_euler(x, cond, uncond, None, cfg, sigma, dt, 0.0, 1.0,
                                                         return_denoised=False, write_denoised=write_denoised))
    x_next, denoised = euler_step_reference(x, cond, uncond, cfg, sigma, dt)
    return _finish(x, x_next, denoised, write_denoised)


def cfg_euler_ancestral_step(
    x: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None, cfg: Scalar, sigma: Scalar,
    sigma_down: Scalar, sigma_up: Scalar, noise: torch.Tensor | None, *, s_noise: Scalar = 1.0,
    write_denoised: bool = True, backend: str | None = None,
) -> StepResult:
    """Euler-ancestral step: the Euler step to σ_down plus noise·s_noise·σ_up (the caller computes the ancestral split
    σ_down, σ_up, e.g. with k-diffusion's get_ancestral_step). When σ_down == 0 the result is the denoised prediction,
    as in ComfyUI, and `noise` may be None (ComfyUI draws none then); it may also be None when σ_up == 0.
    """
    _check_same_shape(x, cond=cond, uncond=uncond, noise=noise)
    cfg, sigma, s_noise, sigma_up = float(cfg), _round32(sigma), float(s_noise), _round32(sigma_up)
    to_denoised = float(sigma_down) == 0.0
    if noise is None and sigma_up != 0.0 and not to_denoised:
        raise ComfyCoreError("cfg_euler_ancestral_step: noise is required when sigma_up > 0")
    dt = euler_dt(sigma, sigma_down)
    if resolve_step_backend(x, cond, uncond, noise, backend=backend) == "triton":
        from . import triton_sampler_step

        return StepResult(*triton_sampler_step.cfg_euler(x, cond, uncond, noise, cfg, sigma, dt, sigma_up, s_noise,
                                                         return_denoised=to_denoised, write_denoised=write_denoised))
    x_next, denoised = euler_step_reference(x, cond, uncond, cfg, sigma, dt, noise, sigma_up, s_noise)
    return _finish(x, denoised if to_denoised else x_next, denoised, write_denoised)


def cfg_dpmpp_2m_step(
    x: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None, cfg: Scalar, sigma: Scalar,
    sigma_next: Scalar, old_denoised: torch.Tensor | None = None, sigma_prev: Scalar | None = None,
    *, write_denoised: bool = True, backend: str | None = None,
) -> StepResult:
    """DPM-Solver++(2M) step (Lu et al. 2022, arXiv:2211.01095) on the CFG-guided denoised prediction.

    `old_denoised` is the previous step's denoised (StepResult.denoised) and `sigma_prev` the previous step's sigma;
    without them (first step), or when sigma_next == 0 (last step), the update is first order, as in k-diffusion.
    """
    _check_same_shape(x, cond=cond, uncond=uncond, old_denoised=old_denoised)
    if old_denoised is not None and sigma_prev is None:
        raise ComfyCoreError("cfg_dpmpp_2m_step: old_denoised needs sigma_prev (the sigma of the previous step)")
    coefficients = dpmpp_2m_coefficients(sigma, sigma_next, sigma_prev if old_denoised is not None else None)
    old = old_denoised if coefficients[3] != 0.0 else None
    cfg = float(cfg)
    if resolve_step_backend(x, cond, uncond, old, backend=backend) == "triton":
        from . import triton_sampler_step

        return StepResult(*triton_sampler_step.cfg_dpmpp_2m(x, cond, uncond, old, cfg, coefficients,
                                                            write_denoised=write_denoised))
    x_next, denoised = dpmpp_2m_step_reference(x, cond, uncond, cfg, coefficients, old)
    return _finish(x, x_next, denoised, write_denoised)
