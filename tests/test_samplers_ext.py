"""Extended samplers (multistep, SEEDS / ER-SDE, SA-Solver, UniPC): ComfyUI parity on the toy model plus properties.

Parity: each sampler runs ComfyUI's KSampler path (karras, 6 steps, seed 42) through `fixtures_sampling` and must
match ComfyUI v0.3.64's final latent to 1e-4 of the tensor max with the same model calls at the same sigmas, at
cfg 1 and at cfg 2.5 (which exercises the CFG++ variants' uncond hook).
"""
from __future__ import annotations

import math

import pytest
import torch

from fixtures_sampling import SECTIONS, case_sigmas, check_reference_case, make_toy, sampler_refs

from comfy_core.sampling import samplers_multistep, samplers_sa, samplers_stochastic, samplers_unipc
from comfy_core.sampling.samplers_multistep import _ipndm_fixed_weights, _ipndm_variable_weights, deis_coefficients
from comfy_core.sampling.samplers_sa import adams_weights
from comfy_core.sampling.samplers_unipc import unipc_coefficients

EXT_MODULES = (samplers_multistep, samplers_stochastic, samplers_sa, samplers_unipc)
EXT_NAMES = sorted(n for m in EXT_MODULES for n in m.SAMPLERS)
TOLERANCE = 1e-4  # relative to the reference's max |value|; every sampler here lands at <= 1.1e-6


def test_every_extended_name_is_registered() -> None:
    from comfy_core.sampling.samplers import KSAMPLER_NAMES, SAMPLERS

    assert len(EXT_NAMES) == 18
    for name in EXT_NAMES:
        assert name in KSAMPLER_NAMES
        assert SAMPLERS[name] is next(m.SAMPLERS[name] for m in EXT_MODULES if name in m.SAMPLERS)


@pytest.mark.parametrize("section", sorted(SECTIONS))
@pytest.mark.parametrize("name", EXT_NAMES)
def test_matches_comfyui(name: str, section: str) -> None:
    check_reference_case(name, section, TOLERANCE)


def _run(name: str, seed: int, section: str = "samplers") -> torch.Tensor:
    from comfy_core.sampling.samplers import SAMPLERS

    sigmas = case_sigmas(name)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    return SAMPLERS[name](make_toy(section), x, sigmas, extra_args={"model_options": {}}, seed=seed)


@pytest.mark.parametrize("name", EXT_NAMES)
def test_seed_dependence_matches_comfyui(name: str) -> None:
    """SDE / ancestral samplers follow their seed; the others ignore it (ComfyUI's seed-43 probe says which)."""
    changed = not torch.equal(_run(name, 42), _run(name, 43))
    assert changed == sampler_refs()["samplers"][name]["depends_on_sampler_seed"]
    assert torch.equal(_run(name, 42), _run(name, 42))


@pytest.mark.parametrize("name", EXT_NAMES)
def test_callback_once_per_step(name: str) -> None:
    from comfy_core.sampling.samplers import SAMPLERS

    sigmas = case_sigmas(name)
    seen: list[dict] = []
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * sigmas[0]  # batch of 2 rows
    out = SAMPLERS[name](make_toy("samplers_cfg"), x, sigmas, extra_args={"model_options": {}}, seed=7,
                         callback=seen.append)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert [info["i"] for info in seen] == list(range(len(sigmas) - 1))
    for info in seen:
        assert set(info) >= {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert info["denoised"].shape == x.shape
        assert float(info["sigma"]) == pytest.approx(float(sigmas[info["i"]]))


@pytest.mark.parametrize("name", EXT_NAMES)
def test_partial_schedule_not_ending_at_zero(name: str) -> None:
    """A split schedule (last sigma > 0, as SplitSigmas gives) must still produce a finite latent of the same shape."""
    from comfy_core.sampling.samplers import SAMPLERS

    sigmas = case_sigmas(name)[:-2]
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * sigmas[0]
    out = SAMPLERS[name](make_toy("samplers"), x, sigmas, extra_args={"model_options": {}}, seed=3)
    assert out.shape == x.shape and torch.isfinite(out).all()
    # with the toy, the state at sigma s stays near x0 + s * noise: it is neither blown up nor fully denoised
    assert 0.1 < float(out.std()) < 10 * float(sigmas[-1]) + 5


def test_uni_pc_single_step_matches_comfyui_quirk() -> None:
    """With one step ComfyUI's UniPC (order 0) evaluates the model once and only rescales x by the VP alphas."""
    sigmas = torch.tensor([14.614643, 0.0])
    model = make_toy("samplers")
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4)) * 14.6
    out = samplers_unipc.SAMPLERS["uni_pc"](model, x, sigmas, extra_args={"model_options": {}})
    assert len(model.calls) == 1
    alpha_last = 1 / math.sqrt(1 + 0.001**2)
    torch.testing.assert_close(out, x / math.sqrt(1 + 14.614643**2) / alpha_last, rtol=1e-5, atol=1e-6)


# --- coefficient properties -------------------------------------------------------------------------------------------


def test_ipndm_variable_weights() -> None:
    """Orders 1-3 reduce to Adams-Bashforth on equal steps and are consistent (weights sum to 1) on any steps.

    Order 4 of the reference variable-step formula, which ComfyUI's numbers follow (see the parity test), is neither
    AB4 on equal steps nor exactly consistent on uneven ones (sum 0.998 below); only its equal-step sum is pinned.
    """
    for order in (1, 2, 3):
        assert _ipndm_variable_weights(order, -0.5, -0.5, -0.5, -0.5) == pytest.approx(_ipndm_fixed_weights(order))
        assert sum(_ipndm_variable_weights(order, -0.3, -0.7, -1.1, -2.0)) == pytest.approx(1.0)
    for order in (1, 2, 3, 4):
        assert sum(_ipndm_fixed_weights(order)) == pytest.approx(1.0)
    assert _ipndm_variable_weights(4, -0.5, -0.5, -0.5, -0.5) == pytest.approx([57 / 24, -65 / 24, 43 / 24, -11 / 24])


def test_deis_weights_integrate_dsigma() -> None:
    """The Lagrange basis sums to 1, so a step's weights sum to sigma_{i+1} - sigma_i (up to the rectangle rule)."""
    sigmas = case_sigmas("deis")
    coeffs = deis_coefficients(sigmas, max_order=3)
    assert coeffs[0] == []
    for i, row in enumerate(coeffs[1:-1], start=1):
        assert len(row) == min(i + 1, 3)
        dsigma = float(sigmas[i + 1] - sigmas[i])
        assert sum(row) == pytest.approx(dsigma, rel=2e-3)


def test_sa_solver_one_node_weight_is_exponential_euler() -> None:
    """One node, tau = 0: b = alpha_t (1 - e^{-h}); tau = 1: b = alpha_t (1 - e^{-2h}) (the SDE kernel)."""
    lam_s, lam_t = 0.5, 1.25
    h = lam_t - lam_s
    sigma_t = math.exp(-lam_t)
    assert adams_weights(sigma_t, [lam_s], lam_s, lam_t, 0.0) == pytest.approx([-math.expm1(-h)])
    assert adams_weights(sigma_t, [lam_s], lam_s, lam_t, 1.0) == pytest.approx([-math.expm1(-2 * h)])
    # any number of nodes: the weights still sum to the one-node weight (the basis sums to 1)
    assert sum(adams_weights(sigma_t, [-0.7, -0.1, lam_s], lam_s, lam_t, 1.0)) == pytest.approx(-math.expm1(-2 * h))


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_coefficients(variant: str) -> None:
    b_h, rhos_p, rhos_c = unipc_coefficients([1.0], 0.8, variant)
    assert rhos_p is None and rhos_c == [0.5]
    assert b_h == pytest.approx(-0.8 if variant == "bh1" else math.expm1(-0.8))
    b_h, rhos_p, rhos_c = unipc_coefficients([-0.6, -1.3, 1.0], 0.8, variant)
    assert len(rhos_p) == 2 and len(rhos_c) == 3 and all(map(math.isfinite, rhos_p + rhos_c))
    with pytest.raises(ValueError):
        unipc_coefficients([1.0], 0.8, "vary_coeff")


@pytest.mark.parametrize("name", ["dpmpp_3m_sde", "ipndm_v", "deis", "er_sde", "seeds_3", "sa_solver", "uni_pc_bh2"])
def test_zero_length_step_is_a_clear_error(name: str) -> None:
    """Solvers that divide by step sizes refuse a repeated sigma (ComfyUI returns NaNs there) before any model call."""
    from comfy_core.sampling.samplers import SAMPLERS

    sigmas = torch.tensor([14.6, 6.0, 6.0, 1.0, 0.0])
    model = make_toy("samplers")
    with pytest.raises(ValueError, match="distinct consecutive sigmas"):
        SAMPLERS[name](model, torch.zeros(1, 4, 8, 8), sigmas, extra_args={"model_options": {}}, seed=1)
    assert model.calls == []


@pytest.mark.parametrize("name", ["ipndm", "res_multistep", "res_multistep_ancestral", "gradient_estimation",
                                  "seeds_2"])
def test_zero_length_step_is_harmless_where_comfyui_allows_it(name: str) -> None:
    from comfy_core.sampling.samplers import SAMPLERS

    sigmas = torch.tensor([14.6, 6.0, 6.0, 1.0, 0.0])
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5)) * 14.6
    out = SAMPLERS[name](make_toy("samplers"), x, sigmas, extra_args={"model_options": {}}, seed=1)
    assert torch.isfinite(out).all()
