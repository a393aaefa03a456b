"""ModelSampling (eps / v) and latent formats against ComfyUI's ModelSamplingDiscrete numbers."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from comfy_core.models.model_sampling import (
    SD2_LATENT, SD15_LATENT, SDXL_LATENT, ModelSampling, ModelSamplingV,
)

REF = json.loads((Path(__file__).parent / "data" / "sigmas_ref.json").read_text())


@pytest.fixture(scope="module")
def ms() -> ModelSampling:
    return ModelSampling()


def test_sigma_tables_are_comfyui_exact(ms: ModelSampling) -> None:
    assert ms.sigmas.dtype == torch.float32 and ms.sigmas.shape == (1000,)
    assert torch.equal(ms.sigmas, torch.tensor(REF["model_sigmas"]))
    assert torch.equal(ms.log_sigmas, torch.tensor(REF["model_log_sigmas"]))
    assert float(ms.sigma_min) == REF["sigma_min"] and float(ms.sigma_max) == REF["sigma_max"]
    assert torch.equal(ModelSamplingV().sigmas, ms.sigmas)


def test_timestep_and_sigma_are_inverse_on_the_grid(ms: ModelSampling) -> None:
    t = torch.arange(1000)
    assert torch.equal(ms.timestep(ms.sigmas), t)
    assert torch.allclose(ms.sigma(t), ms.sigmas, rtol=1e-6)
    # fractional timesteps interpolate in log-sigma; out-of-range ones clamp
    mid = ms.sigma(torch.tensor(10.5))
    assert float(mid) == pytest.approx(math.sqrt(float(ms.sigmas[10]) * float(ms.sigmas[11])), rel=1e-6)
    assert float(ms.sigma(torch.tensor(5000.0))) == pytest.approx(float(ms.sigma_max), rel=1e-6)
    assert ms.timestep(torch.tensor([14.0, 0.03])).tolist() == [int(ms.timestep(torch.tensor(14.0))), 0]


def test_percent_to_sigma(ms: ModelSampling) -> None:
    assert ms.percent_to_sigma(0.0) == 999999999.9
    assert ms.percent_to_sigma(1.0) == 0.0
    assert ms.percent_to_sigma(0.5) == pytest.approx(float(ms.sigma(torch.tensor(499.5))), rel=1e-7)
    assert ms.percent_to_sigma(0.25) > ms.percent_to_sigma(0.75)


def test_eps_parameterisation(ms: ModelSampling) -> None:
    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    sigma = torch.tensor([2.0, 0.5])
    x = x0 + eps * sigma.view(2, 1, 1, 1)
    assert torch.allclose(ms.calculate_input(sigma, x), x / (sigma.view(2, 1, 1, 1) ** 2 + 1) ** 0.5)
    assert torch.allclose(ms.calculate_denoised(sigma, eps, x), x0, atol=1e-6)


def test_v_parameterisation_recovers_x0() -> None:
    ms = ModelSamplingV()
    x0, eps = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    sigma = torch.tensor([3.0, 0.2]).view(2, 1, 1, 1)
    alpha, sigma_vp = 1 / (1 + sigma**2) ** 0.5, sigma / (1 + sigma**2) ** 0.5
    v = alpha * eps - sigma_vp * x0  # Salimans & Ho (2022) in the VP space
    assert torch.allclose(ms.calculate_denoised(sigma.flatten(), v, x0 + sigma * eps), x0, atol=1e-5)
    with pytest.raises(ValueError):
        ModelSampling("x0")  # type: ignore[arg-type]


def test_noise_scaling(ms: ModelSampling) -> None:
    noise, latent = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    noise_copy, latent_copy = noise.clone(), latent.clone()
    sigmas = torch.tensor([float(ms.sigma_max), 1.0, 0.0])
    assert ms.max_denoise(sigmas) and not ms.max_denoise(sigmas[1:])
    full = ms.noise_scaling(sigmas[0], noise, latent, max_denoise=True)
    assert torch.allclose(full, noise * math.sqrt(1 + float(sigmas[0]) ** 2) + latent)
    assert torch.allclose(ms.noise_scaling(torch.tensor(2.0), noise, latent), noise * 2 + latent)
    assert ms.inverse_noise_scaling(sigmas[-1], full) is full
    assert torch.equal(noise, noise_copy) and torch.equal(latent, latent_copy)  # inputs untouched


def test_latent_formats() -> None:
    assert SD15_LATENT.scale_factor == 0.18215 and SD2_LATENT is SD15_LATENT and SDXL_LATENT.scale_factor == 0.13025
    assert SD15_LATENT.latent_channels == SDXL_LATENT.latent_channels == 4
    z = torch.randn(1, 4, 8, 8)
    assert torch.allclose(SD15_LATENT.process_out(SD15_LATENT.process_in(z)), z, atol=1e-6)
    assert torch.equal(SDXL_LATENT.process_in(z), z * 0.13025)
    for fmt in (SD15_LATENT, SDXL_LATENT):
        rgb = fmt.preview_rgb(z * 5)
        assert rgb.shape == (1, 8, 8, 3) and rgb.min() >= 0 and rgb.max() <= 1
    # a latent along channel 0 maps to the first factor row (plus SDXL's bias)
    one = torch.zeros(1, 4, 1, 1)
    one[0, 0] = 1.0
    factors, bias = torch.tensor(SDXL_LATENT.latent_rgb_factors[0]), torch.tensor(SDXL_LATENT.latent_rgb_factors_bias)
    expect = (factors + bias + 1) / 2
    assert torch.allclose(SDXL_LATENT.preview_rgb(one)[0, 0, 0], expect)
