"""Lazy, read-only access to the tensors of a model file.

`open_state_dict(path)` returns a `Mapping[str, Tensor]` whose keys and shapes come from the file header alone;
a tensor is read from disk only when it is looked up, straight into its own buffer (one `readinto`; a tensor cast to
another dtype is read through a mapping of its own bytes only, closed right after), so a loader that builds a module
on the `meta` device and fills it key by key never holds a second copy of the weights (and no mapped file pages
inflate the process RSS). `.ckpt`/`.pt` files are read with `torch.load(weights_only=True)`.

`PrefixView(sd, "first_stage_model.")` is the same mapping seen through a key prefix (keys without the prefix);
`RenamedView(sd, names)` the same tensors under other key names (a converted layout, still read lazily).
"""
from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelLoadError

log = logging.getLogger(__name__)

# safetensors dtype names -> torch dtypes
_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute file offset
    end: int


class StateDict(Mapping):
    """A read-only mapping key -> tensor with cheap `shape(key)`; subclasses decide where tensors come from."""

    path: Path | None = None

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self[key].dtype

    def metadata(self) -> dict[str, str]:
        return {}

    def get_as(self, key: str, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """The tensor cast to `dtype` (floating tensors only) on `device`, with at most one temporary copy."""
        t = self[key]
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        return t.to(device)

    def close(self) -> None:
        pass


class SafetensorsFile(StateDict):
    """A .safetensors file: header parsed and validated eagerly, tensors read on demand."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._file = open(self.path, "rb")
        try:
            self._infos, self._metadata = self._parse_header()
        except BaseException:
            self._file.close()
            raise

    def _parse_header(self) -> tuple[dict[str, TensorInfo], dict[str, str]]:
        size = os.fstat(self._file.fileno()).st_size
        raw = self._file.read(8)
        if len(raw) < 8:
            raise ModelLoadError(f"{self.path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER or 8 + n > size:
            raise ModelLoadError(f"{self.path}: damaged safetensors header (header length {n}, file size {size})")
        try:
            header = json.loads(self._file.read(n))
        except ValueError as e:
            raise ModelLoadError(f"{self.path}: damaged safetensors header ({e})") from None
        if not isinstance(header, dict):
            raise ModelLoadError(f"{self.path}: damaged safetensors header (not a JSON object)")
        metadata = header.pop("__metadata__", None) or {}
        base = 8 + n
        infos: dict[str, TensorInfo] = {}
        for key, entry in header.items():
            infos[key] = self._tensor_info(key, entry, base, size)
        return infos, metadata

    def _tensor_info(self, key: str, entry: dict, base: int, size: int) -> TensorInfo:
        try:
            dtype = _ST_DTYPES[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            start, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ModelLoadError(f"{self.path}: damaged header entry for tensor {key!r}: {entry!r}") from None
        numel = 1
        for s in shape:
            numel *= s
        itemsize = torch.empty((), dtype=dtype).element_size()
        if end - start != numel * itemsize or start < 0:
            raise ModelLoadError(f"{self.path}: tensor {key!r} has {end - start} bytes for shape {list(shape)}")
        if base + end > size:
            raise ModelLoadError(
                f"{self.path}: file is truncated: tensor {key!r} ends at byte {base + end} but the file has {size}"
            )
        return TensorInfo(dtype, shape, base + start, base + end)

    def _read_into(self, key: str, info: TensorInfo, out: torch.Tensor) -> None:
        if info.end == info.start:
            return
        buf = out.view(-1).view(torch.uint8).numpy() if info.dtype != torch.bool else out.view(-1).numpy()
        with self._lock:
            self._file.seek(info.start)
            got = self._file.readinto(memoryview(buf).cast("B"))
        if got != info.end - info.start:
            raise ModelLoadError(f"{self.path}: could not read tensor {key!r} (file changed or truncated)")

    def __getitem__(self, key: str) -> torch.Tensor:
        info = self._infos[key]
        out = torch.empty(info.shape, dtype=info.dtype)
        self._read_into(key, info, out)
        return out

    def get_as(self, key: str, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        """Read, cast and move one tensor; the only new memory is the result itself."""
        info = self._infos[key]
        if dtype is None or not info.dtype.is_floating_point or info.dtype == dtype:
            return self[key].to(device)
        out = torch.empty(info.shape, dtype=dtype, device=device)
        if info.end > info.start:
            self._cast_from_mapping(key, info, out)
        return out

    def _cast_from_mapping(self, key: str, info: TensorInfo, out: torch.Tensor) -> None:
        """Fill `out` from the file bytes of `key` through a mapping of just those bytes, unmapped right after.

        The cast reads the page cache directly instead of a copy of it (~25% off an fp16 -> fp32 load), and the
        process never holds more than one tensor's worth of mapped file pages. The mapping is copy-on-write (so
        torch may wrap it) and never written."""
        fd = self._file.fileno()
        if os.fstat(fd).st_size < info.end:  # mapped bytes past the end of the file would fault on access
            raise ModelLoadError(f"{self.path}: could not read tensor {key!r} (file changed or truncated)")
        base = info.start - info.start % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(fd, info.end - base, offset=base, access=mmap.ACCESS_COPY) as mapping:
            raw = torch.frombuffer(mapping, dtype=info.dtype, count=(info.end - info.start) // info.dtype.itemsize,
                                   offset=info.start - base)
            out.copy_(raw.view(info.shape))
            del raw  # release the buffer before the mapping closes

    def shape(self, key: str) -> tuple[int, ...]:
        return self._infos[key].shape

    def dtype(self, key: str) -> torch.dtype:
        return self._infos[key].dtype

    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, key: object) -> bool:
        return key in self._infos

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SafetensorsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TensorDict(StateDict):
    """An in-memory dict of tensors behind the StateDict interface (.ckpt files, tests, converted layouts)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], path: str | Path | None = None):
        self._tensors = dict(tensors)
        self.path = Path(path) if path is not None else None

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, key: object) -> bool:
        return key in self._tensors


class PrefixView(StateDict):
    """The keys of `base` that start with `prefix`, with the prefix removed (minus keys starting with `exclude`)."""

    def __init__(self, base: StateDict, prefix: str, exclude: tuple[str, ...] = ()):
        self.base, self.prefix = base, prefix
        self.path = base.path
        self._keys = [k[len(prefix):] for k in base if k.startswith(prefix)]
        if exclude:
            self._keys = [k for k in self._keys if not k.startswith(exclude)]
        self._set = set(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._set:
            raise KeyError(key)
        return self.base[self.prefix + key]

    def get_as(self, key: str, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        if key not in self._set:
            raise KeyError(key)
        return self.base.get_as(self.prefix + key, dtype, device)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.base.shape(self.prefix + key)

    def dtype(self, key: str) -> torch.dtype:
        return self.base.dtype(self.prefix + key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._set


class RenamedView(StateDict):
    """`base` under new key names: names[new_key] = key in base (converted layouts); unmapped base keys are hidden."""

    def __init__(self, base: StateDict, names: Mapping[str, str]):
        self.base, self.names, self.path = base, dict(names), base.path

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.base[self.names[key]]

    def get_as(self, key: str, dtype: torch.dtype | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        return self.base.get_as(self.names[key], dtype, device)

    def shape(self, key: str) -> tuple[int, ...]:
        return self.base.shape(self.names[key])

    def dtype(self, key: str) -> torch.dtype:
        return self.base.dtype(self.names[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, key: object) -> bool:
        return key in self.names


def _load_torch_file(path: Path) -> TensorDict:
    """A pickle checkpoint, loaded with the safe unpickler only (no code execution)."""
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - pickle errors, zip errors, refused globals: all mean "not a loadable weights file"
        raise ModelLoadError(f"{path}: cannot read as a PyTorch weights file: {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return TensorDict(tensors, path)


def open_state_dict(path: str | Path) -> StateDict:
    """Open a weights file lazily (.safetensors/.sft) or load it safely (.ckpt/.pt/.pth/.bin)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    if path.suffix.lower() in (".safetensors", ".sft") or not head.startswith(b"PK"):
        if len(head) == 8 and struct.unpack("<Q", head)[0] < _MAX_HEADER:
            return SafetensorsFile(path)
        if path.suffix.lower() in (".safetensors", ".sft"):
            raise ModelLoadError(f"{path}: not a safetensors file (bad header)")
    return _load_torch_file(path)


def materialize(
    factory,
    sd: StateDict,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    source: str,
    what: str,
) -> torch.nn.Module:
    """Build `factory()` on the meta device, then fill it tensor by tensor from `sd` (already prefix-stripped).

    Each tensor is read once, cast to `dtype` on the way and assigned as the parameter itself (no second copy).
    Missing keys or wrong shapes -> ModelLoadError naming `source`; extra keys are logged and ignored.
    """
    with torch.device("meta"):
        module = factory()
    expected = module.state_dict()
    missing = [k for k in expected if k not in sd]
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ModelLoadError(f"{source}: {what} is missing {len(missing)} tensors: {', '.join(missing[:5])}{more}")
    loaded: dict[str, torch.Tensor] = {}
    for key, ref in expected.items():
        shape = tuple(sd.shape(key))
        want = tuple(ref.shape)
        if shape != want:
            numel = 1
            for s in shape:
                numel *= s
            if not (len(want) == 4 and want[2:] == (1, 1) and numel == ref.numel()):  # Linear-stored 1x1 convs
                raise ModelLoadError(f"{source}: {what} tensor {key!r} has shape {list(shape)}, expected {list(want)}")
        t = sd.get_as(key, dtype if ref.is_floating_point() else None, device)
        loaded[key] = t.reshape(want)
    extra = [k for k in sd if k not in expected]
    if extra:
        log.info("%s: %d unused %s tensors, e.g. %s", source, len(extra), what, extra[:3])
    module.load_state_dict(loaded, strict=True, assign=True)
    module.requires_grad_(False)
    return module.eval()
