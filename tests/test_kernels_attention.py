"""Attention kernel: Triton flash attention (interpreter on CPU, compiled on CUDA) and the backend dispatcher."""
from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch

from comfy_core.errors import ComfyCoreError
from comfy_core.kernels import attention as A
from comfy_core.kernels._triton import triton_available
from fixtures_kernels import (ATTENTION_CASES, DTYPES, HOPPER_MAX_SHARED, attention_inputs, compile_for_gpu,
                              run_interpreter_worker)

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton is not installed (optional extra [cuda])")
# max |triton - fp32 reference| allowed, relative to max(1, |reference|): output rounding of each dtype, plus for
# bf16 the interpreter's fp32->bf16 conversion, which truncates (1 ulp = 2^-7 relative) instead of rounding
ATTN_TOL = {"fp32": 2e-5, "fp16": 2e-3, "bf16": 1.6e-2}


# --- Triton kernel under the CPU interpreter (in a subprocess: TRITON_INTERPRET is read at decoration time) --------

@pytest.fixture(scope="module")
def interpreter_results() -> dict:
    return run_interpreter_worker("attention")


@needs_triton
def test_interpreter_worker_really_interprets(interpreter_results):
    assert interpreter_results["interpreted"] is True


@needs_triton
@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_triton_attention_matches_reference_interpreted(interpreter_results, case):
    res = interpreter_results[case]
    dtype = ATTENTION_CASES[case][5]
    assert res["backend"] == "triton"  # forced "triton" on CPU runs the kernel when interpreting
    assert res["shape_ok"]
    assert res["err"] <= ATTN_TOL[dtype] * max(1.0, res["ref_max"]), res


# --- dispatcher: pure decisions -------------------------------------------------------------------------------------

def _select(device="cuda", dtype=torch.float16, head_dim=40, requested="auto", triton=True, interpreting=False,
            **shape):
    return A.select_backend(device_type=device, dtype=dtype, head_dim=head_dim, requested=requested,
                            triton_available=triton, interpreting=interpreting, **shape)


@pytest.mark.parametrize("kwargs, expected", [
    ({"device": "cpu", "dtype": torch.float32}, "sdpa"),
    ({"device": "cpu", "dtype": torch.float16}, "sdpa"),
    ({"device": "cuda", "dtype": torch.float16, "head_dim": 40}, "triton"),
    ({"device": "cuda", "dtype": torch.bfloat16, "head_dim": 160}, "triton"),
    ({"device": "cuda", "dtype": torch.float16, "head_dim": 256}, "triton"),
    ({"device": "cuda", "dtype": torch.float16, "triton": False}, "sdpa"),
    ({"device": "cuda", "dtype": torch.float16, "capability": (9, 0)}, "triton"),
    ({"device": "cuda", "dtype": torch.float16, "capability": (7, 5)}, "sdpa"),
    ({"device": "cuda", "dtype": torch.float16, "capability": (7, 5), "requested": "triton"}, "sdpa"),
    ({"device": "cuda", "dtype": torch.float32}, "sdpa"),
    ({"device": "cuda", "dtype": torch.float32, "requested": "triton"}, "triton"),
    ({"device": "cuda", "dtype": torch.float16, "head_dim": 8}, "sdpa"),
    ({"device": "cuda", "dtype": torch.float16, "head_dim": 512}, "sdpa"),
    ({"device": "cuda", "dtype": torch.float16, "head_dim": 512, "requested": "triton"}, "sdpa"),
    ({"device": "cuda", "dtype": torch.float16, "batch_heads": 70000}, "sdpa"),
    ({"device": "cuda", "dtype": torch.float16, "seq_kv": 0}, "sdpa"),
    ({"device": "cuda", "dtype": torch.float16, "head_dim": 64, "batch_heads": 40, "seq_q": 2**20}, "sdpa"),
    ({"device": "cuda", "dtype": torch.float16, "head_dim": 64, "batch_heads": 40, "seq_q": 2**16}, "triton"),
    ({"device": "cpu", "dtype": torch.float32, "requested": "triton"}, "sdpa"),
    ({"device": "cpu", "dtype": torch.float32, "requested": "triton", "interpreting": True}, "triton"),
    ({"device": "cpu", "dtype": torch.float32, "requested": "triton", "interpreting": True, "triton": False}, "sdpa"),
    ({"device": "mps", "dtype": torch.float16, "requested": "triton"}, "sdpa"),
    ({"device": "cuda", "dtype": torch.float16, "requested": "sdpa"}, "sdpa"),
    ({"device": "cuda", "dtype": torch.float16, "requested": "sdpa:flash"}, "sdpa:flash"),
    ({"device": "cpu", "dtype": torch.float32, "requested": "reference"}, "reference"),
])
def test_select_backend(kwargs, expected):
    assert _select(**kwargs) == expected


def test_select_backend_rejects_unknown_name():
    with pytest.raises(ComfyCoreError, match="unknown attention backend"):
        _select(requested="xformers")


def test_requested_backend_precedence(monkeypatch):
    monkeypatch.delenv(A.ENV_VAR, raising=False)
    assert A.requested_backend(None) == "auto"
    monkeypatch.setenv(A.ENV_VAR, "reference")
    assert A.requested_backend(None) == "reference"
    assert A.requested_backend("auto") == "reference"  # an "auto" config defers to the environment
    assert A.requested_backend("SDPA") == "sdpa"  # the argument wins; names are case-insensitive
    monkeypatch.setenv(A.ENV_VAR, "bogus")
    with pytest.raises(ComfyCoreError):
        A.requested_backend(None)


def test_resolve_backend_on_cpu_is_sdpa_even_when_triton_forced(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = attention_inputs((1, 2, 9, 77, 40, "fp16", {}))
    assert A.resolve_backend(q, k, v) == "sdpa"
    assert A.resolve_backend(q, k, v, "triton") == "sdpa"
    monkeypatch.setenv(A.ENV_VAR, "reference")
    assert A.resolve_backend(q, k, v) == "reference"


# --- dispatcher: results on CPU -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 8, 64, 77, 40), (1, 2, 67, 67, 80), (2, 1, 5, 154, 160), (1, 1, 3, 1, 64)])
@pytest.mark.parametrize("backend", [None, "sdpa", "sdpa:math", "reference"])
def test_attention_cpu_equals_reference(monkeypatch, shape, backend):
    monkeypatch.delenv(A.ENV_VAR, raising=False)
    b, h, sq, skv, d = shape
    q, k, v = attention_inputs((b, h, sq, skv, d, "fp32", {}), seed=1)
    out = A.attention(q, k, v, backend=backend)
    # the reference written out independently: softmax(q k^T / sqrt(D)) v in float64
    expected = torch.softmax(q.double() @ k.double().transpose(-1, -2) / math.sqrt(d), dim=-1) @ v.double()
    assert out.shape == (b, h, sq, d) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)


def test_attention_custom_scale_and_dtype_kept():
    q, k, v = attention_inputs((1, 2, 6, 77, 64, "fp32", {}), seed=2)
    out = A.attention(q, k, v, scale=0.05)
    expected = torch.softmax(q @ k.transpose(-1, -2) * 0.05, dim=-1) @ v
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=1e-5)
    qh, kh, vh = (t.to(torch.bfloat16) for t in (q, k, v))
    assert A.attention(qh, kh, vh, backend="reference").dtype == torch.bfloat16


def test_reference_chunks_query_rows(monkeypatch):
    q, k, v = attention_inputs((2, 2, 37, 50, 40, "fp32", {}), seed=3)
    whole = A.reference_attention(q, k, v)
    monkeypatch.setattr(A, "_REFERENCE_CHUNK_BYTES", 4 * 2 * 2 * 50 * 5)  # 5 query rows per chunk
    torch.testing.assert_close(A.reference_attention(q, k, v), whole, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shapes", [
    ((1, 2, 8, 40), (1, 2, 9, 40), (1, 2, 10, 40)),  # k and v lengths differ
    ((1, 2, 8, 40), (1, 3, 9, 40), (1, 3, 9, 40)),  # heads differ
    ((1, 2, 8, 40), (1, 2, 9, 64), (1, 2, 9, 64)),  # head dims differ
    ((2, 8, 40), (2, 9, 40), (2, 9, 40)),  # not 4-D
])
def test_attention_rejects_bad_shapes(shapes):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ComfyCoreError):
        A.attention(q, k, v)


def test_attention_flops_formula():
    assert A.attention_flops(2, 8, 4096, 77, 40) == 4 * 2 * 8 * 4096 * 77 * 40


def test_kernels_work_without_triton_and_never_touch_cuda(tmp_path):
    """In a fresh interpreter with triton blocked, every public path runs on torch and CUDA stays uninitialised."""
    script = textwrap.dedent("""
        import sys
        sys.modules["triton"] = None  # makes `import triton` fail and find_spec raise
        import torch
        from comfy_core.kernels import attention as A, sampler_step as S, _triton
        assert not _triton.triton_available()
        q, k = torch.randn(1, 2, 5, 40), torch.randn(1, 2, 77, 40)
        assert A.resolve_backend(q, k, k, "triton") == "sdpa"
        out = A.attention(q, k, k, backend="triton")
        assert torch.allclose(out, A.reference_attention(q, k, k), atol=1e-5)
        x = torch.randn(1, 4, 8, 8)
        assert S.resolve_step_backend(x, x, backend="triton") == "torch"
        assert S.cfg_euler_step(x, x, x, 7.0, 2.0, 1.0, backend="triton").x.shape == x.shape
        assert not torch.cuda.is_initialized()
        assert "comfy_core.kernels.triton_attention" not in sys.modules
        print("ok")
    """)
    # cwd outside the repo: `-c` puts the cwd first on sys.path, and the root comfy_core/ has no kernels/ folder
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


# --- ahead-of-time compile for Hopper (sm_90) on this CPU machine: the CUDA path builds and fits -------------------

def _attention_compile_args(dtype: str, head_dim: int, seq_q: int, seq_kv: int, align: int | None = None):
    """Runtime argument values of one launch (meta tensors: only dtype and strides matter) + derived constexprs."""
    import triton

    from comfy_core.kernels import triton_attention as TA

    if TA.INTERPRETED:
        pytest.skip("kernel module was imported under TRITON_INTERPRET=1")
    q = torch.empty(2, 8, seq_q, head_dim, dtype=DTYPES[dtype], device="meta")
    k = torch.empty(2, 8, seq_kv, head_dim, dtype=DTYPES[dtype], device="meta")
    names = TA._flash_attn_fwd.arg_names
    values = dict(zip(names, (q, k, k, q, *q.stride(), *k.stride(), *k.stride(), *q.stride(), 8, seq_q, seq_kv,
                              0.1, triton.next_power_of_2(seq_q), triton.next_power_of_2(seq_kv))))
    block_d = triton.next_power_of_2(head_dim)
    const = {"HEAD_DIM": head_dim, "BLOCK_D": block_d, "DOT_FP32": dtype == "fp32",
             "ALIGN": TA._row_alignment(q, k, k, q) if align is None else align}
    kept = TA._prune(TA._cuda_configs(), {"SEQ_Q": seq_q, "SEQ_KV": seq_kv}, BLOCK_D=block_d)
    return TA, values, const, kept


@pytest.mark.slow
@needs_triton
@pytest.mark.parametrize("dtype, head_dim, every_config", [
    ("fp16", 40, True), ("fp16", 160, True), ("fp16", 64, False), ("fp16", 80, False), ("fp16", 128, False),
    ("bf16", 80, False), ("fp32", 40, False),
])
def test_attention_kernel_compiles_for_hopper(dtype, head_dim, every_config):
    """Every config the autotuner may try at SD shapes compiles for sm_90, fits shared memory, and (fp16/bf16)
    uses Hopper's wgmma; the smallest tile never spills registers (fp16/bf16)."""
    TA, values, const, kept = _attention_compile_args(dtype, head_dim, 4096, 4096)
    configs = kept if every_config else kept[-1:]
    for cfg in configs:
        res = compile_for_gpu(TA._flash_attn_fwd, values, {**const, **cfg.kwargs}, cfg.num_warps, cfg.num_stages)
        assert res["shared"] <= HOPPER_MAX_SHARED, (cfg, res["shared"])
        if dtype != "fp32":
            assert "wgmma.mma_async" in res["ptx"], cfg
    small = min(kept, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"])
    res = compile_for_gpu(TA._flash_attn_fwd, values, {**const, **small.kwargs}, small.num_warps, small.num_stages)
    if res["stack"] is not None and dtype != "fp32":  # fp32 "ieee" dots run on FMA units: slow path, may spill
        assert res["stack"] == 0, (small.kwargs, res["regs"], res["stack"])


@needs_triton
def test_autotuner_keys_and_pruning_as_triton_calls_them():
    """The installed Triton's Autotuner resolves our key names and calls `_prune` with the launch's arguments."""
    TA, values, const, _ = _attention_compile_args("fp16", 160, 64, 77)
    tuned = TA._flash_attn_fwd_tuned
    assert set(tuned.keys) <= set(tuned.arg_names)
    positional = [values[name] for name in tuned.arg_names if name in values]
    tuned.nargs = dict(zip(tuned.arg_names, positional))
    kept = tuned.prune_configs(const)  # what Autotuner.run does before benchmarking
    tuned.nargs = None
    shapes = sorted((c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.num_stages) for c in kept)
    assert shapes and all(m <= 64 and n <= 64 and stages <= 2 for m, n, stages in shapes)  # D=160 pads to 256
    _, values, const, kept_small = _attention_compile_args("fp16", 40, 64, 4096)
    assert all(c.kwargs["BLOCK_M"] <= 64 for c in kept_small)  # 64 queries: no 128-row tiles


@needs_triton
def test_attention_alignment_hint_is_only_claimed_when_true():
    from comfy_core.kernels import triton_attention as TA

    q = torch.empty(2, 8, 77, 40, dtype=torch.float16, device="meta")
    assert TA._row_alignment(q, q, q, q) == 8  # fp16: 8 elements = 16 bytes; every stride a multiple of 8
    odd = torch.empty(2, 8, 77, 41, dtype=torch.float16, device="meta")[..., :40]  # row stride 41
    assert TA._row_alignment(q, odd, odd, q) == 1
    assert TA._row_alignment(q.float(), q.float(), q.float(), q.float()) == 4


@pytest.mark.slow
@needs_triton
def test_attention_kernel_compiles_unaligned_cross_attention_for_hopper():
    TA, values, const, kept = _attention_compile_args("fp16", 40, 4096, 77, align=1)
    cfg = kept[-1]
    res = compile_for_gpu(TA._flash_attn_fwd, values, {**const, **cfg.kwargs}, cfg.num_warps, cfg.num_stages)
    assert res["shared"] <= HOPPER_MAX_SHARED and "wgmma.mma_async" in res["ptx"]


# --- CUDA: the compiled kernel (autotuned) against the fp32 reference, SD shapes at full size -----------------------

SD_SHAPES = [(2, 8, 4096, 40), (2, 8, 1024, 80), (2, 8, 256, 160), (2, 8, 64, 160), (2, 10, 4096, 64),
             (2, 20, 1024, 64)]


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("shape", SD_SHAPES)
@pytest.mark.parametrize("seq_kv", ["self", 77])
def test_triton_attention_cuda_sd_shapes(shape, dtype, seq_kv):
    b, h, sq, d = shape
    skv = sq if seq_kv == "self" else seq_kv
    q, k, v = attention_inputs((b, h, sq, skv, d, dtype, {}), device="cuda")
    assert A.resolve_backend(q, k, v) == "triton"
    out = A.attention(q, k, v)
    ref = A.reference_attention(q.float(), k.float(), v.float())
    assert out.dtype == DTYPES[dtype] and out.shape == q.shape
    err = (out.float() - ref).abs().max().item()
    assert err <= ATTN_TOL[dtype] * max(1.0, ref.abs().max().item())


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_triton_attention_cuda_small_cases(case):
    """The interpreter's cases compiled for the GPU (one pinned config: these check masking/padding, not tuning)."""
    from comfy_core.kernels import triton_attention as TA

    q, k, v = attention_inputs(ATTENTION_CASES[case], device="cuda")
    scale = ATTENTION_CASES[case][6].get("scale")
    assert A.resolve_backend(q, k, v, "triton") == "triton"
    out = TA.flash_attention(q, k, v, scale, config=(64, 32, 4, 2))
    ref = A.reference_attention(q.float(), k.float(), v.float(), scale)
    tol = ATTN_TOL[ATTENTION_CASES[case][5]]
    assert (out.float() - ref).abs().max().item() <= tol * max(1.0, ref.abs().max().item())


@pytest.mark.cuda
@needs_triton
@pytest.mark.parametrize("config", [(64, 64, 4, 2), (128, 32, 4, 3), (32, 16, 2, 1)])
def test_triton_attention_cuda_pinned_configs(config):
    from comfy_core.kernels import triton_attention as TA

    q, k, v = attention_inputs((2, 3, 200, 77, 80, "fp16", {}), device="cuda")
    out = TA.flash_attention(q, k, v, config=config)
    ref = A.reference_attention(q.float(), k.float(), v.float())
    assert (out.float() - ref).abs().max().item() <= ATTN_TOL["fp16"] * max(1.0, ref.abs().max().item())


@pytest.mark.cuda
@pytest.mark.parametrize("kernel", ["flash", "efficient", "math"])
def test_sdpa_pinned_kernels_cuda(kernel):
    q, k, v = attention_inputs((2, 8, 256, 77, 64, "fp16", {}), device="cuda")
    out = A.attention(q, k, v, backend=f"sdpa:{kernel}")
    ref = A.reference_attention(q.float(), k.float(), v.float())
    assert (out.float() - ref).abs().max().item() <= ATTN_TOL["fp16"] * max(1.0, ref.abs().max().item())
