"""Shared pieces of every sampler: the denoiser contract, the post-CFG hook, and small k-diffusion helpers.

Import these from here (or, equivalently, from `comfy_core.sampling.samplers`, which re-exports them). Sampler
modules import this module and never `samplers.py`, so the registry can import them without cycles.

Scalar math convention: a sampler copies `sigmas` to the host once (`host_sigmas`) and computes every per-step
scalar (dt, h, sigma_up, ...) as 0-dim float32 CPU tensors, exactly the float32 operations ComfyUI performs. A 0-dim
CPU tensor mixes with device tensors as a plain scalar, so branching on sigmas and the scalar math never wait on the
GPU; only the tensor updates of x run on the device.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import torch

from comfy_core.sampling.noise import NoiseSampler

# model_options keys, named as in ComfyUI so that model_options built by ComfyUI-style custom nodes keep working.
POST_CFG_FUNCTIONS = "sampler_post_cfg_function"
PRE_CFG_FUNCTIONS = "sampler_pre_cfg_function"  # rewrite [cond, uncond] predictions before the combine
CFG_FUNCTION = "sampler_cfg_function"  # replaces the CFG combine itself (RescaleCFG); works in eps space
DISABLE_CFG1_OPTIMIZATION = "disable_cfg1_optimization"

Callback = Callable[[dict[str, Any]], None]


class Denoiser(Protocol):
    """`model(x [B,C,H,W], sigma [B], **extra_args) -> denoised x0 [B,C,H,W]` (CFG already combined).

    It may expose `model_sampling` (a `ModelSampling`) for samplers that re-noise through the model's own
    `noise_scaling` (lcm); without it the VE formula x0 + sigma·noise is used.

    It may also expose `predict_guided(x, sigma, **extra_args) -> GuidedPrediction | None`: the same evaluation
    stopped before the CFG combine, so that samplers can fuse the combine into their update (see
    `guided_prediction`). It returns None when the combine is not the plain formula (post-CFG hooks, a wrapper that
    edits the result such as inpainting); the sampler then calls the model as usual. Never both for one evaluation.
    An attribute `predict_guided = None` means the same as not having it.
    """

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args: Any) -> torch.Tensor: ...


class GuidedPrediction(NamedTuple):
    """A prediction before classifier-free guidance: denoised = uncond + cfg·(cond − uncond), or cond when
    uncond is None (no guidance, ComfyUI's cfg-1 shortcut)."""

    cond: torch.Tensor  # [B,C,H,W] conditional denoised prediction
    uncond: torch.Tensor | None  # [B,C,H,W] unconditional one, or None
    cfg: float


class SamplerFn(Protocol):
    def __call__(self, model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                 extra_args: dict[str, Any] | None = None, callback: Callback | None = None,
                 noise_sampler: NoiseSampler | None = None, seed: int | None = None,
                 **options: Any) -> torch.Tensor: ...


def host_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """The one device->host copy of a sampling run: sigmas as a CPU tensor for branching and scalar math."""
    return sigmas.detach().cpu()


def s_in_like(x: torch.Tensor) -> torch.Tensor:
    """A ones vector of x's batch size: `sigma * s_in` is the per-row sigma batch the model expects."""
    return x.new_ones([x.shape[0]])


def t_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """DPM-Solver's time t = -log(sigma) (the half-log-SNR lambda of a VE sigma)."""
    return sigma.log().neg()


def sigma_from_t(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def weighted_sum(weights: Sequence[float], tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """sum_k weights[k] * tensors[k], accumulated left to right (multistep solvers' combination of past values)."""
    out = tensors[0] * weights[0]
    for w, t in zip(weights[1:], tensors[1:]):
        out = out + t * w
    return out


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] with `ndim` dims; a 0-dim tensor stays 0-dim (so a host scalar can scale device x)."""
    if t.ndim == 0:
        return t
    return t.reshape(t.shape + (1,) * (ndim - t.ndim))


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """Karras et al. (2022) probability-flow ODE derivative dx/dsigma = (x - D(x; sigma)) / sigma."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def get_ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor,
                       eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | float]:
    """Split an ancestral step sigma_from -> sigma_to into a deterministic step to sigma_down plus fresh noise sigma_up,
    with sigma_down² + sigma_up² = sigma_to² (eta scales the noise; eta = 0 is deterministic)."""
    if not eta:
        return sigma_to, 0.0
    sigma_from, sigma_to = torch.as_tensor(sigma_from), torch.as_tensor(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def ancestral_schedule(sigmas: torch.Tensor, eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`get_ancestral_step` for every step i -> i+1 of a schedule at once: (sigma_down [n], sigma_up [n]).

    Only exactly-rounded float32 ops (*, /, -, sqrt, min), so each element equals the per-step 0-dim result while the
    loop saves ~10 scalar tensor ops per step.
    """
    sigma_from, sigma_to = sigmas[:-1], sigmas[1:]
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def with_pre_cfg_function(model_options: Mapping[str, Any] | None,
                          fn: Callable[[dict[str, Any]], list[torch.Tensor]]) -> dict[str, Any]:
    """A copy of `model_options` with `fn` appended to the pre-CFG hooks (ComfyUI's `sampler_pre_cfg_function`).

    Each hook gets "conds_out" ([cond, uncond] predictions; uncond is zeros when cfg 1 skipped it), "conds",
    "cond_scale", "timestep"/"sigma", "input", "model", "model_options", and returns the new [cond, uncond].
    """
    options = dict(model_options or {})
    options[PRE_CFG_FUNCTIONS] = [*options.get(PRE_CFG_FUNCTIONS, []), fn]
    return options


def with_post_cfg_function(model_options: Mapping[str, Any] | None, fn: Callable[[dict[str, Any]], torch.Tensor],
                           disable_cfg1_optimization: bool = False) -> dict[str, Any]:
    """A copy of `model_options` with `fn` appended to the post-CFG hooks (the caller's dict is left untouched).

    The guidance code calls every hook after combining cond/uncond, as `denoised = fn(args)` with `args` holding
    "denoised" (the CFG result), "cond_denoised", "uncond_denoised", "cond_scale", "sigma", "input",
    "model_options" (and "cond", "uncond", "model" where it has them). With `disable_cfg1_optimization` the uncond pass
    runs even at cfg 1, so "uncond_denoised" is a real prediction rather than zeros.
    """
    options = dict(model_options or {})
    options[POST_CFG_FUNCTIONS] = [*options.get(POST_CFG_FUNCTIONS, []), fn]
    if disable_cfg1_optimization:
        options[DISABLE_CFG1_OPTIMIZATION] = True
    return options


class UncondCapture:
    """Capture of the unconditional prediction for CFG++ samplers (Chung et al. 2024), through a post-CFG hook.

    `extra_args = capture.install(extra_args)` returns new extra_args whose model_options carry the hook;
    after each model call `capture.uncond` is that call's uncond_denoised.
    """

    def __init__(self) -> None:
        self.uncond: torch.Tensor | None = None

    def _hook(self, args: dict[str, Any]) -> torch.Tensor:
        self.uncond = args["uncond_denoised"]
        return args["denoised"]

    def install(self, extra_args: Mapping[str, Any] | None) -> dict[str, Any]:
        extra_args = dict(extra_args or {})
        extra_args["model_options"] = with_post_cfg_function(extra_args.get("model_options"), self._hook,
                                                             disable_cfg1_optimization=True)
        return extra_args

    def get(self) -> torch.Tensor:
        if self.uncond is None:
            raise RuntimeError("the denoiser did not call the post-CFG hooks of model_options; CFG++ samplers need "
                               f"'{POST_CFG_FUNCTIONS}' support (see comfy_core.sampling.common)")
        return self.uncond


def guidance_is_plain(model_options: Mapping[str, Any]) -> bool:
    """Whether the guided prediction under these model_options is exactly uncond + cfg·(cond − uncond), so a sampler
    may combine cond/uncond itself (no custom CFG function, no pre-/post-CFG hooks, which may rewrite the parts or
    the result, or capture them)."""
    return (not model_options.get(POST_CFG_FUNCTIONS) and not model_options.get(PRE_CFG_FUNCTIONS)
            and model_options.get(CFG_FUNCTION) is None)


def guided_prediction(model: Denoiser, x: torch.Tensor, sigma: torch.Tensor,
                      extra_args: Mapping[str, Any]) -> GuidedPrediction:
    """One model evaluation as CFG parts: the denoiser's `predict_guided` when it offers one for this call, else
    `model(...)` as an unguided prediction (uncond None, cfg 1). Samplers feed the parts to a fused step
    (`comfy_core.kernels.sampler_step.cfg_*_step`), which combines them exactly as the guider would."""
    predict = getattr(model, "predict_guided", None)
    parts = predict(x, sigma, **extra_args) if predict is not None else None
    return parts if parts is not None else GuidedPrediction(model(x, sigma, **extra_args), None, 1.0)


def report(callback: Callback | None, x: torch.Tensor, i: int, sigma: torch.Tensor, sigma_hat: torch.Tensor,
           denoised: torch.Tensor) -> None:
    """Per-step callback with k-diffusion's keys."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def renoise(model: Denoiser, sigma: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """x0 moved back up to noise level sigma with the model's own noise scaling (VE: x0 + sigma·noise)."""
    model_sampling = getattr(model, "model_sampling", None)
    if model_sampling is not None:
        return model_sampling.noise_scaling(sigma, noise, x0)
    return noise * sigma + x0
