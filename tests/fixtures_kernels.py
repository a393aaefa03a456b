"""Cases for the Triton kernel tests, and a worker that runs them under Triton's CPU interpreter.

Triton 3.7 decides between compiling and interpreting when a `@triton.jit` function is decorated, i.e. when
`comfy_core.kernels.triton_*` is first imported, reading TRITON_INTERPRET at that moment. Setting the variable inside
a pytest process is therefore fragile (another test may have imported the module first, and on a GPU machine the
same process must compile for CUDA). The tests run this file as a script in a subprocess with TRITON_INTERPRET=1 and
assert on the errors it reports as JSON (`python tests/fixtures_kernels.py attention|sampler_step`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
HEAD_DIMS = (40, 64, 80, 128, 160)

# id -> (B, H, Sq, Skv, D, dtype, options); options: "strided" (q/k/v views of [B,S,H,D]), "scale", "big"
ATTENTION_CASES: dict[str, tuple] = {
    **{f"cross-d{d}-{t}": (2, 2, 67, 77, d, t, {}) for d in HEAD_DIMS for t in ("fp32", "fp16")},
    **{f"cross-d{d}-bf16": (2, 2, 67, 77, d, "bf16", {}) for d in (40, 64, 160)},
    "self-130-d40-fp16": (1, 3, 130, 130, 40, "fp16", {}),
    "self-130-d80-fp32": (2, 1, 130, 130, 80, "fp32", {}),
    "one-key-d64-fp32": (1, 2, 5, 1, 64, "fp32", {}),
    "one-query-d64-fp16": (2, 2, 1, 154, 64, "fp16", {}),
    "strided-d80-fp16": (2, 2, 67, 77, 80, "fp16", {"strided": True}),
    "scale-d64-fp32": (1, 2, 33, 70, 64, "fp32", {"scale": 0.3}),
    "big-scores-d40-fp32": (1, 2, 67, 77, 40, "fp32", {"big": 30.0}),
}

STEP_SHAPE = (2, 4, 17, 19)  # 2584 elements: three blocks of 1024, the last one partial
# id -> (step, kwargs); every case runs for every dtype in DTYPES
STEP_CASES: dict[str, tuple[str, dict]] = {
    "euler": ("euler", {"cfg": 7.5, "sigma": 14.6146, "sigma_next": 10.0279}),
    "euler-nocfg": ("euler", {"cfg": 1.0, "sigma": 1.2, "sigma_next": 0.8, "no_uncond": True}),
    "euler-last": ("euler", {"cfg": 5.0, "sigma": 0.0292, "sigma_next": 0.0}),
    "euler-nodenoised": ("euler", {"cfg": 7.5, "sigma": 3.0, "sigma_next": 2.0, "write_denoised": False}),
    "euler_a": ("euler_a", {"cfg": 7.5, "sigma": 14.6146, "sigma_down": 7.7, "sigma_up": 6.9, "s_noise": 1.0}),
    "euler_a-snoise": ("euler_a", {"cfg": 3.0, "sigma": 2.0, "sigma_down": 0.9, "sigma_up": 1.1, "s_noise": 0.7}),
    "euler_a-last": ("euler_a", {"cfg": 7.5, "sigma": 0.0292, "sigma_down": 0.0, "sigma_up": 0.0, "s_noise": 1.0}),
    "dpmpp_2m-first": ("dpmpp_2m", {"cfg": 7.5, "sigma": 14.6146, "sigma_next": 10.0279}),
    "dpmpp_2m-second": ("dpmpp_2m", {"cfg": 7.5, "sigma": 10.0279, "sigma_next": 6.9, "sigma_prev": 14.6146}),
    "dpmpp_2m-last": ("dpmpp_2m", {"cfg": 7.5, "sigma": 0.0292, "sigma_next": 0.0, "sigma_prev": 0.1}),
    "dpmpp_2m-nodenoised": ("dpmpp_2m", {"cfg": 2.0, "sigma": 1.0, "sigma_next": 0.5, "sigma_prev": 2.0,
                                         "write_denoised": False}),
}


def attention_inputs(case: tuple, device: str = "cpu", seed: int = 0) -> tuple[torch.Tensor, ...]:
    """q [B,H,Sq,D], k/v [B,H,Skv,D] for one case (drawn in fp32, then cast)."""
    b, h, sq, skv, d, dtype, opts = case
    gen = torch.Generator().manual_seed(seed)
    if opts.get("strided"):  # the UNet's (B, S, H·D) projections viewed as heads: non-contiguous (B,H,S,D)
        q, k, v = (torch.randn(b, s, h, d, generator=gen).transpose(1, 2) for s in (sq, skv, skv))
    else:
        q, k, v = (torch.randn(b, h, s, d, generator=gen) for s in (sq, skv, skv))
    q = q * opts.get("big", 1.0)
    return tuple(t.to(device=device, dtype=DTYPES[dtype]) for t in (q, k, v))


def step_inputs(dtype: str, shape=STEP_SHAPE, device: str = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    names = ("x", "cond", "uncond", "noise", "old_denoised")
    scale = {"x": 10.0, "cond": 1.0, "uncond": 1.0, "noise": 1.0, "old_denoised": 1.0}
    return {n: (torch.randn(shape, generator=gen) * scale[n]).to(device=device, dtype=DTYPES[dtype]) for n in names}


def run_step(step: str, params: dict, t: dict[str, torch.Tensor], backend: str):
    """Calls the public step function for one case; returns its StepResult."""
    from comfy_core.kernels import sampler_step as S

    p = dict(params)
    write = p.pop("write_denoised", True)
    uncond = None if p.pop("no_uncond", False) else t["uncond"]
    if step == "euler":
        return S.cfg_euler_step(t["x"], t["cond"], uncond, p["cfg"], p["sigma"], p["sigma_next"],
                                write_denoised=write, backend=backend)
    if step == "euler_a":
        return S.cfg_euler_ancestral_step(t["x"], t["cond"], uncond, p["cfg"], p["sigma"], p["sigma_down"],
                                          p["sigma_up"], t["noise"], s_noise=p["s_noise"], write_denoised=write,
                                          backend=backend)
    old = t["old_denoised"] if "sigma_prev" in p else None
    return S.cfg_dpmpp_2m_step(t["x"], t["cond"], uncond, p["cfg"], p["sigma"], p["sigma_next"], old,
                               p.get("sigma_prev"), write_denoised=write, backend=backend)


SAMPLER_REFS = Path(__file__).parent / "data" / "kernels_sampler_refs.safetensors"
TOY_SAMPLERS = ("euler", "euler_ancestral", "dpmpp_2m")


def load_sampler_refs() -> dict[str, torch.Tensor]:
    """ComfyUI v0.3.64 outputs of 6 karras steps with a toy denoiser (subset of shared refs/samplers.*)."""
    from safetensors.torch import load_file

    return load_file(str(SAMPLER_REFS))


def sample_toy(name: str, guided: bool, refs: dict[str, torch.Tensor], backend: str, device: str = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Re-run ComfyUI's sampler loop with our fused steps; returns x_final / 0.18215 like comfy.sample.sample.

    Toy denoiser: x·0.9/sqrt(1+σ²) + F·m with m = 1 (cond) or 0.25 (uncond); cfg 2.5 when guided, else 1 (ComfyUI
    then skips the uncond pass). Euler-a noise: torch.Generator seeded 42, one randn per step with σ_down > 0.
    """
    from comfy_core.kernels.sampler_step import cfg_dpmpp_2m_step, cfg_euler_ancestral_step, cfg_euler_step

    sigmas = refs["sigmas"].tolist()
    f = refs["F"].to(device=device, dtype=dtype)
    x = (refs["noise"] * torch.sqrt(1.0 + refs["sigmas"][0] ** 2.0)).to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(42)
    old = None
    for i in range(len(sigmas) - 1):
        s = torch.tensor(sigmas[i], dtype=torch.float32).reshape(1, 1, 1, 1).to(device)
        toy = x * 0.9 / (1 + s ** 2) ** 0.5
        cond, uncond = toy + f * 1.0, (toy + f * 0.25 if guided else None)
        cfg = 2.5 if guided else 1.0
        if name == "euler":
            res = cfg_euler_step(x, cond, uncond, cfg, sigmas[i], sigmas[i + 1], backend=backend)
        elif name == "euler_ancestral":
            s_from, s_to = torch.tensor(sigmas[i]), torch.tensor(sigmas[i + 1])  # k-diffusion's ancestral split
            s_up = min(s_to, (s_to ** 2 * (s_from ** 2 - s_to ** 2) / s_from ** 2) ** 0.5)
            s_down = (s_to ** 2 - s_up ** 2) ** 0.5
            noise = (torch.randn(x.shape, generator=gen) if float(s_down) != 0 else torch.zeros(x.shape))
            res = cfg_euler_ancestral_step(x, cond, uncond, cfg, sigmas[i], s_down, s_up, noise.to(device, dtype),
                                           backend=backend)
        else:
            res = cfg_dpmpp_2m_step(x, cond, uncond, cfg, sigmas[i], sigmas[i + 1], old,
                                    sigmas[i - 1] if i else None, backend=backend)
        x, old = res.x, res.denoised
    return x.float().cpu() / 0.18215


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _attention_results() -> dict:
    from comfy_core.kernels import attention as A
    from comfy_core.kernels import triton_attention as TA

    out = {"interpreted": TA.INTERPRETED}
    for name, case in ATTENTION_CASES.items():
        q, k, v = attention_inputs(case)
        scale = case[6].get("scale")
        backend = A.resolve_backend(q, k, v, "triton")
        got = A.attention(q, k, v, scale=scale, backend="triton")
        ref = A.reference_attention(q.float(), k.float(), v.float(), scale)
        out[name] = {"backend": backend, "err": _max_err(got, ref), "ref_max": ref.abs().max().item(),
                     "shape_ok": tuple(got.shape) == tuple(q.shape) and got.dtype == q.dtype}
    return out


def _step_results() -> dict:
    from comfy_core.kernels import sampler_step as S
    from comfy_core.kernels import triton_sampler_step as TS

    out = {"interpreted": TS.INTERPRETED}
    for dtype in DTYPES:
        t = step_inputs(dtype)
        for name, (step, params) in STEP_CASES.items():
            got = run_step(step, params, t, "triton")
            ref = run_step(step, params, t, "torch")
            backend = S.resolve_step_backend(t["x"], t["cond"], t["uncond"], backend="triton")
            den = None if got.denoised is None else _max_err(got.denoised, ref.denoised)
            out[f"{name}-{dtype}"] = {
                "backend": backend, "err_x": _max_err(got.x, ref.x), "err_den": den,
                "x_max": ref.x.float().abs().max().item(), "den_none": got.denoised is None,
                "den_max": None if ref.denoised is None else ref.denoised.float().abs().max().item(),
                "dtype_ok": got.x.dtype == t["x"].dtype,
            }
    refs = load_sampler_refs()
    for name in TOY_SAMPLERS:
        for guided in (False, True):
            key = ("cfg/" if guided else "") + name
            out[f"comfyui-{key}"] = {"err": _max_err(sample_toy(name, guided, refs, "triton"), refs[key]),
                                     "ref_max": refs[key].abs().max().item()}
    return out


HOPPER = ("cuda", 90, 32)  # H100/H200: the GPUs the CUDA path is written for
HOPPER_MAX_SHARED = 232448  # bytes of shared memory one block may use on sm_90


def compile_for_gpu(kernel, values: dict, constexprs: dict, num_warps: int, num_stages: int, target=HOPPER) -> dict:
    """Compile a @triton.jit kernel ahead of time for a GPU that is not here (ptxas ships with Triton).

    `values` holds the runtime value of every non-constexpr argument (tensors as torch tensors); they are
    specialised the way Triton's launcher does (ints == 1 become constants, multiples of 16 get a divisibility
    hint, 16-byte-aligned pointers too), so the code is what a launch with those values would compile.
    Returns shared memory bytes, registers and spill (stack) bytes per thread, and the PTX.
    """
    import re
    import tempfile

    import triton
    from triton.backends.compiler import BaseBackend, GPUTarget
    from triton.runtime.jit import native_specialize_impl

    signature, constants, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        value, param = values[name], kernel.params[i]
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # the caching allocator returns 256-byte-aligned blocks
            continue
        kind, spec = native_specialize_impl(BaseBackend, value, False, not param.do_not_specialize, True)
        if kind == "constexpr":
            signature[name], constants[name] = "constexpr", spec
        else:
            signature[name] = kind
            if spec == "D":
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget(*target), options={"num_warps": num_warps,
                                                                        "num_stages": num_stages})
    out = {"shared": compiled.metadata.shared, "ptx": compiled.asm["ptx"], "regs": None, "stack": None}
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if cuobjdump.exists():
        with tempfile.TemporaryDirectory() as tmp:
            cubin = Path(tmp) / "k.cubin"
            cubin.write_bytes(compiled.asm["cubin"])
            usage = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(cubin)], capture_output=True,
                                   text=True).stdout
        found = re.search(r"REG:(\d+) STACK:(\d+)", usage)
        if found:
            out["regs"], out["stack"] = int(found.group(1)), int(found.group(2))
    return out


def run_interpreter_worker(kind: str, timeout: float = 300.0) -> dict:
    """Run this file under TRITON_INTERPRET=1 in a fresh interpreter and return its JSON results."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "COMFY_CORE_ATTENTION": "", "COMFY_CORE_SAMPLER_STEP": ""}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), kind], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"interpreter worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    torch.set_num_threads(1)
    results = _attention_results() if sys.argv[1] == "attention" else _step_results()
    print(json.dumps(results))
