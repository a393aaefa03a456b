"""Metadata routes: /system_stats, /object_info, /embeddings, /extensions (+ the custom node web files), /models,
/features (ComfyUI server.py; spec §1 "Node metadata and models", §5).

Custom node web files are served only from inside the module's web dir: `..`, absolute paths, backslashes, NUL bytes
and symlinks leading out are refused (404, as for any file that is not there).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from comfy_core.errors import InputFileError

from .responses import json_response


def _engine(request: Request) -> Any:
    return request.app.state.engine


def _with_versions(stats: dict[str, Any], versions: dict[str, Any]) -> dict[str, Any]:
    """The engine's stats with the frontend version facts after `comfyui_version`, where ComfyUI puts them."""
    system: dict[str, Any] = {}
    for key, value in stats["system"].items():
        system[key] = value
        if key == "comfyui_version":
            system.update(versions)
    return {**stats, "system": system}


async def system_stats(request: Request) -> Response:
    stats = await run_in_threadpool(_engine(request).system_stats)
    return json_response(_with_versions(stats, request.app.state.frontend_versions))


async def object_info(request: Request) -> Response:
    return json_response(await run_in_threadpool(_engine(request).object_info))


async def object_info_one(request: Request) -> Response:
    return json_response(await run_in_threadpool(_engine(request).object_info, request.path_params["node_class"]))


async def embeddings(request: Request) -> Response:
    return json_response(await run_in_threadpool(_engine(request).embeddings))


def _web_dirs(request: Request) -> dict[str, Path]:
    """Custom node web dirs by module, then the served frontend's own extension folders (e.g. `core`)."""
    return {**request.app.state.frontend_extension_dirs, **_engine(request).extension_dirs()}


def _extension_urls(web_dirs: dict[str, Path]) -> list[str]:
    """`/extensions/<quoted module>/<relpath>` of every .js file under each web dir."""
    urls = []
    for module, web_dir in web_dirs.items():
        root = Path(web_dir)
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.js")):
            urls.append(f"/extensions/{quote(module)}/{path.relative_to(root).as_posix()}")
    return urls


async def extensions(request: Request) -> Response:
    web_dirs = _web_dirs(request)
    return json_response(await run_in_threadpool(_extension_urls, web_dirs))


def _extension_file(web_dirs: dict[str, Path], module: str, relpath: str) -> Path:
    web_dir = web_dirs.get(module)
    parts = relpath.split("/")
    if web_dir is None or not relpath or "\\" in relpath or "\x00" in relpath or ".." in parts or relpath[0] == "/":
        raise InputFileError(f"no such extension file: {module}/{relpath}", status=404)
    root = os.path.realpath(web_dir)
    real = os.path.realpath(os.path.join(root, relpath))
    if not real.startswith(root + os.sep) or not os.path.isfile(real):
        raise InputFileError(f"no such extension file: {module}/{relpath}", status=404)
    return Path(real)


async def extension_file(request: Request) -> Response:
    web_dirs = _web_dirs(request)
    module, relpath = request.path_params["module"], request.path_params["path"]
    path = await run_in_threadpool(_extension_file, web_dirs, module, relpath)
    headers = {"Cache-Control": "no-cache"} if path.suffix in (".js", ".css") else None
    return FileResponse(path, headers=headers)


async def models(request: Request) -> Response:
    return json_response(_engine(request).folders.kinds())


async def models_in(request: Request) -> Response:
    folders = _engine(request).folders
    return json_response(await run_in_threadpool(folders.list_strict, request.path_params["folder"]))


async def features(request: Request) -> Response:
    return json_response(request.app.state.server_features)


ROUTES = [
    ("/system_stats", system_stats, ["GET"]),
    ("/object_info", object_info, ["GET"]),
    ("/object_info/{node_class:path}", object_info_one, ["GET"]),
    ("/embeddings", embeddings, ["GET"]),
    ("/extensions", extensions, ["GET"]),
    ("/models", models, ["GET"]),
    ("/models/{folder}", models_in, ["GET"]),
    ("/features", features, ["GET"]),
]
# Static files, not aliased under /api (as ComfyUI's static routes are not).
STATIC_ROUTES = [
    ("/extensions/{module}/{path:path}", extension_file, ["GET"]),
]
