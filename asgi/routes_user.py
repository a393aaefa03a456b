"""User routes: /users, /userdata, /v2/userdata, /settings, /experiment/models, /workflow_templates, /i18n
(ComfyUI app/user_manager.py, app_settings.py, model_manager.py, custom_node_manager.py; spec §1 "User data").

The user is the `Comfy-User` header with multi-user, else `default`; an unknown user is a 403 (ComfyUI: a 500 on
most of these routes). `{file}` in /userdata/{file} is ONE URL-encoded segment (`workflows%2Fa.json`): Starlette
matches decoded paths, so these routes take the rest of the path and split the raw (still encoded) path themselves.
Like ComfyUI, a name still containing `%` after that is decoded once more. Path refusals come from
`comfy_core.userdata` (400 bad name, 403 escape, 404 missing, 409 exists); /v2/userdata answers an unsafe `path`
with 400 as ComfyUI does. POST /users errors keep ComfyUI's `{"error": "<text>"}` body, which the frontend shows.
"""
from __future__ import annotations

import os
from typing import Any
from urllib.parse import unquote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from comfy_core import model_browser, node_resources
from comfy_core.errors import InputFileError, UserDataError
from comfy_core.storage import mimetype_of

from .errors import ClientError
from .responses import empty_response, json_response
from .routes_files import _NOT_RENDERED
from .wire import decode_any

USER_HEADER = "comfy-user"


def _engine(request: Request) -> Any:
    return request.app.state.engine


def _user(request: Request) -> str:
    return _engine(request).userdata.request_user(request.headers.get(USER_HEADER))


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").lower() == "true"


async def _json_body(request: Request) -> Any:
    return decode_any(await request.body())


# --- users -----------------------------------------------------------------------------------------------------------


async def get_users(request: Request) -> Response:
    store = _engine(request).userdata
    if store.multi_user:
        return json_response({"storage": "server", "users": store.users()})
    return json_response({"storage": "server", "migrated": await run_in_threadpool(store.migrated, _user(request))})


async def post_users(request: Request) -> Response:
    body = await _json_body(request)
    username = body.get("username") if isinstance(body, dict) else None
    if not isinstance(username, str):
        return json_response({"error": "username not provided"}, 400)
    try:
        user_id = await run_in_threadpool(_engine(request).userdata.add_user, username)
    except UserDataError as exc:
        return json_response({"error": str(exc)}, exc.status)
    return json_response(user_id)


# --- user data ---------------------------------------------------------------------------------------------------


async def list_userdata(request: Request) -> Response:
    directory = request.query_params.get("dir", "")
    if not directory:
        raise ClientError(400, "Directory not provided")
    store, user = _engine(request).userdata, _user(request)
    listing = await run_in_threadpool(lambda: store.list_files(
        user, unquote(directory), recurse=_flag(request, "recurse"), full_info=_flag(request, "full_info"),
        split=_flag(request, "split")))
    return json_response(listing)


async def list_userdata_v2(request: Request) -> Response:
    store, user = _engine(request).userdata, _user(request)
    path = unquote(request.query_params.get("path", ""))
    try:
        listing = await run_in_threadpool(store.list_v2, user, path)
    except UserDataError as exc:
        if exc.status == 403:  # ComfyUI: "Invalid path requested" is a 400 on this route
            raise UserDataError(str(exc), status=400) from None
        raise
    return json_response(listing)


def _segment(raw: str) -> str:
    """One raw path segment decoded (twice when it still holds a `%`, as ComfyUI does)."""
    name = unquote(raw)
    return unquote(name) if "%" in name else name


def _file_params(request: Request) -> tuple[str, str | None]:
    """(file, dest or None) from the raw path `.../userdata/<file>[/move/<dest>]`."""
    raw = request.scope.get("raw_path", request.url.path.encode()).decode("latin-1").split("?", 1)[0]
    parts = raw.split("/")
    if len(parts) >= 4 and parts[-2] == "move" and parts[-4] == "userdata":
        file, dest = parts[-3], parts[-1]
        if not file or not dest:
            raise ClientError(400, "a move needs a file and a destination")
        return _segment(file), _segment(dest)
    if len(parts) >= 2 and parts[-2] == "userdata" and parts[-1]:
        return _segment(parts[-1]), None
    raise InputFileError("not found", status=404)


def _send_file(path: Any, is_user_css: bool) -> Response:
    """User files never render inline (except the user's own user.css): attachment, nosniff, no active types."""
    media_type = mimetype_of(path.name) or "application/octet-stream"
    if is_user_css:
        media_type, disposition = "text/css", "inline"
    else:
        if media_type in _NOT_RENDERED or media_type.startswith("image/svg"):
            media_type = "application/octet-stream"
        disposition = "attachment"
    return FileResponse(path, media_type=media_type,
                        headers={"X-Content-Type-Options": "nosniff", "Content-Disposition": disposition})


async def userdata_file(request: Request) -> Response:
    """GET / POST / DELETE /userdata/{file} and POST /userdata/{file}/move/{dest}."""
    store, user = _engine(request).userdata, _user(request)
    file, dest = _file_params(request)
    overwrite = request.query_params.get("overwrite", "true") != "false"
    full_info = _flag(request, "full_info")
    if dest is not None:
        if request.method != "POST":
            raise ClientError(405, "moving a file is a POST", type_="method_not_allowed")
        moved = await run_in_threadpool(
            lambda: store.move(user, file, dest, overwrite=overwrite, full_info=full_info))
        return json_response(moved)
    if request.method in ("GET", "HEAD"):
        path = await run_in_threadpool(store.file_path, user, file)
        return _send_file(path, path == store.user_root(user) / "user.css")
    if request.method == "DELETE":
        await run_in_threadpool(store.delete, user, file)
        return Response(status_code=204)
    data = await request.body()
    written = await run_in_threadpool(
        lambda: store.write(user, file, data, overwrite=overwrite, full_info=full_info))
    return json_response(written)


# --- settings ----------------------------------------------------------------------------------------------------


async def get_settings(request: Request) -> Response:
    store, user = _engine(request).userdata, _user(request)
    return json_response(await run_in_threadpool(store.settings, user))


async def get_setting(request: Request) -> Response:
    store, user = _engine(request).userdata, _user(request)
    return json_response(await run_in_threadpool(store.setting, user, request.path_params["id"]))


async def post_settings(request: Request) -> Response:
    store, user = _engine(request).userdata, _user(request)
    changes = await _json_body(request)
    if not isinstance(changes, dict):
        raise ClientError(400, "POST /settings takes a JSON object")
    await run_in_threadpool(store.update_settings, user, changes)
    return empty_response()


async def post_setting(request: Request) -> Response:
    store, user = _engine(request).userdata, _user(request)
    value = await _json_body(request)
    await run_in_threadpool(store.set_setting, user, request.path_params["id"], value)
    return empty_response()


# --- model browser, templates, i18n ----------------------------------------------------------------------------


async def experiment_models(request: Request) -> Response:
    return json_response(model_browser.folders(_engine(request).folders))


async def experiment_models_in(request: Request) -> Response:
    folders = _engine(request).folders
    return json_response(await run_in_threadpool(model_browser.files, folders, request.path_params["folder"]))


async def experiment_model_preview(request: Request) -> Response:
    params = request.path_params
    try:
        index = int(params["path_index"])
    except ValueError:
        raise InputFileError(f"path index must be a number: {params['path_index']!r}", status=400) from None
    folders = _engine(request).folders
    data = await run_in_threadpool(model_browser.preview, folders, params["folder"], index, params["filename"])
    return Response(data, media_type="image/webp")


def _custom_nodes_dirs(request: Request) -> list[Any]:
    return _engine(request).folders.dirs("custom_nodes")


async def workflow_templates(request: Request) -> Response:
    dirs = _custom_nodes_dirs(request)
    return json_response(await run_in_threadpool(node_resources.workflow_templates, dirs))


async def i18n(request: Request) -> Response:
    dirs = _custom_nodes_dirs(request)
    return json_response(await run_in_threadpool(node_resources.translations, dirs))


def _template_file(dirs: list[Any], module: str, relpath: str) -> Any:
    """A file of a pack's template folders; anything unsafe or absent is a 404 (as a missing static file)."""
    parts = relpath.split("/")
    if not relpath or "\\" in relpath or "\x00" in relpath or ".." in parts or relpath[0] == "/" or "/" in module:
        raise InputFileError(f"no such template file: {module}/{relpath}", status=404)
    for root in dirs:
        pack = root / module
        if module in ("", ".", "..") or not pack.is_dir():
            continue
        for folder in node_resources.template_dirs(pack):
            real_root = os.path.realpath(folder)
            real = os.path.realpath(os.path.join(real_root, relpath))
            if real.startswith(real_root + os.sep) and os.path.isfile(real):
                return real
    raise InputFileError(f"no such template file: {module}/{relpath}", status=404)


async def workflow_template_file(request: Request) -> Response:
    module, relpath = request.path_params["module"], request.path_params["path"]
    dirs = _custom_nodes_dirs(request)
    return FileResponse(await run_in_threadpool(_template_file, dirs, module, relpath))


ROUTES = [
    ("/users", get_users, ["GET"]),
    ("/users", post_users, ["POST"]),
    ("/userdata", list_userdata, ["GET"]),
    ("/v2/userdata", list_userdata_v2, ["GET"]),
    ("/settings", get_settings, ["GET"]),
    ("/settings", post_settings, ["POST"]),
    ("/settings/{id}", get_setting, ["GET"]),
    ("/settings/{id}", post_setting, ["POST"]),
    ("/experiment/models", experiment_models, ["GET"]),
    ("/experiment/models/{folder}", experiment_models_in, ["GET"]),
    ("/experiment/models/preview/{folder}/{path_index}/{filename:path}", experiment_model_preview, ["GET"]),
    ("/workflow_templates", workflow_templates, ["GET"]),
    ("/i18n", i18n, ["GET"]),
]
# User files are uploads: they get the upload size limit.
UPLOAD_ROUTES = [
    ("/userdata/{file:path}", userdata_file, ["GET", "POST", "DELETE"]),
]
# Static template files: only under /api, as ComfyUI registers them.
STATIC_ROUTES = [
    ("/api/workflow_templates/{module}/{path:path}", workflow_template_file, ["GET"]),
]
