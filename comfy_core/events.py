"""Typed engine events with ComfyUI's names and fields, and a thread-safe bus that delivers them.

Each event is a msgspec Struct whose fields are exactly the `data` object of ComfyUI's websocket message of the same
`type`. The bus wraps it in a `Message` that also says who should receive it over a websocket: `client_id` (the
prompt's client) and `broadcast` (ComfyUI sends progress and interrupts to everyone when a prompt has no client).
Library subscribers see every message; the ASGI layer applies ComfyUI's routing.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import msgspec

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


class Event(msgspec.Struct, kw_only=True):
    TYPE: ClassVar[str] = ""

    def to_builtins(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)


class Status(Event):
    TYPE: ClassVar[str] = "status"
    status: dict[str, Any]  # {"exec_info": {"queue_remaining": n}}

    @classmethod
    def remaining(cls, n: int) -> Status:
        return cls(status={"exec_info": {"queue_remaining": n}})


class ExecutionStart(Event):
    TYPE: ClassVar[str] = "execution_start"
    prompt_id: str
    timestamp: int


class ExecutionCached(Event):
    TYPE: ClassVar[str] = "execution_cached"
    nodes: list[str]
    prompt_id: str
    timestamp: int


class Executing(Event, omit_defaults=True):
    """A node starts (`node` set), or the prompt is done (`node` None, sent after history is written)."""

    TYPE: ClassVar[str] = "executing"
    node: str | None
    display_node: str | None = None
    prompt_id: str | None = None


class Progress(Event):
    TYPE: ClassVar[str] = "progress"
    value: int
    max: int
    prompt_id: str
    node: str


class ProgressState(Event):
    """Every node of the prompt that has started so far, with its progress and state (running/finished/error)."""

    TYPE: ClassVar[str] = "progress_state"
    prompt_id: str
    nodes: dict[str, dict[str, Any]]


class Executed(Event):
    TYPE: ClassVar[str] = "executed"
    node: str
    display_node: str
    output: dict[str, Any] | None
    prompt_id: str


class ExecutionSuccess(Event):
    TYPE: ClassVar[str] = "execution_success"
    prompt_id: str
    timestamp: int


class ExecutionError(Event):
    TYPE: ClassVar[str] = "execution_error"
    prompt_id: str
    node_id: str
    node_type: str
    executed: list[str]
    exception_message: str
    exception_type: str
    traceback: list[str]
    current_inputs: dict[str, Any] | list[Any]  # a list (empty) for blocked-execution reports, as ComfyUI sends
    current_outputs: list[str]
    timestamp: int


class ExecutionInterrupted(Event):
    TYPE: ClassVar[str] = "execution_interrupted"
    prompt_id: str
    node_id: str
    node_type: str
    executed: list[str]
    timestamp: int


class PreviewFrame(Event):
    """A latent preview image (JPEG bytes); sent as a binary websocket frame, never as JSON."""

    TYPE: ClassVar[str] = "preview"
    image: bytes
    image_type: str  # "image/jpeg" | "image/png"
    prompt_id: str
    node_id: str
    lossy: bool = True  # False for an image that is a node's output (SaveImageWebsocket): never dropped


class OutputImage(msgspec.Struct, frozen=True):
    """An encoded image a node passes as the `preview` of a progress report to send it to the prompt's client as
    a binary frame even when previews are off (ComfyUI's SaveImageWebsocket goes through the same channel)."""

    image: bytes
    image_type: str = "image/png"


# Events ComfyUI sends to every socket when the prompt has no client (the rest go to the prompt's client only).
BROADCAST_WITHOUT_CLIENT = frozenset({"progress", "execution_interrupted", "preview", "progress_state"})


class Message(msgspec.Struct, frozen=True):
    """One event plus its websocket routing: to `client_id` only, or to everyone when `broadcast`."""

    event: Event
    client_id: str | None = None
    broadcast: bool = False

    @property
    def type(self) -> str:
        return self.event.TYPE


Callback = Callable[[Message], None]


class Subscription:
    def __init__(self, bus: EventBus, callback: Callback, client_id: str | None):
        self.bus, self.callback, self.client_id = bus, callback, client_id

    def close(self) -> None:
        self.bus._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventBus:
    """Delivers messages synchronously on the emitting thread; a failing subscriber is logged and skipped.

    Subscribers must be quick (the websocket layer only enqueues). `subscribe(cb, client_id=x)` receives only the
    messages routed to client x (its own, plus broadcasts), as a ComfyUI socket with sid x would.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []

    def subscribe(self, callback: Callback, client_id: str | None = None) -> Subscription:
        sub = Subscription(self, callback, client_id)
        with self._lock:
            self._subs = [*self._subs, sub]
        return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = [s for s in self._subs if s is not sub]

    def emit(self, event: Event, *, client_id: str | None = None, broadcast: bool | None = None) -> None:
        if broadcast is None:
            broadcast = client_id is None and event.TYPE in BROADCAST_WITHOUT_CLIENT
        message = Message(event, client_id, broadcast)
        for sub in self._subs:  # copy-on-write list: safe to iterate without the lock
            if sub.client_id is not None and not (broadcast or sub.client_id == client_id):
                continue
            try:
                sub.callback(message)
            except Exception:
                log.exception("event subscriber failed")
