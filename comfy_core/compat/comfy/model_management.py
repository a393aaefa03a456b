"""ComfyUI's `comfy.model_management`: devices, dtypes, interrupts and memory hooks of the engine running the
current node. comfy-core's `ModelCache` loads and evicts models itself, so the load/free hooks only log.
"""
from __future__ import annotations

import logging
from typing import Any

import torch

from ...context import current
from ...errors import Interrupted

log = logging.getLogger(__name__)

OOM_EXCEPTION = torch.cuda.OutOfMemoryError


class InterruptProcessingException(Interrupted):
    """ComfyUI's interrupt exception; the executor treats it as any `Interrupted` (execution_interrupted)."""


def get_torch_device() -> torch.device:
    return current().device or torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where nodes keep images and latents between nodes (the CPU, as ComfyUI's default)."""
    return torch.device("cpu")


def unet_offload_device() -> torch.device:
    return torch.device("cpu")


def text_encoder_device() -> torch.device:
    return get_torch_device()


def vae_device() -> torch.device:
    return get_torch_device()


def vae_offload_device() -> torch.device:
    return torch.device("cpu")


def _engine_dtype() -> torch.dtype:
    return current().dtype or torch.float32


def unet_dtype(device: Any = None, model_params: int = 0, supported_dtypes: Any = None) -> torch.dtype:
    return _engine_dtype()


def vae_dtype(device: Any = None, allowed_dtypes: Any = None) -> torch.dtype:
    return _engine_dtype()


def text_encoder_dtype(device: Any = None) -> torch.dtype:
    return _engine_dtype()


def should_use_fp16(device: Any = None, model_params: int = 0, prioritize_performance: bool = True,
                    manual_cast: bool = False) -> bool:
    return _engine_dtype() == torch.float16


def should_use_bf16(device: Any = None, model_params: int = 0, prioritize_performance: bool = True,
                    manual_cast: bool = False) -> bool:
    return _engine_dtype() == torch.bfloat16


def cpu_mode() -> bool:
    return get_torch_device().type == "cpu"


def is_device_mps(device: Any) -> bool:
    return getattr(device, "type", None) == "mps"


def is_device_cuda(device: Any) -> bool:
    return getattr(device, "type", None) == "cuda"


def xformers_enabled() -> bool:
    return False


def pytorch_attention_enabled() -> bool:
    return True


def get_autocast_device(dev: Any) -> str:
    return getattr(dev, "type", "cuda")


def cast_to_device(tensor: torch.Tensor, device: Any, dtype: torch.dtype | None, copy: bool = False) -> torch.Tensor:
    return tensor.to(device=device, dtype=dtype, copy=copy)


def get_free_memory(dev: Any = None, torch_free_too: bool = False) -> int | tuple[int, int]:
    """Free bytes on `dev` (the engine's device by default): CUDA's free memory, or available RAM on the CPU."""
    dev = dev or get_torch_device()
    if getattr(dev, "type", "cpu") == "cuda":
        free = torch.cuda.mem_get_info(dev)[0]
    else:
        free = _available_ram()
    return (free, free) if torch_free_too else free


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def soft_empty_cache(force: bool = False) -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_models_gpu(models: Any, memory_required: int = 0, force_patch_weights: bool = False,
                    minimum_memory_required: Any = None, force_full_load: bool = False) -> None:
    log.debug("load_models_gpu: comfy-core's model cache places models itself; nothing to do")


def load_model_gpu(model: Any) -> None:
    load_models_gpu([model])


def free_memory(memory_required: int, device: Any, keep_loaded: Any = ()) -> list:
    log.debug("free_memory: comfy-core's model cache evicts by its budgets; nothing to do")
    return []


def unload_all_models() -> None:
    """Drop every model the engine has cached (they load again when a node needs them)."""
    models = current().models
    if models is not None:
        models.free()


def processing_interrupted() -> bool:
    return current().cancel.is_set()


def interrupt_current_processing(value: bool = True) -> None:
    """Ask the engine to stop the running prompt (False withdraws the request)."""
    cancel = current().cancel
    if value:
        cancel.set()
    else:
        cancel.clear()


def throw_exception_if_processing_interrupted() -> None:
    if current().cancel.is_set():
        raise InterruptProcessingException("Processing interrupted")
