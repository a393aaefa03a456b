"""Model folders: which directories and extensions each model kind has, file listings and lookups.

ComfyUI's `folder_paths` without its module globals: one `ModelFolders` per engine. Listings are recursive, follow
symlinks, skip `.git`, use the OS separator and are cached until the mtime of one of the scanned directories changes.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .errors import InputFileError

log = logging.getLogger(__name__)

# ComfyUI's `supported_pt_extensions`, matched against the lower-cased extension.
PT_EXTENSIONS = frozenset({".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"})
LEGACY_NAMES = {"clip": "text_encoders", "unet": "diffusion_models"}

# (kind, dirs under models/, extensions) in the order ComfyUI's /models lists them; an empty set accepts every file.
_LAYOUT: tuple[tuple[str, tuple[str, ...], frozenset[str]], ...] = (
    ("checkpoints", ("checkpoints",), PT_EXTENSIONS),
    ("configs", ("configs",), frozenset({".yaml"})),
    ("loras", ("loras",), PT_EXTENSIONS),
    ("vae", ("vae",), PT_EXTENSIONS),
    ("text_encoders", ("text_encoders", "clip"), PT_EXTENSIONS),
    ("diffusion_models", ("unet", "diffusion_models"), PT_EXTENSIONS),
    ("clip_vision", ("clip_vision",), PT_EXTENSIONS),
    ("style_models", ("style_models",), PT_EXTENSIONS),
    ("embeddings", ("embeddings",), PT_EXTENSIONS),
    ("diffusers", ("diffusers",), frozenset({"folder"})),  # matches no file, as in ComfyUI
    ("vae_approx", ("vae_approx",), PT_EXTENSIONS),
    ("controlnet", ("controlnet", "t2i_adapter"), PT_EXTENSIONS),
    ("gligen", ("gligen",), PT_EXTENSIONS),
    ("upscale_models", ("upscale_models",), PT_EXTENSIONS),
    ("custom_nodes", (), frozenset()),
    ("hypernetworks", ("hypernetworks",), PT_EXTENSIONS),
    ("photomaker", ("photomaker",), PT_EXTENSIONS),
    ("classifiers", ("classifiers",), frozenset({""})),  # files without an extension
    ("model_patches", ("model_patches",), PT_EXTENSIONS),
    ("audio_encoders", ("audio_encoders",), PT_EXTENSIONS),
    ("annotators", ("annotators",), PT_EXTENSIONS),  # HED and other preprocessor weights (not a ComfyUI key)
)
# main.py adds these output subfolders as extra search paths (models saved by ComfyUI's save nodes).
_OUTPUT_SEARCH = ("checkpoints", "clip", "vae", "diffusion_models", "loras")


class UnknownFolderError(InputFileError, LookupError):
    """A model folder name that is not a key (the HTTP layer answers 404)."""

    def __init__(self, name: str):
        super().__init__(f"unknown model folder {name!r}", status=404)
        self.name = name


@dataclass
class _Listing:
    files: list[str]
    mtimes: dict[str, int]  # every scanned directory (and missing roots as -1) -> st_mtime_ns


def map_legacy(name: str) -> str:
    """`clip` -> `text_encoders`, `unet` -> `diffusion_models`; other names unchanged."""
    return LEGACY_NAMES.get(name, name)


def _mtime_ns(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def _scan(directory: str) -> tuple[list[str], dict[str, int]]:
    """Relative paths of every file under `directory` (following links, skipping .git) and each dir's mtime."""
    mtimes = {directory: _mtime_ns(directory)}
    if not os.path.isdir(directory):
        return [], mtimes
    files = []
    for dirpath, subdirs, filenames in os.walk(directory, followlinks=True):
        subdirs[:] = [d for d in subdirs if d != ".git"]
        files.extend(os.path.relpath(os.path.join(dirpath, f), directory) for f in filenames)
        for d in subdirs:
            mtimes[os.path.join(dirpath, d)] = _mtime_ns(os.path.join(dirpath, d))
    return files, mtimes


def _matches(name: str, extensions: frozenset[str]) -> bool:
    return not extensions or os.path.splitext(name)[1].lower() in extensions


class ModelFolders:
    """The model folders of one engine: `models_dir` laid out like ComfyUI's, plus extra search dirs per kind."""

    def __init__(
        self,
        models_dir: str | Path,
        extra_paths: Mapping[str, Iterable[str | Path]] | None = None,
        *,
        output_dir: str | Path | None = None,
        custom_nodes_dirs: Iterable[str | Path] = (),
        annotators_dir: str | Path | None = None,
    ):
        self.models_dir = Path(models_dir).expanduser().absolute()
        self._dirs: dict[str, list[str]] = {}
        self._extensions: dict[str, frozenset[str]] = {}
        self._cache: dict[str, _Listing] = {}
        for kind, subdirs, extensions in _LAYOUT:
            self._dirs[kind] = [str(self.models_dir / d) for d in subdirs]
            self._extensions[kind] = extensions
        if annotators_dir is not None:
            self._dirs["annotators"] = [str(Path(annotators_dir).expanduser().absolute())]
        self._dirs["custom_nodes"] = [str(Path(d).expanduser().absolute()) for d in custom_nodes_dirs]
        if output_dir is not None:
            for sub in _OUTPUT_SEARCH:
                self.add_path(sub, Path(output_dir) / sub)
        for kind, paths in (extra_paths or {}).items():
            for path in paths:
                self.add_path(kind, path)

    def add_path(self, kind: str, path: str | Path, *, first: bool = False) -> None:
        """Add a search dir (legacy names map; an unknown kind becomes a new folder accepting every extension)."""
        kind = map_legacy(kind)
        dirs = self._dirs.setdefault(kind, [])
        self._extensions.setdefault(kind, frozenset())
        path = str(Path(path).expanduser().absolute())
        if path in dirs:
            dirs.remove(path)
        if first:
            dirs.insert(0, path)
        else:
            dirs.append(path)
        self._cache.pop(kind, None)

    def set_extensions(self, kind: str, extensions: Iterable[str]) -> None:
        """Which extensions a kind lists (lower-case, with the dot); empty accepts every file."""
        key = self._key(kind)
        self._extensions[key] = frozenset(e.lower() for e in extensions)
        self._cache.pop(key, None)

    def kinds(self) -> list[str]:
        """The folder keys, in ComfyUI's /models order (then extra kinds in the order they were added)."""
        return list(self._dirs)

    def dirs(self, kind: str) -> list[Path]:
        """The search dirs of a kind (legacy names accepted)."""
        return [Path(d) for d in self._dirs[self._key(kind)]]

    def extensions(self, kind: str) -> frozenset[str]:
        return self._extensions[self._key(kind)]

    def _key(self, kind: str) -> str:
        key = map_legacy(kind)
        if key not in self._dirs:
            raise UnknownFolderError(kind)
        return key

    def list(self, kind: str) -> list[str]:
        """Sorted relative paths of the kind's files across all its dirs (legacy names accepted)."""
        key = self._key(kind)
        cached = self._cache.get(key)
        if cached is not None and all(_mtime_ns(d) == m for d, m in cached.mtimes.items()):
            if set(self._dirs[key]) <= set(cached.mtimes):
                return list(cached.files)
        files: set[str] = set()
        mtimes: dict[str, int] = {}
        for directory in self._dirs[key]:
            found, seen = _scan(directory)
            files.update(f for f in found if _matches(f, self._extensions[key]))
            mtimes.update(seen)
        listing = _Listing(sorted(files), mtimes)
        self._cache[key] = listing
        return list(listing.files)

    def list_strict(self, folder: str) -> list[str]:
        """The listing for `/models/{folder}`: legacy names are not keys there, so they are unknown (404)."""
        if folder not in self._dirs:
            raise UnknownFolderError(folder)
        return self.list(folder)

    def full_path(self, kind: str, name: str) -> Path | None:
        """The file `name` in the first dir of `kind` that has it, or None; names that escape are refused."""
        key = self._key(kind)
        if not isinstance(name, str) or not name or "\x00" in name:
            raise InputFileError(f"invalid model file name: {name!r}", status=400)
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or os.path.isabs(name):
            raise InputFileError(f"invalid model file name: {name!r}", status=400)
        relative = os.path.normpath(name)
        for directory in self._dirs[key]:
            candidate = os.path.join(directory, relative)
            if os.path.isfile(candidate):
                return Path(candidate)
            if os.path.islink(candidate):
                log.warning("model file %s is a broken symlink", candidate)
        return None

    def create_dirs(self) -> None:
        """Create every kind's dirs under models/ (what a fresh ComfyUI install shows)."""
        for kind, subdirs, _ in _LAYOUT:
            for sub in subdirs:
                if kind != "custom_nodes":
                    (self.models_dir / sub).mkdir(parents=True, exist_ok=True)
        if self._dirs.get("annotators"):
            Path(self._dirs["annotators"][0]).mkdir(parents=True, exist_ok=True)
