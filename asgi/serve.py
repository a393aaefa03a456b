"""`serve()`: run the ComfyUI API over a fresh engine with uvicorn (what `comfy-core serve` calls).

Loopback by default, like ComfyUI; `listen=True` binds every IPv4 interface (0.0.0.0), and `listen="a,b"` binds each
listed address (ComfyUI's `--listen` takes a comma list too).
"""
from __future__ import annotations

import logging
import socket
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


def listen_hosts(host: str, listen: bool | str) -> list[str]:
    """The addresses to bind: `host` unless `listen` says otherwise."""
    if listen is True:
        return ["0.0.0.0"]
    if isinstance(listen, str) and listen:
        return [h.strip() for h in listen.split(",") if h.strip()]
    return [host]


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def serve(
    engine_config: Any,
    host: str = "127.0.0.1",
    port: int = 8188,
    listen: bool | str = False,
    *,
    cors_origins: Sequence[str] | None = None,
    max_upload_bytes: int = 100 * 1024 * 1024,
    tls_keyfile: str | None = None,
    tls_certfile: str | None = None,
    log_level: str = "info",
    frontend_dir: str | None = "auto",
) -> None:
    """Build an `Engine` from `engine_config`, wrap it in `create_app(owns_engine=True)` and serve until Ctrl-C.

    frontend_dir: "auto" serves the installed `comfyui-frontend-package` if there is one, None serves the API only.
    """
    import uvicorn

    from comfy_core import Engine

    from .app import create_app
    from .frontend import installed_frontend

    if frontend_dir == "auto":
        frontend_dir = installed_frontend()
        if frontend_dir is None:
            log.info("no web frontend installed (pip install 'comfy-core[frontend]'); serving the API only")
    app = create_app(Engine(engine_config), owns_engine=True, cors_origins=cors_origins,
                     max_upload_bytes=max_upload_bytes, frontend_dir=frontend_dir)
    hosts = listen_hosts(host, listen)
    config = uvicorn.Config(app, host=hosts[0], port=port, log_level=log_level, ssl_keyfile=tls_keyfile,
                            ssl_certfile=tls_certfile)
    server = uvicorn.Server(config)
    scheme = "https" if tls_certfile else "http"
    for h in hosts:
        log.info("comfy-core serving the ComfyUI API at %s://%s:%d", scheme, f"[{h}]" if ":" in h else h, port)
    if len(hosts) == 1:
        server.run()
    else:
        server.run(sockets=[_bind(h, port) for h in hosts])
