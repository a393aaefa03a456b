"""Textual-inversion embeddings: find `embedding:NAME` files and read their vectors the way ComfyUI does.

Accepted layouts (ComfyUI's `load_embed` rules, in priority order): an A1111 `.pt` dict with `string_to_param`; a list
of dicts (every tensor whose last dim is the encoder width); the encoder's own key (`clip_l` / `clip_g` / `clip_h`,
SDXL files carry two); LoRA-bundled `bundle_emb.*.string_to_param.*` or `bundle_emb.*.<key>`; else the first tensor
(A1111 safetensors `emb_params`, diffusers `learned_embeds.bin`). Pickles that `weights_only` refuses are read as raw
float32 records from the zip, never unpickled.
"""
from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

EXTENSIONS = (".safetensors", ".pt", ".bin")


def _search_dirs(dirs: Iterable[str | os.PathLike]) -> list[str]:
    """Each embeddings folder, then all its subfolders (links followed), in a stable order."""
    out: list[str] = []
    for root in dirs:
        root = os.path.abspath(root)
        out.append(root)
        subdirs = [d for d, _, _ in os.walk(root, followlinks=True)][1:]
        out += sorted(subdirs)
    return list(dict.fromkeys(out))


def find_embedding(name: str, dirs: Iterable[str | os.PathLike]) -> Path | None:
    """The file for `embedding:NAME`: NAME as given, else with .safetensors/.pt/.bin; never outside a folder."""
    if not name:
        return None
    for folder in _search_dirs(dirs):
        path = os.path.abspath(os.path.join(folder, name))
        try:
            if os.path.commonpath((folder, path)) != folder:
                continue
        except ValueError:
            continue
        for candidate in (path, *(path + ext for ext in EXTENSIONS)):
            if os.path.isfile(candidate):
                return Path(candidate)
    return None


def _read_zip_records(path: Path) -> torch.Tensor | None:
    """Legacy pickles: the last `data/` record with >= 768 float32 values, as [N, 768] or [N, 1024]."""
    with zipfile.ZipFile(path) as archive:
        for entry in reversed([n for n in archive.namelist() if "data/" in n]):
            raw = archive.read(entry)
            count = len(raw) // 4
            if count < 768:
                continue
            width = 768 if count % 768 == 0 else 1024
            return torch.frombuffer(bytearray(raw[: count * 4]), dtype=torch.float32).reshape(-1, width).clone()
    return None


def _read_file(path: Path) -> Any:
    if path.suffix.lower() == ".safetensors":
        import safetensors.torch

        return safetensors.torch.load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a weights-only pickle: fall back to the raw zip records
        return _read_zip_records(path)


def _bundled(data: Mapping[str, Any], suffix: str) -> torch.Tensor | None:
    parts = [v for k, v in data.items() if k.startswith("bundle_emb.") and k.endswith(suffix)]
    return torch.cat(parts, dim=0) if parts else None


def select_vectors(data: Any, embedding_size: int, key: str | None) -> torch.Tensor | None:
    """Pick the vectors out of a loaded embedding file (rules in the module docstring)."""
    if isinstance(data, torch.Tensor) or data is None:
        return data
    if isinstance(data, list):
        rows = [t.reshape(-1, t.shape[-1]) for item in data for t in item.values()
                if isinstance(t, torch.Tensor) and t.shape[-1] == embedding_size]
        return torch.cat(rows, dim=0) if rows else None
    if "string_to_param" in data:
        return next(iter(data["string_to_param"].values()))
    if key is not None and key in data:
        return data[key]
    found = _bundled(data, ".string_to_param.*")
    if found is None:
        found = _bundled(data, f".{key}")
    if found is None:
        found = next(iter(data.values()), None)
    return found


def load_embedding(path: Path, embedding_size: int, key: str | None) -> torch.Tensor | None:
    """Vectors [N, dim] (or one [dim]) of an embedding file as float32; None (with a warning) if unreadable."""
    try:
        vectors = select_vectors(_read_file(path), embedding_size, key)
    except Exception:
        log.warning("error loading embedding, skipping loading: %s", path, exc_info=True)
        return None
    if not isinstance(vectors, torch.Tensor):
        return None
    return vectors.detach().to(torch.float32)


class EmbeddingLookup:
    """`lookup(name)` for one text encoder: resolves names in `dirs` and reads the encoder's vectors."""

    def __init__(self, dirs: Iterable[str | os.PathLike], embedding_size: int, key: str | None) -> None:
        self.dirs = [str(d) for d in dirs]
        self.embedding_size = embedding_size
        self.key = key

    def __call__(self, name: str) -> torch.Tensor | None:
        path = find_embedding(name, self.dirs)
        if path is None:
            return None
        return load_embedding(path, self.embedding_size, self.key)
