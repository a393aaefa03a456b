"""Custom kernels (Triton on CUDA) with torch references they fall back to. Imported as `comfy_core.kernels`.

- `attention`: `attention(q, k, v, *, scale=None, backend=None)` over Triton flash attention / torch SDPA / an fp32
  reference, chosen by `select_backend` before any launch.
- `sampler_step`: `cfg_euler_step`, `cfg_euler_ancestral_step`, `cfg_dpmpp_2m_step` (CFG fused with the update).
- `triton_attention`, `triton_sampler_step`: the Triton kernels; imported lazily, only when Triton is installed.

Submodules are not re-exported here (`attention` is both a module and its main function).
"""
