"""Input/output/temp folders and the one safe path resolver every file access goes through.

ComfyUI's semantics (annotated names like ``"x.png [output]"``, SaveImage's counter, upload renaming, mask uploads)
with the holes closed: absolute paths, ``..`` components, NUL bytes, backslashes and symlinks that lead out of a
folder are all refused with an `InputFileError` whose `status` tells the HTTP layer what to answer.
"""
from __future__ import annotations

import hashlib
import io
import logging
import mimetypes
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from .errors import InputFileError

log = logging.getLogger(__name__)

KINDS = ("input", "output", "temp")
NAME_MAX = 255  # bytes per path component (ext4, XFS, APFS; NTFS counts UTF-16 units, at most as many)
PATH_MAX = 4096  # bytes of a whole path (Linux)
# mimetypes does not know these on every platform; ComfyUI registers webp the same way.
_EXTRA_MIMETYPES = {".webp": "image/webp", ".avif": "image/avif", ".jxl": "image/jxl"}


class SavePath(NamedTuple):
    """Where SaveImage writes: the same five values as ComfyUI's `get_save_image_path`."""

    full_folder: Path
    filename: str
    counter: int
    subfolder: str
    filename_prefix: str


class UploadResult(msgspec.Struct):
    """The JSON body of ComfyUI's /upload/image answer."""

    name: str
    subfolder: str
    type: str


def mimetype_of(name: str) -> str | None:
    """The guessed mimetype of a file name (by extension), like ComfyUI's content-type filter."""
    ext = os.path.splitext(name)[1].lower()
    return _EXTRA_MIMETYPES.get(ext) or mimetypes.guess_type(name)[0]


def _check_name(name: str, what: str) -> None:
    """Refuse what no client has a reason to send: NUL bytes, backslashes, absolute paths, `..` components."""
    if not isinstance(name, str):
        raise InputFileError(f"{what} must be a string", status=400)
    if "\x00" in name:
        raise InputFileError(f"{what} contains a NUL byte", status=400)
    if "\\" in name:
        raise InputFileError(f"{what} may not contain a backslash: {name!r}", status=400)


def path_too_long(path: str | Path) -> bool:
    """Whether the OS would refuse `path` with ENAMETOOLONG: a component over NAME_MAX bytes or the whole over
    PATH_MAX. Checked before touching the disk, so that a client's overlong name is a 400 and not an OSError."""
    try:
        encoded = os.fsencode(path)
    except UnicodeEncodeError:  # a lone surrogate: no file can have this name
        return True
    return len(encoded) >= PATH_MAX or any(len(part) > NAME_MAX for part in encoded.split(os.fsencode(os.sep)))


def _is_within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Storage:
    """The input, output and temp folders of one engine; every path a client names is resolved here."""

    def __init__(self, input_dir: str | Path, output_dir: str | Path, temp_dir: str | Path):
        self._dirs = {
            "input": Path(input_dir).expanduser().absolute(),
            "output": Path(output_dir).expanduser().absolute(),
            "temp": Path(temp_dir).expanduser().absolute(),
        }

    # --- roots and names -------------------------------------------------------------------------------------------

    def root(self, kind: str) -> Path:
        """The folder of `kind` ("input" | "output" | "temp"), created on first use."""
        if kind not in self._dirs:
            raise InputFileError(f"unknown folder type {kind!r}; expected one of {', '.join(KINDS)}", status=400)
        path = self._dirs[kind]
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _real_root(self, kind: str) -> str:
        return os.path.realpath(self.root(kind))

    @staticmethod
    def split_annotation(name: str, default_kind: str) -> tuple[str, str]:
        """`"photo.png [output]"` -> ("photo.png", "output"); a name without annotation keeps `default_kind`.

        As ComfyUI, the annotation and the one character before it (the space) are cut off.
        """
        for kind in KINDS:
            tag = f"[{kind}]"
            if name.endswith(tag):
                return name[: -(len(tag) + 1)], kind
        return name, default_kind

    def resolve(self, kind: str, filename: str, subfolder: str = "", *, must_exist: bool = False) -> Path:
        """The real path of `<kind root>/<subfolder>/<filename>`, or `InputFileError` if it is unsafe or missing.

        `filename` may contain forward slashes ("sub/x.png", as LoadImage accepts) but no `..` component and no
        leading `/`; `subfolder` may not lead out of the root (403). Symlinks are followed and the target must stay
        inside the real root (403). With `must_exist`, a missing file is a 404.
        """
        root = self._real_root(kind)
        _check_name(filename, "file name")
        _check_name(subfolder or "", "subfolder")
        if not filename or filename.startswith("/") or ".." in filename.split("/"):
            raise InputFileError(f"invalid file name: {filename!r}", status=400)
        sub = os.path.normpath(subfolder) if subfolder else ""
        folder = os.path.normpath(os.path.join(root, sub)) if sub and sub != "." else root
        if not _is_within(folder, root):
            raise InputFileError(f"subfolder {subfolder!r} leads outside the {kind} folder", status=403)
        full = os.path.normpath(os.path.join(folder, filename))
        if not _is_within(full, root) or full == root:
            raise InputFileError(f"invalid file name: {filename!r}", status=400)
        if path_too_long(full):
            raise InputFileError(f"file name or subfolder too long: {full[len(root) + 1:][:80]!r}...", status=400)
        real = os.path.realpath(full)
        if not _is_within(real, root):
            raise InputFileError(f"{filename!r} leads outside the {kind} folder", status=403)
        if must_exist and not os.path.isfile(real):
            raise InputFileError(f"file not found: {self._display(filename, subfolder)} [{kind}]", status=404)
        return Path(real)

    def resolve_annotated(self, name: str, default_kind: str = "input", *, must_exist: bool = False) -> Path:
        """Resolve a LoadImage-style name: a path relative to the folder, optionally annotated `" [output]"`."""
        filename, kind = self.split_annotation(name, default_kind)
        return self.resolve(kind, filename, must_exist=must_exist)

    def exists_annotated(self, name: str, default_kind: str = "input") -> bool:
        """Whether an annotated name names an existing file (unsafe names simply do not exist)."""
        try:
            return self.resolve_annotated(name, default_kind).is_file()
        except InputFileError:
            return False

    @staticmethod
    def _display(filename: str, subfolder: str) -> str:
        return f"{subfolder.rstrip('/')}/{filename}" if subfolder else filename

    # --- listings --------------------------------------------------------------------------------------------------

    def _top_level_files(self, kind: str) -> list[str]:
        root = self.root(kind)
        return sorted(entry.name for entry in os.scandir(root) if entry.is_file())

    def list_input_files(self) -> list[str]:
        """Every top-level file of the input folder, sorted (LoadImageMask's choices)."""
        return self._top_level_files("input")

    def list_input_images(self) -> list[str]:
        """Top-level input files whose guessed mimetype is image/* (LoadImage's choices)."""
        return [f for f in self._top_level_files("input") if (mimetype_of(f) or "").startswith("image/")]

    def list_files(self, kind: str) -> list[str]:
        """Every file under the folder of `kind` (relative, forward slashes), newest first."""
        root = self.root(kind)
        found: list[tuple[float, str]] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            for name in filenames:
                path = os.path.join(dirpath, name)
                try:
                    mtime = os.stat(path).st_mtime
                except OSError:  # vanished or a dangling link
                    continue
                found.append((mtime, os.path.relpath(path, root).replace(os.sep, "/")))
        found.sort(key=lambda item: (-item[0], item[1]))
        return [name for _, name in found]

    def clear_temp(self) -> None:
        """Empty the temp folder (ComfyUI does this at start and exit); links are removed, never followed."""
        root = self._dirs["temp"]
        if not root.is_dir():
            return
        for entry in os.scandir(root):
            try:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            except OSError:
                log.warning("could not remove %s from the temp folder", entry.path, exc_info=True)

    # --- SaveImage ---------------------------------------------------------------------------------------------------

    def save_image_path(self, filename_prefix: str, width: int = 0, height: int = 0, kind: str = "output") -> SavePath:
        """ComfyUI's `get_save_image_path`: expand tokens, split off the subfolder, find the next free counter."""
        _check_name(filename_prefix, "filename prefix")
        if "%" in filename_prefix:
            filename_prefix = _expand_tokens(filename_prefix, width, height)
        normalized = os.path.normpath(filename_prefix)
        subfolder, filename = os.path.dirname(normalized), os.path.basename(normalized)
        root = self._real_root(kind)
        folder = os.path.normpath(os.path.join(root, subfolder))
        if not _is_within(folder, root) or not _is_within(os.path.realpath(folder), root):
            raise InputFileError("Saving image outside the output folder is not allowed.", status=400)
        os.makedirs(folder, exist_ok=True)
        if not _is_within(os.path.realpath(folder), root):  # a link created between check and makedirs
            raise InputFileError("Saving image outside the output folder is not allowed.", status=400)
        counter = _next_counter(os.listdir(folder), filename)
        return SavePath(Path(folder), filename, counter, subfolder, filename_prefix)

    # --- uploads -----------------------------------------------------------------------------------------------------

    def _upload_target(self, data: bytes, filename: str, subfolder: str, kind: str, overwrite: bool):
        """The (name, path, duplicate) an upload lands at, with ComfyUI's `name (1).ext` renaming and hash dedupe."""
        if not filename:
            raise InputFileError("the upload has no file name", status=400)
        path = self.resolve(kind, filename, subfolder)
        _make_parent(path, self._display(filename, subfolder))
        if overwrite:
            if path.is_dir():
                raise InputFileError(f"{self._display(filename, subfolder)} is a folder", status=409)
            return filename, path, False
        digest = hashlib.sha256(data).hexdigest()
        stem, ext = os.path.splitext(filename)
        i = 1
        while os.path.lexists(path):
            if path.is_file() and sha256_file(path) == digest:
                return filename, path, True
            filename = f"{stem} ({i}){ext}"
            path = self.resolve(kind, filename, subfolder)
            i += 1
        return filename, path, False

    def upload(
        self, data: bytes, filename: str, *, subfolder: str = "", kind: str = "input", overwrite: bool = False
    ) -> UploadResult:
        """Store an uploaded file like ComfyUI's /upload/image; identical content already there is not rewritten."""
        name, path, duplicate = self._upload_target(data, filename, subfolder, kind, overwrite)
        if not duplicate:
            _write_atomic(path, data)
        return UploadResult(name=name, subfolder=subfolder, type=kind)

    def upload_mask(
        self,
        data: bytes,
        filename: str,
        original_ref: dict[str, Any],
        *,
        subfolder: str = "",
        kind: str = "input",
        overwrite: bool = False,
    ) -> UploadResult:
        """ComfyUI's /upload/mask: the original image with its alpha replaced by the upload's alpha, saved as PNG.

        A missing or unsafe original writes nothing, yet the answer still names the file (as ComfyUI does).
        """
        name, path, duplicate = self._upload_target(data, filename, subfolder, kind, overwrite)
        if not duplicate:
            original = self._mask_original(original_ref)
            if original is not None:
                _write_atomic(path, _composite_mask(original, data))
        return UploadResult(name=name, subfolder=subfolder, type=kind)

    def _mask_original(self, ref: Any) -> Path | None:
        """The original image of a mask upload, or None when the reference is bad or the file is missing."""
        if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
            return None
        filename, kind = self.split_annotation(ref["filename"], str(ref.get("type") or "output"))
        subfolder = ref.get("subfolder") or ""
        try:
            path = self.resolve(kind, filename, subfolder if isinstance(subfolder, str) else "")
        except InputFileError as exc:
            log.info("mask upload: original %r refused (%s); nothing written", ref, exc)
            return None
        return path if path.is_file() else None


def _expand_tokens(prefix: str, width: int, height: int) -> str:
    """The tokens the server (not the frontend) expands in a filename prefix; local time, zero-padded."""
    now = time.localtime()
    values = {
        "%width%": str(width),
        "%height%": str(height),
        "%year%": str(now.tm_year),
        "%month%": f"{now.tm_mon:02d}",
        "%day%": f"{now.tm_mday:02d}",
        "%hour%": f"{now.tm_hour:02d}",
        "%minute%": f"{now.tm_min:02d}",
        "%second%": f"{now.tm_sec:02d}",
    }
    for token, value in values.items():
        prefix = prefix.replace(token, value)
    return prefix


def _next_counter(names: list[str], filename: str) -> int:
    """1 + the largest counter among `<filename>_<counter>_...` files (a non-number counts as 0), or 1."""
    want = os.path.normcase(filename) + "_"
    best = None
    for name in names:
        head = name[: len(filename) + 1]
        if os.path.normcase(head) != want:
            continue
        try:
            digits = int(name[len(filename) + 1 :].split("_")[0])
        except ValueError:
            digits = 0
        best = digits if best is None else max(best, digits)
    return 1 if best is None else best + 1


def _make_parent(path: Path, display: str) -> None:
    """Create the folder of an upload; a file standing where a folder should be is a 409, not an OSError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputFileError(f"cannot store {display}: a file stands where its folder should be", status=409) from None


def _write_atomic(path: Path, data: bytes) -> None:
    """Write through a unique sibling temp file so a reader never sees half a file."""
    # unique, the umask's permissions, and short: a name of NAME_MAX bytes must still get a temp file
    tmp = path.with_name(f".{uuid.uuid4().hex}.part")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _composite_mask(original: Path, upload: bytes) -> bytes:
    """The original as RGBA with the uploaded image's alpha, its PNG text chunks kept, PNG compress level 4."""
    from PIL import PngImagePlugin

    from .images import open_image

    with open_image(original) as orig, open_image(io.BytesIO(upload)) as mask:
        info = PngImagePlugin.PngInfo()
        for key, value in getattr(orig, "text", {}).items():
            info.add_text(key, value)
        rgba = orig.convert("RGBA")
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.size != rgba.size:
            raise InputFileError(
                f"mask size {alpha.size[0]}x{alpha.size[1]} does not match the original's "
                f"{rgba.size[0]}x{rgba.size[1]}",
                status=400,
            )
        rgba.putalpha(alpha)
        out = io.BytesIO()
        rgba.save(out, format="PNG", compress_level=4, pnginfo=info)
    return out.getvalue()
