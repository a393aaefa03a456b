"""ComfyUI's `folder_paths`, answered by the model folders and storage of the engine running the current node.

Module attributes (`models_dir`, `base_path`, `output_directory`, `input_directory`, `temp_directory`,
`user_directory`, `folder_names_and_paths`, `filename_list_cache`) resolve per access. `folder_names_and_paths` is a
live view of the engine's folders: assigning `view[kind] = ([dirs], {exts})` adds a kind, but the tuples it hands out
are copies, so appending to one of their lists changes nothing (use `add_model_folder_path`).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..context import current
from ..errors import InputFileError
from ..folders import PT_EXTENSIONS, ModelFolders, UnknownFolderError
from ..folders import map_legacy as _map_legacy
from ..storage import KINDS, mimetype_of

log = logging.getLogger(__name__)

supported_pt_extensions: frozenset[str] = PT_EXTENSIONS


class UnknownFolderKeyError(UnknownFolderError, KeyError):
    """An unknown folder name; a KeyError too, as ComfyUI's dict lookup raises."""


class FolderTable(Mapping):
    """`folder_names_and_paths` of one engine: kind -> ([search dirs], {extensions})."""

    def __init__(self, folders: ModelFolders):
        self._folders = folders

    def __getitem__(self, kind: str) -> tuple[list[str], set[str]]:
        if kind not in self._folders.kinds():
            raise KeyError(kind)
        return [str(d) for d in self._folders.dirs(kind)], set(self._folders.extensions(kind))

    def __setitem__(self, kind: str, value: tuple[Iterable[str], Iterable[str]]) -> None:
        dirs, extensions = value
        for directory in dirs:
            self._folders.add_path(kind, directory)
        if kind not in self._folders.kinds():  # no dirs given: still a known kind, as in ComfyUI
            self._folders.add_path(kind, os.path.join(self._folders.models_dir, kind))
        self._folders.set_extensions(kind, extensions)

    def __iter__(self) -> Iterator[str]:
        return iter(self._folders.kinds())

    def __len__(self) -> int:
        return len(self._folders.kinds())


def _folders() -> ModelFolders:
    return current().folders


def _checked(folder_name: str) -> str:
    kind = _map_legacy(folder_name)
    if kind not in _folders().kinds():
        raise UnknownFolderKeyError(folder_name)
    return kind


def __getattr__(name: str) -> Any:
    """Per-engine module attributes (PEP 562)."""
    if name == "models_dir":
        return str(_folders().models_dir)
    if name == "base_path":
        return str(_folders().models_dir.parent)
    if name in ("output_directory", "input_directory", "temp_directory"):
        return str(current().storage.root(name.removesuffix("_directory")))
    if name == "user_directory":
        return current().config.user_dir
    if name == "folder_names_and_paths":
        return FolderTable(_folders())
    if name == "filename_list_cache":
        return {}  # listings are cached by ModelFolders itself
    raise AttributeError(f"module 'folder_paths' has no attribute {name!r} in comfy-core")


def map_legacy(folder_name: str) -> str:
    return _map_legacy(folder_name)


def get_output_directory() -> str:
    return str(current().storage.root("output"))


def get_temp_directory() -> str:
    return str(current().storage.root("temp"))


def get_input_directory() -> str:
    return str(current().storage.root("input"))


def get_user_directory() -> str:
    return current().config.user_dir


def get_directory_by_type(type_name: str) -> str | None:
    return str(current().storage.root(type_name)) if type_name in KINDS else None


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    _folders().add_path(folder_name, full_folder_path, first=is_default)


def get_folder_paths(folder_name: str) -> list[str]:
    return [str(d) for d in _folders().dirs(_checked(folder_name))]


def get_filename_list(folder_name: str) -> list[str]:
    return _folders().list(_checked(folder_name))


def get_full_path(folder_name: str, filename: str) -> str | None:
    """The file's path in the first search dir that has it; None if missing (also for unknown folders, unsafe names)."""
    folders, kind = _folders(), _map_legacy(folder_name)
    if kind not in folders.kinds():
        return None
    try:
        path = folders.full_path(kind, filename)
    except InputFileError as exc:
        log.warning("folder_paths.get_full_path(%r, %r): %s", folder_name, filename, exc)
        return None
    return None if path is None else str(path)


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return path


def filter_files_extensions(files: Iterable[str], extensions: Iterable[str]) -> list[str]:
    wanted = {e.lower() for e in extensions}
    return sorted(f for f in files if not wanted or os.path.splitext(f)[1].lower() in wanted)


def filter_files_content_types(files: Iterable[str], content_types: Iterable[str]) -> list[str]:
    """Files whose guessed mimetype's major type ("image", "video", "audio"...) is one of `content_types`."""
    wanted = set(content_types)
    return [f for f in files if (mimetype_of(f) or "").split("/")[0] in wanted]


def annotated_filepath(name: str) -> tuple[str, str | None]:
    """("x.png", <dir>) for "x.png [output]"; (name, None) without an annotation."""
    filename, kind = current().storage.split_annotation(name, "")
    return filename, (str(current().storage.root(kind)) if kind else None)


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    """The path of an annotated name ("x.png [temp]"); unannotated names are under `default_dir` or the input dir."""
    storage = current().storage
    filename, kind = storage.split_annotation(name, "")
    if not kind and default_dir is not None:
        return os.path.join(default_dir, filename)
    return str(storage.resolve(kind or "input", filename))


def exists_annotated_filepath(name: str) -> bool:
    return current().storage.exists_annotated(name)


def _kind_of(directory: str) -> str:
    storage = current().storage
    real = os.path.realpath(directory)
    for kind in KINDS:
        if os.path.realpath(storage.root(kind)) == real:
            return kind
    raise InputFileError(f"comfy-core saves only under its output, temp or input folder, not {directory!r}")


def get_save_image_path(filename_prefix: str, output_dir: str, image_width: int = 0,
                        image_height: int = 0) -> tuple[str, str, int, str, str]:
    """(full_output_folder, filename, counter, subfolder, filename_prefix), as ComfyUI's SaveImage uses them."""
    saved = current().storage.save_image_path(filename_prefix, image_width, image_height, kind=_kind_of(output_dir))
    return str(saved.full_folder), saved.filename, saved.counter, saved.subfolder, saved.filename_prefix
