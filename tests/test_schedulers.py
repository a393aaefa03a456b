"""Schedulers and the KSampler sigma logic against ComfyUI v0.3.64's exact sigma lists."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from comfy_core.models.model_sampling import ModelSampling
from comfy_core.sampling.schedulers import (
    SCHEDULER_NAMES, beta_ppf, betainc, calculate_sigmas, get_sigmas_karras, ksampler_sigmas,
)

REF = json.loads((Path(__file__).parent / "data" / "sigmas_ref.json").read_text())
CASES = [(key, kind) for key in REF["table"] for kind in ("default", "discard_penultimate")]


@pytest.fixture(scope="module")
def ms() -> ModelSampling:
    return ModelSampling()


@pytest.mark.parametrize("key,kind", CASES, ids=[f"{k}-{d}" for k, d in CASES])
def test_ksampler_sigmas_match_comfyui(ms: ModelSampling, key: str, kind: str) -> None:
    scheduler, steps, denoise = key.split("|")
    ours = ksampler_sigmas(ms, scheduler, int(steps), float(denoise), kind == "discard_penultimate")
    expected = torch.tensor(REF["table"][key][kind], dtype=torch.float32)
    assert ours.dtype == torch.float32 and ours.shape == expected.shape
    # kl_optimal with 1 step is 0/0 = nan in ComfyUI too; nan must line up with nan
    assert torch.equal(torch.isnan(ours), torch.isnan(expected))
    mask = ~torch.isnan(expected)
    assert (ours[mask] - expected[mask]).abs().max() <= 1e-5


def test_scheduler_names(ms: ModelSampling) -> None:
    assert list(SCHEDULER_NAMES) == [k.split("|")[0] for k in REF["table"]][::6]
    for name in SCHEDULER_NAMES:
        sigmas = calculate_sigmas(ms, name, 10)
        assert sigmas[-1] == 0 and len(sigmas) == 11
        assert torch.all(sigmas[:-1] > 0) and torch.all(sigmas[1:] < sigmas[:-1]), name


def test_unknown_scheduler_is_a_value_error(ms: ModelSampling) -> None:
    with pytest.raises(ValueError, match="unknown scheduler 'nope'"):
        calculate_sigmas(ms, "nope", 4)


def test_denoise_edges(ms: ModelSampling) -> None:
    assert ksampler_sigmas(ms, "normal", 20, 0.0).numel() == 0
    assert ksampler_sigmas(ms, "normal", 20, -1.0).numel() == 0
    full = ksampler_sigmas(ms, "karras", 10, None)
    assert torch.equal(full, ksampler_sigmas(ms, "karras", 10, 1.0))
    partial = ksampler_sigmas(ms, "karras", 10, 0.5)
    assert torch.equal(partial, calculate_sigmas(ms, "karras", 20)[-11:])
    with pytest.raises(ValueError):
        ksampler_sigmas(ms, "karras", 0)


def test_karras_endpoints() -> None:
    sigmas = get_sigmas_karras(5, 0.1, 10.0)
    assert sigmas[0] == pytest.approx(10.0) and sigmas[-2] == pytest.approx(0.1) and sigmas[-1] == 0


@pytest.mark.parametrize("a,b,exact", [
    (1.0, 1.0, lambda p: p),                       # uniform
    (2.0, 1.0, lambda p: np.sqrt(p)),              # CDF x^2
    (1.0, 2.0, lambda p: 1 - np.sqrt(1 - p)),      # CDF 1 - (1-x)^2
    (0.5, 0.5, lambda p: np.sin(np.pi * p / 2) ** 2),  # arcsine distribution
])
def test_beta_ppf_closed_forms(a: float, b: float, exact) -> None:
    p = np.linspace(0, 1, 101)
    assert np.max(np.abs(beta_ppf(p, a, b) - exact(p))) < 1e-12
    assert np.max(np.abs(betainc(exact(p), a, b) - p)) < 1e-12


def test_beta_ppf_symmetric_median_is_exact() -> None:
    assert beta_ppf(np.array([0.5]), 0.6, 0.6)[0] == 0.5  # the scheduler rounds 0.5 * 999 = 499.5


def test_beta_ppf_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    p = np.concatenate([np.linspace(0, 1, 1001), [1e-9, 1 - 1e-9]])
    for a, b in [(0.6, 0.6), (0.3, 1.7), (5.0, 0.7)]:
        assert np.max(np.abs(beta_ppf(p, a, b) - stats.beta.ppf(p, a, b))) < 1e-11
    for steps in range(1, 121):  # what the beta scheduler actually needs: identical rounded timesteps
        q = 1 - np.linspace(0, 1, steps, endpoint=False)
        assert np.array_equal(np.rint(beta_ppf(q, 0.6, 0.6) * 999), np.rint(stats.beta.ppf(q, 0.6, 0.6) * 999))
