"""/internal/* routes for ComfyUI's frontend (api_server/routes/internal/internal_routes.py): logs, log
subscriptions, folder paths and file listings. ComfyUI mounts them as a sub-application, so they are NOT aliased
under /api.

- GET /internal/logs: the kept log entries as one JSON string of `<t> - <m>` pieces (ComfyUI's shape).
- GET /internal/logs/raw: `{"entries": [{"t", "m"}], "size": {"cols", "rows"}}`.
- PATCH /internal/logs/subscribe `{"clientId", "enabled"}`: that websocket client gets `logs` messages for new
  records. Subscriptions of clients that have left are forgotten on the next PATCH (ComfyUI: on the next record).
- GET /internal/folder_paths: `{kind: [dirs]}` for every model kind.
- GET /internal/files/{input|output|temp}: top-level file names, newest first; any other type is a 400.
"""
from __future__ import annotations

import os
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from comfy_core.storage import KINDS

from .responses import empty_response, json_response
from .wire import decode


class LogSubscription(msgspec.Struct, rename="camel"):
    client_id: str
    enabled: bool


def _engine(request: Request) -> Any:
    return request.app.state.engine


async def logs(request: Request) -> Response:
    return json_response(_engine(request).log_capture.text())


async def logs_raw(request: Request) -> Response:
    return json_response(_engine(request).log_capture.raw())


async def logs_subscribe(request: Request) -> Response:
    body = decode(await request.body(), LogSubscription)
    capture = _engine(request).log_capture
    capture.prune(request.app.state.hub.client_ids)
    capture.subscribe(body.client_id, body.enabled)
    return empty_response()


async def folder_paths(request: Request) -> Response:
    folders = _engine(request).folders
    return json_response({kind: [str(d) for d in folders.dirs(kind)] for kind in folders.kinds()})


def _newest_first(root: Any) -> list[str]:
    entries = []
    for entry in os.scandir(root):
        try:
            if entry.is_file():
                entries.append((entry.stat().st_mtime, entry.name))
        except OSError:  # vanished meanwhile
            continue
    entries.sort(key=lambda item: (-item[0], item[1]))
    return [name for _, name in entries]


async def files(request: Request) -> Response:
    kind = request.path_params["directory_type"]
    if kind not in KINDS:
        return json_response({"error": "Invalid directory type"}, 400)
    storage = _engine(request).storage
    return json_response(await run_in_threadpool(lambda: _newest_first(storage.root(kind))))


ROUTES = [
    ("/internal/logs", logs, ["GET"]),
    ("/internal/logs/raw", logs_raw, ["GET"]),
    ("/internal/logs/subscribe", logs_subscribe, ["PATCH"]),
    ("/internal/folder_paths", folder_paths, ["GET"]),
    ("/internal/files/{directory_type}", files, ["GET"]),
]
