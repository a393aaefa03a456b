"""ComfyUI's `server` module: `PromptServer.instance` for custom nodes, bound to the engine running the current node.

`send_sync(event, data, sid)` emits a custom event on that engine's event bus; the websocket layer delivers it as
ComfyUI does, `{"type": event, "data": data}`, to client `sid` or to every client when `sid` is None.
`routes` collects aiohttp-style route declarations per engine (`NodeRegistry.custom_routes`); comfy-core does not
serve aiohttp handlers, it records and logs them.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..context import NodeContext, current
from ..events import Event

log = logging.getLogger(__name__)


class BinaryEventTypes:
    PREVIEW_IMAGE = 1
    UNENCODED_PREVIEW_IMAGE = 2
    TEXT = 3
    PREVIEW_IMAGE_WITH_METADATA = 4


@dataclass(frozen=True)
class RouteDef:
    """One route a custom node declared: HTTP method, path, handler and aiohttp's keyword options."""

    method: str
    path: str
    handler: Any
    kwargs: dict[str, Any] = field(default_factory=dict)


def custom_event(event_type: str, data: Any) -> Event | None:
    """An `Event` of type `event_type` whose encoding is exactly `data` (a mapping or a sequence); None otherwise."""
    if isinstance(data, Mapping):
        keys, values = [str(k) for k in data], list(data.values())
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        keys, values = None, list(data)  # encoded as an array: a struct with array_like fields
    else:
        return None
    names = [f"f{i}" for i in range(len(values))]  # keys need not be identifiers: rename on the wire
    cls = msgspec.defstruct("CustomEvent", [(n, Any) for n in names], bases=(Event,), kw_only=True,
                            namespace={"TYPE": event_type}, array_like=keys is None,
                            rename=dict(zip(names, keys)) if keys is not None else None)
    return cls(**dict(zip(names, values)))


class RouteCollector:
    """aiohttp `RouteTableDef` look-alike: decorators record routes in the engine's registry, handlers unchanged."""

    def __init__(self, ctx: NodeContext):
        self._routes: list[Any] = ctx.registry.custom_routes if ctx.registry is not None else []

    def add(self, route: RouteDef) -> None:
        self._routes.append(route)
        log.info("custom node route %s %s recorded; comfy-core does not serve aiohttp handlers",
                 route.method, route.path)

    def route(self, method: str, path: str, **kwargs: Any) -> Callable[[Any], Any]:
        def record(handler: Any) -> Any:
            self.add(RouteDef(method.upper(), path, handler, kwargs))
            return handler
        return record

    def get(self, path: str, **kwargs: Any) -> Callable[[Any], Any]:
        return self.route("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Callable[[Any], Any]:
        return self.route("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Callable[[Any], Any]:
        return self.route("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Callable[[Any], Any]:
        return self.route("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Callable[[Any], Any]:
        return self.route("DELETE", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> Callable[[Any], Any]:
        return self.route("HEAD", path, **kwargs)

    def view(self, path: str, **kwargs: Any) -> Callable[[Any], Any]:
        return self.route("*", path, **kwargs)

    def static(self, prefix: str, path: str, **kwargs: Any) -> None:
        self.add(RouteDef("STATIC", prefix, str(path), kwargs))

    def __iter__(self) -> Iterator[RouteDef]:
        return iter(list(self._routes))

    def __len__(self) -> int:
        return len(self._routes)


class _App:
    """The little of `PromptServer.instance.app` packs touch: `add_routes` records like `routes` does."""

    def add_routes(self, routes: Any) -> None:
        collector = RouteCollector(current())
        for route in routes:
            if isinstance(route, RouteDef):
                collector.add(route)
            else:
                log.info("custom node route %r ignored; comfy-core does not serve aiohttp handlers", route)


class _ServerInstance:
    """`PromptServer.instance`: holds nothing, looks up the current engine on every call."""

    @property
    def routes(self) -> RouteCollector:
        return RouteCollector(current())

    @property
    def app(self) -> _App:
        return _App()

    @property
    def client_id(self) -> str | None:
        """The websocket client of the running prompt (None when it has none)."""
        return current().client_id

    @property
    def last_prompt_id(self) -> str | None:
        return current().prompt_id

    @property
    def last_node_id(self) -> str | None:
        return current().node_id

    def send_sync(self, event: str | int, data: Any, sid: str | None = None) -> None:
        """Send `{"type": event, "data": data}` to client `sid`, or to every client when `sid` is None."""
        ctx = current()
        if not isinstance(event, str):
            log.warning("send_sync: binary event %r from a custom node is not supported; dropped", event)
            return
        message = custom_event(event, data)
        if message is None:
            log.warning("send_sync(%r): data of type %s cannot be sent; dropped", event, type(data).__name__)
            return
        if ctx.events is not None:
            ctx.events.emit(message, client_id=sid, broadcast=sid is None)

    async def send(self, event: str | int, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)

    async def send_json(self, event: str, data: Any, sid: str | None = None) -> None:
        self.send_sync(event, data, sid)


class PromptServer:
    """ComfyUI's server class; custom nodes only use `PromptServer.instance`."""

    instance = _ServerInstance()
