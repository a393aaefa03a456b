"""ComfyUI's experimental model browser (app/model_manager.py) over an engine's `ModelFolders`.

`folders()` lists each model kind's search dirs (without `configs` and `custom_nodes`), `files(kind)` every model
file with its dir index, times and size, and `preview(kind, index, name)` a WEBP of the model's preview image: a
sidecar `<stem>.<image ext>` or `<stem>.preview.<image ext>` beside it, else the first of the safetensors
`ssmd_cover_images`. As ComfyUI, files are those with a model extension, hidden files and folders and `.git` are
skipped, and `modified`/`created` are float seconds. Unlike ComfyUI, the preview's file name may not leave its folder.
"""
from __future__ import annotations

import base64
import io
import logging
import os
import struct
from pathlib import Path
from typing import Any

import msgspec

from .errors import InputFileError
from .folders import PT_EXTENSIONS, ModelFolders, UnknownFolderError
from .storage import mimetype_of

log = logging.getLogger(__name__)

HIDDEN_KINDS = ("configs", "custom_nodes")
_HEADER_LIMIT = 8 * 1024 * 1024  # ComfyUI reads at most 8 MiB of safetensors header for cover images


def folders(model_folders: ModelFolders) -> list[dict[str, Any]]:
    """GET /experiment/models."""
    return [{"name": kind, "folders": [str(d) for d in model_folders.dirs(kind)]}
            for kind in model_folders.kinds() if kind not in HIDDEN_KINDS]


def _check_kind(model_folders: ModelFolders, kind: str) -> None:
    if kind not in model_folders.kinds():  # legacy names (clip, unet) are not keys here, as in ComfyUI
        raise UnknownFolderError(kind)


def _scan(directory: str, index: int) -> list[dict[str, Any]]:
    found = []
    for dirpath, subdirs, filenames in os.walk(directory, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if d != ".git" and not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in PT_EXTENSIONS:
                continue
            full = os.path.join(dirpath, name)
            try:
                stat = os.stat(full)
            except OSError:  # a dangling link
                continue
            found.append({"name": os.path.relpath(full, directory), "pathIndex": index,
                          "modified": stat.st_mtime, "created": stat.st_ctime, "size": stat.st_size})
    return found


def files(model_folders: ModelFolders, kind: str) -> list[dict[str, Any]]:
    """GET /experiment/models/{folder}."""
    _check_kind(model_folders, kind)
    listing: list[dict[str, Any]] = []
    for index, directory in enumerate(model_folders.dirs(kind)):
        if directory.is_dir():
            listing.extend(_scan(str(directory), index))
    return listing


def _model_path(model_folders: ModelFolders, kind: str, index: int, name: str) -> Path:
    _check_kind(model_folders, kind)
    dirs = model_folders.dirs(kind)
    if not 0 <= index < len(dirs):
        raise InputFileError(f"{kind} has no folder number {index}", status=404)
    if not name or "\x00" in name or "\\" in name:
        raise InputFileError(f"invalid model file name: {name!r}", status=400)
    if name.startswith("/") or ".." in name.split("/"):
        raise InputFileError(f"model file name leads outside its folder: {name!r}", status=403)
    return dirs[index] / name


def _cover_images(path: Path) -> list[bytes]:
    """The decoded `ssmd_cover_images` of a safetensors file's metadata ([] when absent or unreadable)."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > _HEADER_LIMIT:
                return []
            header = msgspec.json.decode(f.read(length))
        covers = header.get("__metadata__", {}).get("ssmd_cover_images")
        return [base64.b64decode(c) for c in msgspec.json.decode(covers)] if covers else []
    except (OSError, struct.error, msgspec.DecodeError, RecursionError, AttributeError, TypeError, ValueError):
        return []


def _preview_sources(path: Path) -> list[Path | bytes]:
    """Sidecar images first (sorted by name), then safetensors cover images."""
    folder, stem = path.parent, os.path.splitext(path.name)[0]
    if not folder.is_dir():
        return []
    siblings = sorted(p for p in folder.iterdir() if p.name.startswith(stem + "."))
    sources: list[Path | bytes] = []
    for sibling in siblings:
        if (mimetype_of(sibling.name) or "").startswith("image/") and sibling.is_file() \
                and os.path.splitext(sibling.name)[0] in (stem, stem + ".preview"):
            sources.append(sibling)
    safetensors = next((p for p in siblings if p.name.endswith(".safetensors") and p.is_file()), None)
    if safetensors is not None:
        sources.extend(_cover_images(safetensors))
    return sources


def preview(model_folders: ModelFolders, kind: str, index: int, name: str) -> bytes:
    """GET /experiment/models/preview/{folder}/{index}/{name}: WEBP bytes, or a 404 when there is no preview."""
    from .images import open_image

    sources = _preview_sources(_model_path(model_folders, kind, index, name))
    if not sources:
        raise InputFileError(f"no preview image for {name!r}", status=404)
    source = sources[0]
    try:
        with open_image(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            out = io.BytesIO()
            frame = img if img.mode in ("RGB", "RGBA") else img.convert("RGBA")
            frame.save(out, format="WEBP")
    except (OSError, ValueError, SyntaxError) as exc:
        log.debug("preview of %s is not a readable image: %s", name, exc)
        raise InputFileError(f"the preview of {name!r} is not a readable image", status=404) from None
    return out.getvalue()
