"""Fused sampler steps: ComfyUI parity of the torch path, Triton kernels (interpreter / CUDA), dispatch."""
from __future__ import annotations

import math

import pytest
import torch

from comfy_core.errors import ComfyCoreError
from comfy_core.kernels import sampler_step as S
from comfy_core.kernels._triton import triton_available
from fixtures_kernels import (DTYPES, HOPPER_MAX_SHARED, STEP_CASES, TOY_SAMPLERS, compile_for_gpu,
                              load_sampler_refs, run_interpreter_worker, run_step, sample_toy, step_inputs)

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed (optional extra [cuda])")
# relative to max(1, |reference|): fp32 exact up to op order; fp16/bf16 one rounding of the same fp32 value, which
# may differ by 1 ulp (FMA contraction on CUDA; the interpreter truncates when converting to bf16)
STEP_TOL = {"fp32": 1e-6, "fp16": 2.0**-10, "bf16": 2.0**-7}


# --- ComfyUI parity (torch path, CPU fp32): bit-exact against real ComfyUI v0.3.64 outputs -------------------------

@pytest.fixture(scope="module")
def sampler_refs() -> dict[str, torch.Tensor]:
    return load_sampler_refs()


@pytest.mark.parametrize("guided", [False, True], ids=["cfg1", "cfg2.5"])
@pytest.mark.parametrize("name", TOY_SAMPLERS)
def test_torch_steps_reproduce_comfyui_bit_exact(sampler_refs, name, guided):
    out = sample_toy(name, guided, sampler_refs, backend="torch")
    expected = sampler_refs[("cfg/" if guided else "") + name]
    assert torch.equal(out, expected), (out - expected).abs().max()


def test_dpmpp_2m_coefficients_follow_the_paper():
    """ratio = σ'/σ, expm1_neg_h = σ'/σ − 1 (h = log σ − log σ'), r = h_last/h."""
    sigma_prev, sigma, sigma_next = 14.6146, 6.0822, 2.2322
    ratio, expm1_neg_h, c_den, c_old = S.dpmpp_2m_coefficients(sigma, sigma_next, sigma_prev)
    h, h_last = math.log(sigma / sigma_next), math.log(sigma_prev / sigma)
    r = h_last / h
    assert ratio == pytest.approx(sigma_next / sigma, rel=1e-6)
    assert expm1_neg_h == pytest.approx(math.expm1(-h), rel=1e-6)
    assert (c_den, c_old) == (pytest.approx(1 + 1 / (2 * r), rel=1e-6), pytest.approx(1 / (2 * r), rel=1e-6))
    assert S.dpmpp_2m_coefficients(sigma, sigma_next)[2:] == (1.0, 0.0)  # first step: first order
    ratio0, expm1_0, c_den0, c_old0 = S.dpmpp_2m_coefficients(0.03, 0.0, 0.1)  # last step: x_next = denoised
    assert (ratio0, expm1_0, c_den0, c_old0) == (0.0, -1.0, 1.0, 0.0)


def test_scalars_may_be_zero_dim_tensors():
    t = step_inputs("fp32")
    floats = S.cfg_dpmpp_2m_step(t["x"], t["cond"], t["uncond"], 7.5, 6.0, 3.0, t["old_denoised"], 9.0)
    tensors = S.cfg_dpmpp_2m_step(t["x"], t["cond"], t["uncond"], torch.tensor(7.5), torch.tensor(6.0),
                                  torch.tensor(3.0), t["old_denoised"], torch.tensor(9.0))
    assert torch.equal(floats.x, tensors.x) and torch.equal(floats.denoised, tensors.denoised)


def test_euler_step_math_written_out():
    t = step_inputs("fp32")
    res = S.cfg_euler_step(t["x"], t["cond"], t["uncond"], 4.0, 2.0, 1.5)
    den = t["uncond"] + (t["cond"] - t["uncond"]) * 4.0
    torch.testing.assert_close(res.denoised, den, rtol=0, atol=0)
    torch.testing.assert_close(res.x, t["x"] + (t["x"] - den) / 2.0 * -0.5, rtol=0, atol=0)


def test_euler_ancestral_last_step_returns_denoised():
    t = step_inputs("fp32")
    res = S.cfg_euler_ancestral_step(t["x"], t["cond"], t["uncond"], 3.0, 0.03, 0.0, 0.0, t["noise"])
    assert torch.equal(res.x, res.denoised)
    without_noise = S.cfg_euler_ancestral_step(t["x"], t["cond"], t["uncond"], 3.0, 0.03, 0.0, 0.0, None)
    assert torch.equal(without_noise.x, res.x)
    with pytest.raises(ComfyCoreError, match="noise is required"):
        S.cfg_euler_ancestral_step(t["x"], t["cond"], t["uncond"], 3.0, 2.0, 1.0, 0.5, None)


def test_write_denoised_false_returns_none():
    t = step_inputs("fp16")
    res = S.cfg_euler_step(t["x"], t["cond"], None, 1.0, 2.0, 1.0, write_denoised=False)
    assert res.denoised is None and res.x.dtype == torch.float16


@pytest.mark.parametrize("call", ["mismatched-shape", "old-without-sigma-prev", "bad-backend"])
def test_step_errors_are_typed(call):
    t = step_inputs("fp32")
    with pytest.raises(ComfyCoreError):
        if call == "mismatched-shape":
            S.cfg_euler_step(t["x"], t["cond"][:, :2], t["uncond"], 7.0, 2.0, 1.0)
        elif call == "old-without-sigma-prev":
            S.cfg_dpmpp_2m_step(t["x"], t["cond"], t["uncond"], 7.0, 2.0, 1.0, t["old_denoised"])
        else:
            S.cfg_euler_step(t["x"], t["cond"], t["uncond"], 7.0, 2.0, 1.0, backend="cuda-graphs")


# --- dispatch -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, expected", [
    ({"device_type": "cpu", "dtype": torch.float32}, "torch"),
    ({"device_type": "cuda", "dtype": torch.float16}, "triton"),
    ({"device_type": "cuda", "dtype": torch.float32}, "triton"),
    ({"device_type": "cuda", "dtype": torch.float16, "capability": (8, 6)}, "triton"),
    ({"device_type": "cuda", "dtype": torch.float16, "capability": (7, 0)}, "torch"),
    ({"device_type": "cuda", "dtype": torch.float16, "triton_available": False}, "torch"),
    ({"device_type": "cuda", "dtype": torch.float16, "uniform": False}, "torch"),
    ({"device_type": "cuda", "dtype": torch.float64}, "torch"),
    ({"device_type": "cuda", "dtype": torch.float16, "requested": "torch"}, "torch"),
    ({"device_type": "cpu", "dtype": torch.float32, "requested": "triton"}, "torch"),
    ({"device_type": "cpu", "dtype": torch.float32, "requested": "triton", "interpreting": True}, "triton"),
    ({"device_type": "cpu", "dtype": torch.float32, "interpreting": True}, "torch"),  # auto never interprets
])
def test_select_step_backend(kwargs, expected):
    args = {"uniform": True, "triton_available": True, **kwargs}
    assert S.select_step_backend(**args) == expected


def test_resolve_step_backend_checks_layout(monkeypatch):
    monkeypatch.setattr(S, "triton_available", lambda: True)
    monkeypatch.setattr(S, "triton_interpreting", lambda: True)
    x = torch.zeros(2, 4, 8, 8)
    assert S.resolve_step_backend(x, x.clone(), backend="triton") == "triton"
    assert S.resolve_step_backend(x, x.transpose(2, 3), backend="triton") == "torch"  # not contiguous
    assert S.resolve_step_backend(x, x.half(), backend="triton") == "torch"  # mixed dtypes
    monkeypatch.setenv(S.ENV_VAR, "torch")
    assert S.resolve_step_backend(x, x.clone()) == "torch"
    monkeypatch.setenv(S.ENV_VAR, "triton")
    assert S.resolve_step_backend(x, x.clone()) == "triton"


# --- Triton kernels under the CPU interpreter (subprocess; see fixtures_kernels) ------------------------------------

@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    return run_interpreter_worker("sampler_step")


@needs_triton
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(STEP_CASES))
def test_triton_step_matches_torch_interpreted(interpreter_results, case, dtype):
    assert interpreter_results["interpreted"] is True
    res = interpreter_results[f"{case}-{dtype}"]
    assert res["backend"] == "triton" and res["dtype_ok"]
    assert res["err_x"] <= STEP_TOL[dtype] * max(1.0, res["x_max"]), res
    if STEP_CASES[case][1].get("write_denoised", True):
        assert res["err_den"] <= STEP_TOL[dtype] * max(1.0, res["den_max"]), res
    else:
        assert res["den_none"]


@needs_triton
@pytest.mark.parametrize("key", [("cfg/" if g else "") + n for n in TOY_SAMPLERS for g in (False, True)])
def test_triton_steps_reproduce_comfyui_interpreted(interpreter_results, key):
    res = interpreter_results[f"comfyui-{key}"]
    assert res["err"] <= 1e-6 * res["ref_max"], res


# --- ahead-of-time compile for Hopper (sm_90): the CUDA kernels build, vectorised, without spills -----------------

@needs_triton
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("kernel", ["euler", "dpmpp_2m"])
def test_step_kernels_compile_for_hopper(kernel, dtype):
    from comfy_core.kernels import triton_sampler_step as TS

    if TS.INTERPRETED:
        pytest.skip("kernel module was imported under TRITON_INTERPRET=1")
    t = torch.empty(2, 4, 128, 128, dtype=DTYPES[dtype], device="meta")
    if kernel == "euler":
        fn, tensors, scalars = TS._cfg_euler_kernel, "X COND UNCOND NOISE OUT DEN", "cfg sigma dt noise_scale s_noise"
        flags = {"HAS_UNCOND": True, "HAS_NOISE": True, "RETURN_DENOISED": False, "WRITE_DENOISED": True}
    else:
        fn, tensors, scalars = TS._cfg_dpmpp_2m_kernel, "X COND UNCOND OLD OUT DEN", "cfg ratio expm1_neg_h c_den c_old"
        flags = {"HAS_UNCOND": True, "HAS_OLD": True, "WRITE_DENOISED": True}
    values = {**{n: t for n in tensors.split()}, **{n: 0.5 for n in scalars.split()}, "N": t.numel()}
    res = compile_for_gpu(fn, values, {**flags, "BLOCK": TS.BLOCK}, TS.NUM_WARPS, 1)
    assert res["shared"] <= HOPPER_MAX_SHARED
    # 16-byte vector loads and stores (N % 16 == 0 here; a ragged N falls back to scalar accesses)
    assert "ld.global.v4.b32" in res["ptx"] and "st.global.v4.b32" in res["ptx"]
    if res["stack"] is not None:
        assert res["stack"] == 0


# --- CUDA -----------------------------------------------------------------------------------------------------------

@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("case", list(STEP_CASES))
def test_triton_step_matches_torch_cuda(case, dtype):
    t = step_inputs(dtype, shape=(2, 4, 128, 128), device="cuda")
    assert S.resolve_step_backend(t["x"], t["cond"], t["uncond"]) == "triton"
    step, params = STEP_CASES[case]
    got, ref = run_step(step, params, t, None), run_step(step, params, t, "torch")
    assert got.x.dtype == t["x"].dtype
    tol = STEP_TOL[dtype] * 2  # fp32 ulps of a GPU FMA chain
    assert (got.x.float() - ref.x.float()).abs().max().item() <= tol * max(1.0, ref.x.float().abs().max().item())
    if got.denoised is not None:
        err = (got.denoised.float() - ref.denoised.float()).abs().max().item()
        assert err <= tol * max(1.0, ref.denoised.float().abs().max().item())


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("key", [("cfg/" if g else "") + n for n in TOY_SAMPLERS for g in (False, True)])
def test_triton_steps_reproduce_comfyui_cuda(sampler_refs, key):
    name, guided = key.removeprefix("cfg/"), key.startswith("cfg/")
    out = sample_toy(name, guided, sampler_refs, backend=None, device="cuda")
    assert (out - sampler_refs[key]).abs().max().item() <= 1e-4 * sampler_refs[key].abs().max().item()
