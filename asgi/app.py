"""`create_app(engine)`: ComfyUI's HTTP + WebSocket API as a Starlette app over one comfy-core engine.

No globals: the engine, the websocket hub and the server's feature flags live on `app.state`, so two apps with two
engines work in one process, and the app can be mounted under any prefix (`Mount("/comfy", app=create_app(e))`).
Every route is registered at `<path>` and at `/api<path>` like ComfyUI's; GET routes answer HEAD too.

Mounted apps: Starlette does not run a mounted app's lifespan. Either start the engine yourself (`owns_engine=False`,
the default; the websocket hub then binds itself on the first connection), or enter the app's lifespan from yours:
`async with comfy_app.router.lifespan_context(comfy_app): yield`.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Route, WebSocketRoute

from . import routes_files, routes_info, routes_internal, routes_queue, routes_user
from .errors import EXCEPTION_HANDLERS
from .frontend import (
    frontend_extension_dirs,
    frontend_routes,
    frontend_versions,
    installed_docs,
    installed_templates,
)
from .security import OriginGuard
from .ws import WebSocketHub, websocket_endpoint

DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024  # ComfyUI's --max-upload-size default (100 MB)
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # JSON bodies: a prompt with its embedded workflow stays far below


def _aliased(table: Sequence[tuple[str, Any, list[str]]], max_body_size: int) -> list[BaseRoute]:
    """Each route at its path and at /api<path>, with a request body limit (413 when exceeded)."""
    routes: list[BaseRoute] = []
    for path, endpoint, methods in table:
        for prefix in ("", "/api"):
            routes.append(Route(prefix + path, endpoint, methods=methods, max_body_size=max_body_size))
    return routes


def _routes(max_body: int, max_upload: int) -> list[BaseRoute]:
    routes = _aliased(routes_queue.ROUTES + routes_files.ROUTES + routes_info.ROUTES + routes_user.ROUTES, max_body)
    routes += _aliased(routes_files.UPLOAD_ROUTES + routes_user.UPLOAD_ROUTES, max_upload)
    routes += [WebSocketRoute("/ws", websocket_endpoint), WebSocketRoute("/api/ws", websocket_endpoint)]
    unaliased = routes_info.STATIC_ROUTES + routes_user.STATIC_ROUTES + routes_internal.ROUTES
    routes += [Route(p, e, methods=m, max_body_size=max_body) for p, e, m in unaliased]
    return routes


def _middleware(cors_origins: Sequence[str] | None) -> list[Middleware]:
    if cors_origins:
        return [Middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_credentials=True,
                           allow_methods=["POST", "GET", "DELETE", "PUT", "OPTIONS"],
                           allow_headers=["Content-Type", "Authorization"])]
    return [Middleware(OriginGuard)]


def create_app(
    engine: Any,
    *,
    owns_engine: bool = False,
    cors_origins: Sequence[str] | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ws_max_buffer: int = 2048,
    ws_lossy_buffer: int = 128,
    frontend_dir: str | Path | None = None,
) -> Starlette:
    """The ComfyUI API over `engine`.

    owns_engine: start the engine at app startup and close it at shutdown (otherwise the caller does both).
    cors_origins: e.g. ["*"] or ["https://my.site"]; enables CORS headers and turns the loopback origin guard off.
    max_upload_bytes / max_body_bytes: request body limits of the upload routes / every other route (413 past them).
    ws_max_buffer / ws_lossy_buffer: per-websocket buffer sizes (see `comfy_core.asgi.ws`).
    frontend_dir: a ComfyUI web frontend build to serve at `/` (`frontend.installed_frontend()` finds the
    `comfyui-frontend-package` wheel); API routes keep priority over its files.
    """
    features = {"supports_preview_metadata": True, "max_upload_size": float(max_upload_bytes)}
    hub = WebSocketHub(engine, features, max_buffer=ws_max_buffer, lossy_buffer=ws_lossy_buffer)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if owns_engine:
            await run_in_threadpool(engine.start)
        hub.start()
        try:
            yield
        finally:
            await hub.aclose()
            if owns_engine:
                await run_in_threadpool(engine.close)

    routes = _routes(max_body_bytes, max_upload_bytes)
    if frontend_dir is not None:
        routes += frontend_routes(frontend_dir, installed_templates(), installed_docs())
    app = Starlette(
        routes=routes,
        middleware=_middleware(cors_origins),
        exception_handlers=dict(EXCEPTION_HANDLERS),
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.hub = hub
    app.state.server_features = features
    app.state.frontend_extension_dirs = frontend_extension_dirs(frontend_dir)
    app.state.frontend_versions = frontend_versions()
    app.state.limits = {"max_upload_bytes": max_upload_bytes, "max_body_bytes": max_body_bytes}
    return app


__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_UPLOAD_BYTES", "create_app"]
