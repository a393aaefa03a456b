"""Whether Triton can be used, decided without importing it and without touching CUDA, and what the caller asked for.

Triton is an optional extra (`pip install comfy-core[cuda]`). Every dispatcher asks `triton_available()` before it
imports one of the `triton_*` kernel modules, so the package imports and runs its torch paths without Triton.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os

import torch

from comfy_core.errors import ComfyCoreError

# dtypes the Triton kernels are written for (fp32 accumulation in every case)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Triton 3.x targets compute capability 8.0+ (bf16 dots, async copies); older GPUs keep the torch paths
MIN_CAPABILITY = (8, 0)


@functools.cache
def triton_available() -> bool:
    """True when the `triton` package can be imported (answer cached: installing it mid-process is not supported)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["triton"] is None (import blocked on purpose)
        return False


def requested_choice(backend: str | None, env_var: str, choices: tuple[str, ...], what: str) -> str:
    """A dispatcher's backend request: `backend` unless None/""/"auto", else $`env_var`, else "auto";
    case-insensitive, and an unknown name is a clear error (`what` names the dispatcher in it)."""
    name = backend if backend not in (None, "", "auto") else os.environ.get(env_var, "auto")
    name = (name or "auto").strip().lower()
    if name not in choices:
        raise ComfyCoreError(f"unknown {what} backend {name!r}; expected one of {', '.join(choices)}")
    return name


def triton_interpreting() -> bool:
    """True when TRITON_INTERPRET asks Triton to run kernels on the CPU with numpy (its own parsing of the flag).

    Triton 3.7 reads the variable when a `@triton.jit` function is *decorated*, i.e. when a `triton_*` module is first
    imported, so the flag must be set before that import (the tests run the interpreter in a subprocess for this).
    """
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on")


def module_interpreted(triton_module) -> bool:
    """Whether `@triton.jit` decorates for the interpreter right now (call at a kernel module's import)."""
    knobs = getattr(triton_module, "knobs", None)  # triton >= 3.4; older versions read the variable directly
    return bool(knobs.runtime.interpret) if knobs is not None else triton_interpreting()


def can_launch_on(device: torch.device) -> bool:
    """Triton kernels launch on CUDA tensors, or on CPU tensors when the interpreter is on."""
    if not triton_available():
        return False
    return device.type == "cuda" or (device.type == "cpu" and triton_interpreting())


def launch_device(tensor: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make the tensor's GPU current while launching: Triton launches on the current device, not the tensor's."""
    return torch.cuda.device(tensor.device) if tensor.device.type == "cuda" else contextlib.nullcontext()


def device_capability(device: torch.device) -> tuple[int, int] | None:
    """(major, minor) of a CUDA device, None for other devices. Called with tensors already on that GPU."""
    return tuple(torch.cuda.get_device_capability(device)) if device.type == "cuda" else None
