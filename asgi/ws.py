"""The /ws websocket hub: engine events out to ComfyUI clients, in ComfyUI's message shapes and routing (spec §3).

Threading: the engine's event bus calls `_on_event` on the engine's worker thread. That callback only hands the
message to the event loop (`call_soon_threadsafe`); everything else (encoding once per message, routing, buffering)
happens on the loop, so a websocket can never block the engine.

Routing: `status` goes to every socket; a message marked `broadcast` goes to every socket; anything else goes only to
the socket whose sid equals `message.client_id` (and is dropped when that client is not connected, as in ComfyUI).
A socket's sid is its `clientId` query parameter (or a fresh uuid4 hex). Connecting again with the same clientId
replaces the entry for that sid, so the new socket receives that client's messages from then on; like ComfyUI, the old
socket is not closed (closing it would make two browser tabs that share a clientId kick each other forever), it just
stops receiving. Messages sent while a client has no socket are not replayed.

Slow clients: every socket has its own bounded buffer and its own sender task. Lossy messages (`progress`,
`progress_state`, preview frames) are dropped once `lossy_buffer` messages are waiting; when any message would exceed
`max_buffer`, the client is disconnected with close code 1013 (try again later) rather than silently losing the
`executing`/`executed`/`execution_*` messages it depends on. Neither the engine nor other clients ever wait for it.
Dead sockets are removed when their sender fails or their reader sees the disconnect.

Binary frames: a `PreviewFrame` goes out as type 1 (BE u32 1, BE u32 format 1=JPEG/2=PNG, image bytes), or as type 4
(BE u32 4, BE u32 length, metadata JSON, image bytes) to clients that sent `{"type": "feature_flags", "data":
{"supports_preview_metadata": true}}` as their first text message. A frame that carries a node's output image
(SaveImageWebsocket; `PreviewFrame.lossy` False) is never dropped as lossy.
"""
from __future__ import annotations

import asyncio
import logging
import struct
import uuid
from collections import deque
from typing import Any

import msgspec
from starlette.websockets import WebSocket

from comfy_core.events import Executing, Message, PreviewFrame, Status

from .responses import encode
from .wire import ClientHello, WsMessage

log = logging.getLogger(__name__)

LOSSY_TYPES = frozenset({"progress", "progress_state", "preview"})
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_GOING_AWAY = 1001


class _Client:
    """One connected socket: its sid, its buffer of encoded frames and the task that drains it."""

    def __init__(self, sid: str, websocket: WebSocket):
        self.sid = sid
        self.websocket = websocket
        self.buffer: deque[str | bytes] = deque()
        self.wakeup = asyncio.Event()
        self.preview_metadata = False
        self.sender: asyncio.Task[None] | None = None
        self.evicted = asyncio.Event()  # set when the hub disconnects this client for not reading
        self.closing: asyncio.Task[None] | None = None  # that disconnect (close frame, at most 2 s)
        self.dropped = 0


def _text(event_type: str, data: Any) -> str:
    return encode(WsMessage(event_type, data)).decode()


class _PreviewFrames:
    """The two binary encodings of one preview, built at most once each."""

    def __init__(self, event: PreviewFrame):
        self.event = event
        self._plain: bytes | None = None
        self._meta: bytes | None = None

    def for_client(self, client: _Client) -> bytes:
        ev = self.event
        if client.preview_metadata:
            if self._meta is None:
                meta = encode({"node_id": ev.node_id, "prompt_id": ev.prompt_id, "display_node_id": ev.node_id,
                               "parent_node_id": None, "real_node_id": ev.node_id, "image_type": ev.image_type})
                self._meta = struct.pack(">II", 4, len(meta)) + meta + ev.image
            return self._meta
        if self._plain is None:
            self._plain = struct.pack(">II", 1, 2 if ev.image_type == "image/png" else 1) + ev.image
        return self._plain


class WebSocketHub:
    """Per-app registry of sockets by sid, subscribed to one engine's event bus."""

    def __init__(self, engine: Any, server_features: dict[str, Any], *, max_buffer: int = 2048,
                 lossy_buffer: int = 128):
        self.engine = engine
        self.server_features = server_features
        self.max_buffer, self.lossy_buffer = max_buffer, lossy_buffer
        self._clients: dict[str, _Client] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscription: Any = None
        self.dropped_messages = 0  # lossy messages not delivered to slow clients (all clients, since start)
        self.evictions = 0  # clients disconnected for not reading

    # --- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind to the running loop and subscribe to the engine (idempotent; also done on the first connect)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop and (self._loop is None or self._loop.is_closed() or not self._clients):
            self._loop = loop
        if self._subscription is None:
            self._subscription = self.engine.events.subscribe(self._on_event)

    async def aclose(self) -> None:
        if self._subscription is not None:
            self._subscription.close()
            self._subscription = None
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(self._shutdown(c, CLOSE_GOING_AWAY) for c in clients), return_exceptions=True)
        self._loop = None

    @property
    def client_ids(self) -> list[str]:
        return list(self._clients)

    # --- engine thread -> loop -----------------------------------------------------------------------------------

    def _on_event(self, message: Message) -> None:
        """Called on the engine's worker thread: hand over to the loop, never block, never raise."""
        loop = self._loop
        if loop is None or not self._clients:
            return
        try:
            loop.call_soon_threadsafe(self._dispatch, message)
        except RuntimeError:  # the loop is closed: the app has shut down
            pass

    def _targets(self, message: Message) -> list[_Client]:
        if message.broadcast or message.type == "status":
            return list(self._clients.values())
        client = self._clients.get(message.client_id) if message.client_id is not None else None
        return [client] if client is not None else []

    def _dispatch(self, message: Message) -> None:
        targets = self._targets(message)
        if not targets:
            return
        event = message.event
        lossy = message.type in LOSSY_TYPES
        if isinstance(event, PreviewFrame):
            frames = _PreviewFrames(event)
            for client in targets:
                self._push(client, frames.for_client(client), lossy=event.lossy)
            return
        text = _text(message.type, event)
        for client in targets:
            self._push(client, text, lossy=lossy)

    def _push(self, client: _Client, frame: str | bytes, *, lossy: bool) -> None:
        waiting = len(client.buffer)
        if lossy and waiting >= self.lossy_buffer:
            client.dropped += 1
            self.dropped_messages += 1
            return
        if waiting >= self.max_buffer:
            log.warning("websocket client %s is not reading (%d messages waiting); disconnecting it", client.sid, waiting)
            self._forget(client)
            self.evictions += 1
            client.closing = asyncio.ensure_future(self._shutdown(client, CLOSE_TRY_AGAIN_LATER))
            client.evicted.set()
            return
        client.buffer.append(frame)
        client.wakeup.set()

    # --- one socket ----------------------------------------------------------------------------------------------

    async def serve(self, websocket: WebSocket) -> None:
        """The whole life of one /ws connection: until the peer leaves or the hub disconnects it."""
        ids = websocket.query_params.getlist("clientId")  # the first one, as aiohttp's MultiDict.get (ComfyUI)
        sid = (ids[0] if ids else "") or uuid.uuid4().hex
        await websocket.accept()
        self.start()
        client = self._register(sid, websocket)
        reader = asyncio.ensure_future(self._read(client))
        evicted = asyncio.ensure_future(client.evicted.wait())
        try:
            await asyncio.wait({reader, evicted}, return_when=asyncio.FIRST_COMPLETED)
            if client.closing is not None:  # evicted: the close frame is on its way; stop serving this socket
                await client.closing
        finally:
            reader.cancel()
            evicted.cancel()
            self._forget(client)
            if client.sender is not None:
                client.sender.cancel()

    def _register(self, sid: str, websocket: WebSocket) -> _Client:
        client = _Client(sid, websocket)
        remaining = self.engine.queue_remaining()
        client.buffer.append(_text("status", {**Status.remaining(remaining).to_builtins(), "sid": sid}))
        node = self.engine.current_node(sid)
        if node is not None:
            client.buffer.append(_text("executing", Executing(node=node)))
        client.wakeup.set()
        self._clients[sid] = client  # replaces an earlier socket with the same clientId
        client.sender = asyncio.ensure_future(self._send(client))
        return client

    def _forget(self, client: _Client) -> None:
        if self._clients.get(client.sid) is client:
            del self._clients[client.sid]

    async def _send(self, client: _Client) -> None:
        websocket = client.websocket
        try:
            while True:
                while client.buffer:
                    frame = client.buffer.popleft()
                    if isinstance(frame, str):
                        await websocket.send_text(frame)
                    else:
                        await websocket.send_bytes(frame)
                client.wakeup.clear()
                await client.wakeup.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the peer went away mid-send
            log.debug("websocket %s send failed (%s); removing it", client.sid, exc)
            self._forget(client)

    async def _read(self, client: _Client) -> None:
        """Only the first JSON text message matters: a `feature_flags` hello, answered with the server's flags."""
        first = True
        while True:
            message = await client.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None or not first:
                continue
            try:
                hello = msgspec.json.decode(text, type=ClientHello)
            except msgspec.ValidationError:  # JSON, but not a hello: it still uses up "first"
                hello = ClientHello()
            except (msgspec.DecodeError, RecursionError):  # not JSON, or nested too deeply for msgspec (ComfyUI
                # logs and keeps waiting for the first message); a RecursionError used to end this reader silently
                continue
            first = False
            if hello.type == "feature_flags":
                client.preview_metadata = bool(hello.data.get("supports_preview_metadata"))
                self._push(client, _text("feature_flags", self.server_features), lossy=False)

    async def _shutdown(self, client: _Client, code: int) -> None:
        if client.sender is not None:
            client.sender.cancel()
        try:
            await asyncio.wait_for(client.websocket.close(code), timeout=2)
        except Exception:  # already closed or the peer is gone
            pass


async def websocket_endpoint(websocket: WebSocket) -> None:
    await websocket.app.state.hub.serve(websocket)
