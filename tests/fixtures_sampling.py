"""Shared sampler test harness: ComfyUI's toy denoiser, a ComfyUI-like CFG combiner, and the reference loader.

Reference data (tests/data/samplers_ref.*) was produced by ComfyUI v0.3.64 on CPU: every sampler runs 6 karras steps
from seed-42 noise on a 1x4x8x8 zero latent with a toy model instead of the UNet:

    denoised_row = x * 0.9 / sqrt(1 + sigma**2) + F * mean(c_crossattn_row)

Section "samplers": cfg 1 and the conditioning ignored (the mean factor is dropped). Section "samplers_cfg": cfg 2.5,
cond mean 1.0 and uncond mean 0.25. Outputs are stored after process_latent_out (/ 0.18215).

`run_reference_case(name, section)` reproduces one case end to end (scheduler, noise, noise scaling, sampler,
latent-out) and returns (ours, expected, model_calls); a name without an implementation raises `NotImplementedError`.
`check_reference_case(name, section, tolerance)` runs it and asserts the output and the model calls.
"""
from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from comfy_core.models.model_sampling import SD15_LATENT, ModelSampling
from comfy_core.sampling.common import (
    DISABLE_CFG1_OPTIMIZATION, POST_CFG_FUNCTIONS, GuidedPrediction, guidance_is_plain,
)
from comfy_core.sampling.noise import prepare_noise
from comfy_core.sampling.schedulers import ksampler_sigmas

DATA = Path(__file__).parent / "data"
SECTIONS = {"samplers": 1.0, "samplers_cfg": 2.5}
SEED = 42
STEPS = 6


@functools.cache
def sampler_refs() -> dict[str, Any]:
    return json.loads((DATA / "samplers_ref.json").read_text())


@functools.cache
def sampler_tensors() -> dict[str, torch.Tensor]:
    return load_file(DATA / "samplers_ref.safetensors")


def expected_output(name: str, section: str) -> torch.Tensor:
    return sampler_tensors()[name if section == "samplers" else f"cfg/{name}"]


class ToyCFGDenoiser:
    """k-diffusion denoiser `model(x, sigma, model_options=...)` = CFG over the toy model, as ComfyUI batches it.

    cond and uncond rows run as one batch of 2; at cfg 1 the uncond pass is skipped (its prediction is zeros) unless
    model_options sets "disable_cfg1_optimization"; post-CFG hooks get ComfyUI's argument dict. Each call's per-row
    sigmas are recorded in `calls`. Like `CFGDenoiser` it offers `predict_guided` (the parts before the combine)
    when no hooks are set, so the reference cases run the samplers' fused path; `fused=False` hides it, and
    `guided_calls` counts the evaluations that went through it.
    """

    def __init__(self, F: torch.Tensor, cfg: float, conditioned: bool, model_sampling: ModelSampling | None = None,
                 fused: bool = True):
        self.F, self.cfg, self.conditioned = F, cfg, conditioned
        self.model_sampling = model_sampling
        self.calls: list[list[float]] = []
        self.guided_calls = 0
        if not fused:
            self.predict_guided = None  # shadows the method: guided_prediction then calls the model whole

    def _toy(self, x: torch.Tensor, sigma: torch.Tensor, c_means: list[float]) -> torch.Tensor:
        s = sigma.reshape(-1, 1, 1, 1)  # [B] -> [B,1,1,1]
        out = x * 0.9 / (1 + s**2) ** 0.5
        if not self.conditioned:
            return out + self.F
        c = torch.tensor(c_means, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        return out + self.F * c

    def _predict(self, x: torch.Tensor, sigma: torch.Tensor,
                 model_options: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond, uncond), uncond None when the cfg-1 shortcut skips it."""
        skip_uncond = math.isclose(self.cfg, 1.0) and not model_options.get(DISABLE_CFG1_OPTIMIZATION, False)
        b = x.shape[0]
        if skip_uncond:
            self.calls.append([float(s) for s in sigma])
            return self._toy(x, sigma, [1.0] * b), None
        out = self._toy(torch.cat([x, x]), torch.cat([sigma, sigma]), [1.0] * b + [0.25] * b)
        self.calls.append([float(s) for s in torch.cat([sigma, sigma])])
        return out[:b], out[b:]

    def predict_guided(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict[str, Any] | None = None,
                        **_: Any) -> GuidedPrediction | None:
        model_options = model_options or {}
        if not guidance_is_plain(model_options):
            return None
        self.guided_calls += 1
        return GuidedPrediction(*self._predict(x, sigma, model_options), self.cfg)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict[str, Any] | None = None,
                 **_: Any) -> torch.Tensor:
        model_options = model_options or {}
        cond, uncond = self._predict(x, sigma, model_options)
        uncond = torch.zeros_like(cond) if uncond is None else uncond
        denoised = uncond + (cond - uncond) * self.cfg
        for fn in model_options.get(POST_CFG_FUNCTIONS, []):
            denoised = fn({"denoised": denoised, "cond_denoised": cond, "uncond_denoised": uncond,
                           "cond_scale": self.cfg, "sigma": sigma, "input": x, "model_options": model_options})
        return denoised


def make_toy(section: str, model_sampling: ModelSampling | None = None, fused: bool = True) -> ToyCFGDenoiser:
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}")
    return ToyCFGDenoiser(sampler_tensors()["F"], SECTIONS[section], section == "samplers_cfg", model_sampling,
                          fused)


def case_sigmas(name: str) -> torch.Tensor:
    from comfy_core.sampling.samplers import DISCARD_PENULTIMATE_SIGMA_SAMPLERS

    return ksampler_sigmas(ModelSampling(), "karras", STEPS, 1.0, name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS)


def run_reference_case(name: str, section: str, seed: int = SEED,
                       fused: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[list[float]]]:
    """Run sampler `name` like ComfyUI's KSampler on the toy; returns (ours, expected, per-call sigmas).
    `fused=False`: the toy hides `predict_guided`, so every sampler gets the combined prediction."""
    from comfy_core.sampling.samplers import SAMPLERS

    if name not in SAMPLERS:
        raise NotImplementedError(name)
    ms = ModelSampling()
    model = make_toy(section, ms, fused)
    sigmas = case_sigmas(name)
    latent = SD15_LATENT.process_in(torch.zeros(1, 4, 8, 8))
    noise = prepare_noise(latent, seed)
    x = ms.noise_scaling(sigmas[0], noise, latent, ms.max_denoise(sigmas))
    out = SAMPLERS[name](model, x, sigmas, extra_args={"model_options": {}}, seed=seed)
    out = SD15_LATENT.process_out(ms.inverse_noise_scaling(sigmas[-1], out))
    return out, expected_output(name, section), model.calls


def relative_error(ours: torch.Tensor, expected: torch.Tensor) -> float:
    """max |ours - expected| / max |expected| (the refs' tolerance measure)."""
    return float((ours - expected).abs().max() / expected.abs().max())


def check_reference_case(name: str, section: str, tolerance: float) -> None:
    """Assert that sampler `name` reproduces ComfyUI's case: finite output within `tolerance` (relative error) and
    the same number of model calls at the same sigmas."""
    ours, expected, calls = run_reference_case(name, section)
    ref = sampler_refs()[section][name]
    assert torch.isfinite(ours).all()
    assert relative_error(ours, expected) <= tolerance
    assert len(calls) == ref["model_calls"]
    for got, want in zip(calls, ref["model_call_sigmas"]):
        assert got == pytest.approx(want, rel=1e-5)
