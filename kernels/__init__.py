"""Custom kernels (Triton on CUDA) with torch references they fall back to. Imported as `comfy_core.kernels`."""
