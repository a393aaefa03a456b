"""File routes: uploads, /view and /view_metadata (ComfyUI server.py; spec §1 "Files").

Every client-supplied name goes through the engine's `Storage` / `ModelFolders`, which refuse traversal with an
`InputFileError` carrying the status: a bad name or unknown `type` is a 400 (ComfyUI: a 500 for an unknown upload
type), a subfolder or symlink that leaves its folder a 403, a missing file a 404. Images that cannot be decoded or
exceed the pixel cap of `comfy_core.images.open_image` are a 400.

Deliberate choices:
- `/view?preview=...` forces webp only when an explicit `channel` contains "a" (ComfyUI's code reads the channel with
  an empty default there; the spec's "including the default rgba" does not match that code).
- Raw files get `X-Content-Type-Options: nosniff` and a sandboxing CSP so that an uploaded SVG/HTML cannot script the
  API's origin; html/xhtml/js/css are sent as application/octet-stream as in ComfyUI.
- Content-Disposition carries an RFC 6266 `filename*` when the name is not plain ASCII (ComfyUI would fail to encode).
"""
from __future__ import annotations

import os
import struct
from typing import Any
from urllib.parse import quote

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from comfy_core.errors import InputFileError

from .errors import ClientError
from .responses import json_response

_NOT_RENDERED = {"text/html", "text/html-sandboxed", "application/xhtml+xml", "text/javascript",
                 "application/javascript", "text/css"}
_SAFETENSORS_HEADER_LIMIT = 1024 * 1024


def _engine(request: Request) -> Any:
    return request.app.state.engine


def content_disposition(name: str) -> str:
    """`filename="<name>"`, plus `filename*` (RFC 5987) when the name has non-ASCII or quoting characters."""
    plain = all(32 <= ord(c) < 127 for c in name) and '"' not in name and "\\" not in name
    if plain:
        return f'filename="{name}"'
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


# --- uploads -------------------------------------------------------------------------------------------------------


async def _upload_fields(request: Request) -> tuple[bytes, str, str, str, bool, Any]:
    """(data, filename, subfolder, type, overwrite, form) of a ComfyUI upload form; no file part is a 400."""
    try:
        form = await request.form()
    except HTTPException as exc:  # Starlette's plain-text 400 for a broken multipart body (or > 1000 fields)
        if exc.status_code == 413:  # over the upload limit while streaming: the 413 of every route
            raise
        raise ClientError(400, f"the upload is not a valid multipart form: {exc.detail}") from None
    image = form.get("image")
    if not isinstance(image, UploadFile) or not image.filename:
        raise ClientError(400, "the form has no `image` file part (or its file name is empty)")
    data = await image.read()
    subfolder = form.get("subfolder") or ""
    kind = form.get("type") or "input"
    overwrite = form.get("overwrite") in ("true", "1")
    if not isinstance(subfolder, str) or not isinstance(kind, str):
        raise ClientError(400, "`subfolder` and `type` must be text fields")
    return data, image.filename, subfolder, kind, overwrite, form


async def upload_image(request: Request) -> Response:
    data, filename, subfolder, kind, overwrite, _ = await _upload_fields(request)
    storage = _engine(request).storage
    result = await run_in_threadpool(
        lambda: storage.upload(data, filename, subfolder=subfolder, kind=kind, overwrite=overwrite)
    )
    return json_response(result)


def _original_ref(form: Any) -> dict[str, Any]:
    raw = form.get("original_ref")
    if not isinstance(raw, str):
        raise ClientError(400, "the mask form needs an `original_ref` text field (JSON)")
    try:
        ref = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ClientError(400, f"`original_ref` is not valid JSON: {exc}") from None
    except RecursionError:  # msgspec's depth guard
        raise ClientError(400, "`original_ref` is nested too deeply") from None
    if not isinstance(ref, dict):
        raise ClientError(400, "`original_ref` must be a JSON object with a `filename`")
    return ref


async def upload_mask(request: Request) -> Response:
    """The original's alpha replaced by the upload's; a missing or refused original writes nothing (still 200)."""
    data, filename, subfolder, kind, overwrite, form = await _upload_fields(request)
    ref = _original_ref(form)
    storage = _engine(request).storage
    result = await run_in_threadpool(
        lambda: storage.upload_mask(data, filename, ref, subfolder=subfolder, kind=kind, overwrite=overwrite)
    )
    return json_response(result)


# --- /view ---------------------------------------------------------------------------------------------------------


def _view_path(storage: Any, query: Any) -> tuple[str, Any]:
    """ComfyUI's resolution order: no name 404; annotation; bad name / unknown type 400; subfolder escape 403;
    basename only; missing 404."""
    filename = query.get("filename")
    if filename is None:
        raise InputFileError("no filename given", status=404)
    filename, kind = storage.split_annotation(filename, query.get("type", "output"))
    subfolder = query.get("subfolder", "")
    storage.resolve(kind, filename, subfolder)  # validates name, type and subfolder
    name = os.path.basename(filename)
    return name, storage.resolve(kind, name, subfolder, must_exist=True)


def _transformed(path: Any, preview: str | None, channel: str | None) -> tuple[bytes, str] | None:
    """Re-encoded bytes and media type for `preview` / `channel=rgb|a`; None means send the file as it is."""
    from comfy_core import images

    try:
        if preview is not None:
            quality_part = preview.rsplit(";", 1)[-1]
            if quality_part.isdigit() and int(quality_part) > 100:  # PIL refuses qualities above 100
                preview = f"{preview.rsplit(';', 1)[0]};100"
            return images.view_preview(path, preview, channel)
        if channel in ("rgb", "a"):
            return images.view_channel(path, channel), "image/png"
    except (OSError, ValueError, SyntaxError) as exc:  # decoding a damaged file, not a server fault
        raise InputFileError(f"cannot decode {os.path.basename(path)}: {exc}", status=400) from None
    return None


async def view(request: Request) -> Response:
    query = request.query_params
    name, path = await run_in_threadpool(_view_path, _engine(request).storage, query)
    headers = {"Content-Disposition": content_disposition(name)}
    preview, channel = query.get("preview"), query.get("channel")
    transformed = await run_in_threadpool(_transformed, path, preview, channel)
    if transformed is not None:
        data, media_type = transformed
        return Response(data, media_type=media_type, headers=headers)
    from comfy_core.storage import mimetype_of

    media_type = mimetype_of(name) or "application/octet-stream"
    if media_type in _NOT_RENDERED:
        media_type = "application/octet-stream"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    return FileResponse(path, media_type=media_type, headers=headers)


# --- /view_metadata ------------------------------------------------------------------------------------------------


def _safetensors_metadata(path: Any) -> dict[str, Any] | None:
    """The `__metadata__` of a safetensors header, or None (header over 1 MiB, not JSON, or no metadata)."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return None
        (length,) = struct.unpack("<Q", prefix)
        if length > _SAFETENSORS_HEADER_LIMIT:
            return None
        header = f.read(length)
    try:
        decoded = msgspec.json.decode(header)
    except (msgspec.DecodeError, RecursionError):  # a damaged or hostile header
        return None
    metadata = decoded.get("__metadata__") if isinstance(decoded, dict) else None
    return metadata if isinstance(metadata, dict) else None


async def view_metadata(request: Request) -> Response:
    folder, filename = request.path_params["folder_name"], request.query_params.get("filename")
    if not filename or not filename.endswith(".safetensors"):
        raise InputFileError("filename must name a .safetensors file", status=404)
    folders = _engine(request).folders

    def lookup() -> dict[str, Any] | None:
        path = folders.full_path(folder, filename)
        return None if path is None else _safetensors_metadata(path)

    metadata = await run_in_threadpool(lookup)
    if metadata is None:
        raise InputFileError(f"no safetensors metadata for {filename!r} in {folder!r}", status=404)
    return json_response(metadata)


UPLOAD_ROUTES = [
    ("/upload/image", upload_image, ["POST"]),
    ("/upload/mask", upload_mask, ["POST"]),
]
ROUTES = [
    ("/view", view, ["GET"]),
    ("/view_metadata/{folder_name}", view_metadata, ["GET", "POST"]),
]
