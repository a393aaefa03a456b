"""ModelCache: loaded sub-models (UNet, CLIP, VAE, LoRA files) shared across prompts, LRU-evicted by bytes.

Key = (real path, size, mtime_ns, dtype, device, part[, extra]); a file rewritten on disk gets a new key and is
loaded again (its stale entries are dropped). CPU and GPU entries have separate byte budgets. Loads of one key are
serialised (two threads asking for the same checkpoint load it once); different keys load concurrently.

What callers get back never changes a cached object: MODEL and CLIP are handed out as `clone()`s (LoRA patches go on
the clone; see lora.py for how shared weights are patched and restored), the VAE is stateless.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from .checkpoint import (
    build_clip,
    build_diffusion_model,
    build_vae,
    default_device_dtype,
    find_vae_prefix,
    open_model_file,
)
from .diffusion import DiffusionModel
from .fp8 import storage_dtype
from .state_dict import StateDict
from .vae import VAE

log = logging.getLogger(__name__)

CacheKey = tuple


def object_bytes(obj: Any) -> int:
    """Bytes of the tensors an object holds (memory_bytes() when it has one)."""
    if obj is None:
        return 0
    if hasattr(obj, "memory_bytes"):
        return int(obj.memory_bytes())
    if isinstance(obj, torch.nn.Module):
        return sum(t.numel() * t.element_size() for t in obj.state_dict().values())
    if isinstance(obj, dict):
        return sum(t.numel() * t.element_size() for t in obj.values() if isinstance(t, torch.Tensor))
    return 0


@dataclass
class _Entry:
    value: Any
    nbytes: int
    device_kind: str  # "cpu" | "gpu"


@dataclass
class CacheStats:
    loads: dict[str, int] = field(default_factory=dict)  # part -> number of real loads
    hits: int = 0
    evictions: int = 0


def file_identity(path: str | Path) -> tuple[str, int, int]:
    """(real path, size, mtime_ns) of a model file; ModelLoadError if it does not exist."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        raise ModelLoadError(f"model file not found: {path}") from None
    return real, st.st_size, st.st_mtime_ns


class _LazyFile:
    """Opens a model file only if some part actually has to be loaded."""

    def __init__(self, path: str | Path):
        self.path, self._sd = path, None

    def get(self) -> StateDict:
        if self._sd is None:
            self._sd = open_model_file(self.path)
        return self._sd

    def close(self) -> None:
        if self._sd is not None:
            self._sd.close()


class ModelCache:
    """Thread-safe LRU cache of loaded sub-models under CPU and GPU byte budgets (0 GPU budget = unlimited)."""

    def __init__(self, cpu_budget_bytes: int = 12 * 1024**3, gpu_budget_bytes: int = 0):
        self.budgets = {"cpu": int(cpu_budget_bytes), "gpu": int(gpu_budget_bytes)}
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()
        self._lock = threading.RLock()
        self._key_locks: dict[CacheKey, threading.Lock] = {}
        self.stats = CacheStats()

    # -- generic ------------------------------------------------------------------------------------------------------
    def get_or_load(self, key: CacheKey, loader: Callable[[], Any], *, device: torch.device, part: str) -> Any:
        """The cached value for `key`, else `loader()` (counted in stats.loads[part]) stored under the budget."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.stats.hits += 1
                return entry.value
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:  # another thread may have finished loading it meanwhile
                entry = self._entries.get(key)
                if entry is not None:
                    self._entries.move_to_end(key)
                    self.stats.hits += 1
                    return entry.value
            value = loader()
            with self._lock:
                self.stats.loads[part] = self.stats.loads.get(part, 0) + 1
                self._drop_stale(key)
                kind = "cpu" if torch.device(device).type == "cpu" else "gpu"
                self._entries[key] = _Entry(value, object_bytes(value), kind)
                self._evict(kind, keep=key)
                self._key_locks.pop(key, None)
            return value

    def _drop_stale(self, key: CacheKey) -> None:
        """Forget entries of the same file/part/dtype/device whose size or mtime differ (the file changed)."""
        for old in [k for k in self._entries if k[0] == key[0] and k[3:] == key[3:] and k[1:3] != key[1:3]]:
            del self._entries[old]

    def _evict(self, kind: str, keep: CacheKey) -> None:
        budget = self.budgets[kind]
        if budget <= 0:
            return
        while self.bytes_used(kind) > budget:
            victim = next((k for k, e in self._entries.items() if e.device_kind == kind and k != keep), None)
            if victim is None:
                break
            log.info("model cache: evicting %s (%d bytes)", victim[0], self._entries[victim].nbytes)
            del self._entries[victim]
            self.stats.evictions += 1

    def bytes_used(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(e.nbytes for e in self._entries.values() if kind is None or e.device_kind == kind)

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[CacheKey]:
        with self._lock:
            return list(self._entries)

    def free(self) -> None:
        """Drop everything (objects still referenced elsewhere stay alive until released)."""
        with self._lock:
            self._entries.clear()

    def unload(self, path: str | Path) -> int:
        """Drop every entry of one file; returns how many were dropped."""
        real = os.path.realpath(path)
        with self._lock:
            victims = [k for k in self._entries if k[0] == real]
            for k in victims:
                del self._entries[k]
            return len(victims)

    # -- model files --------------------------------------------------------------------------------------------------
    def _key(self, path: str | Path, part: str, device: torch.device, dtype: torch.dtype, *extra: Any) -> CacheKey:
        real, size, mtime = file_identity(path)
        return (real, size, mtime, str(dtype), str(device), part, *extra)

    def load_checkpoint(
        self, path: str | Path, *, device: Any = None, dtype: torch.dtype | None = None, want_clip: bool = True,
        want_vae: bool = True, embedding_dirs: Iterable[str] = (),
    ) -> tuple[DiffusionModel, Any | None, VAE | None]:
        """(MODEL, CLIP or None, VAE or None) of a checkpoint; each part cached separately."""
        dev, dt = default_device_dtype(device, dtype)
        emb = tuple(str(d) for d in embedding_dirs)
        lazy = _LazyFile(path)
        src = str(path)
        try:
            model = self.get_or_load(self._key(path, "unet", dev, dt), part="unet", device=dev, loader=lambda: (
                build_diffusion_model(lazy.get(), device=dev, dtype=dt, source=src)))
            clip = vae = None
            if want_clip:
                clip = self.get_or_load(self._key(path, "clip", dev, dt, emb), part="clip", device=dev, loader=lambda: (
                    build_clip(lazy.get(), device=dev, dtype=dt, source=src, embedding_dirs=emb)))
            if want_vae:
                vae = self.get_or_load(self._key(path, "vae", dev, dt), part="vae", device=dev, loader=lambda: (
                    build_vae(lazy.get(), device=dev, dtype=dt, source=src)
                    if find_vae_prefix(lazy.get()) is not None else None))
        finally:
            lazy.close()
        return model.clone(), _clone(clip), vae

    def load_unet(self, path: str | Path, *, device: Any = None, dtype: torch.dtype | None = None,
                  weight_dtype: str = "default") -> DiffusionModel:
        """A standalone diffusion-model file (`diffusion_models/`), or the UNet of a checkpoint.

        `weight_dtype` (UNETLoader's choice) is part of the key: fp8 storage is a different object in memory."""
        dev, dt = default_device_dtype(device, dtype)
        storage = storage_dtype(weight_dtype)
        extra = () if storage is None else (weight_dtype,)
        lazy = _LazyFile(path)
        try:
            model = self.get_or_load(self._key(path, "unet", dev, dt, *extra), part="unet", device=dev, loader=lambda: (
                build_diffusion_model(lazy.get(), device=dev, dtype=dt, source=str(path), storage=storage,
                                      fp8_matmul=weight_dtype.endswith("_fast"))))
        finally:
            lazy.close()
        return model.clone()

    def load_vae(self, path: str | Path, *, device: Any = None, dtype: torch.dtype | None = None) -> VAE:
        dev, dt = default_device_dtype(device, dtype)
        lazy = _LazyFile(path)
        try:
            return self.get_or_load(self._key(path, "vae", dev, dt), part="vae", device=dev, loader=lambda: (
                build_vae(lazy.get(), device=dev, dtype=dt, source=str(path))))
        finally:
            lazy.close()

    def load_tensors(self, path: str | Path, part: str = "lora") -> dict[str, torch.Tensor]:
        """A small weights file read whole (LoRA, embeddings), cached as a dict of CPU tensors."""
        def load() -> dict[str, torch.Tensor]:
            sd = open_model_file(path)
            try:
                return {k: sd[k] for k in sd}
            finally:
                sd.close()

        return self.get_or_load(self._key(path, part, torch.device("cpu"), torch.float32), load,
                                device=torch.device("cpu"), part=part)

    def get_custom(self, path: str | Path, part: str, loader: Callable[[], Any], *, device: Any = None,
                   dtype: torch.dtype | None = None, extra: tuple = ()) -> Any:
        """Cache any object derived from a file (text-encoder files, CLIP vision, ControlNets...)."""
        dev, dt = default_device_dtype(device, dtype)
        return self.get_or_load(self._key(path, part, dev, dt, *extra), loader, device=dev, part=part)


def _clone(obj: Any) -> Any:
    return obj.clone() if obj is not None and hasattr(obj, "clone") else obj
