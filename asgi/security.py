"""ComfyUI's origin guard as a pure ASGI middleware (HTTP and websocket upgrades alike).

A web page on another origin can make a browser POST to http://127.0.0.1:8188; browsers send its `Origin`. So when
the request names a loopback `Host` and an `Origin` whose host[:port] differs, the answer is an empty 403 (a refused
websocket upgrade is a 403 too). Ports are compared only when both sides carry one. Unlike ComfyUI, a host name is
treated as loopback only when it is an IP loopback literal or `localhost` / `*.localhost`; no DNS lookup is made on
the request path. When CORS is enabled the guard is off (the CORS policy decides), as in ComfyUI.
"""
from __future__ import annotations

import ipaddress
import logging
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        host = host.rstrip(".").lower()
        return host == "localhost" or host.endswith(".localhost")


def _split(netloc: str) -> tuple[str | None, int | None]:
    """(hostname, port) of a `host[:port]`; a malformed port counts as none, a malformed host (`[`) as no host."""
    try:
        parts = urlsplit("//" + netloc)
    except ValueError:
        return None, None
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname, port


def origin_mismatch(host_header: str, origin_header: str) -> bool:
    """True when `Host` is loopback and `Origin` names another host (or port, when both name one). An Origin
    that is not even a URL (`http://[`, which no browser sends) counts as another host: refused, not a 500."""
    host_name, host_port = _split(host_header.lower())
    if not is_loopback(host_name):
        return False
    try:
        origin_netloc = urlsplit(origin_header.lower()).netloc
    except ValueError:
        return True
    origin_name, origin_port = _split(origin_netloc)
    if not host_name or not origin_name:
        return False
    if host_port is None or origin_port is None:
        return host_name != origin_name
    return (host_name, host_port) != (origin_name, origin_port)


class OriginGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            headers = Headers(scope=scope)
            host, origin = headers.get("host"), headers.get("origin")
            if host and origin and origin_mismatch(host, origin):
                log.warning("refused a request whose Origin %r does not match its loopback Host %r", origin, host)
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                else:
                    await Response(status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)
