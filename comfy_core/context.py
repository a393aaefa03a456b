"""The services a node may use while it runs, handed over through a context variable.

ComfyUI nodes reach for module globals (`folder_paths`, `model_management`, `comfy.utils.ProgressBar`). comfy-core has
no globals: the executor installs a `NodeContext` around every node call (and around `INPUT_TYPES` calls, whose file
lists depend on the engine's folders), and nodes call `current()` to get it. Each engine has its own context, so
several engines can live in one process.
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import ComfyCoreError, Interrupted

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .config import EngineConfig
    from .events import EventBus
    from .folders import ModelFolders
    from .models.cache import ModelCache
    from .nodes.registry import NodeRegistry
    from .storage import Storage


class CancelToken:
    """A thread-safe interrupt flag: set by `Engine.interrupt()`, polled between nodes and inside sampler steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    def raise_if_set(self) -> None:
        if self._event.is_set():
            raise Interrupted("Processing interrupted")


ProgressHook = Callable[[int, int, Any], None]  # (value, total, preview image or None)


@dataclass
class NodeContext:
    """What a node may use: engine services plus the hooks of the prompt being run (None outside a run)."""

    config: "EngineConfig"
    storage: "Storage"
    folders: "ModelFolders"
    models: "ModelCache | None" = None
    device: "torch.device | None" = None
    dtype: "torch.dtype | None" = None
    cancel: CancelToken = field(default_factory=CancelToken)
    prompt_id: str | None = None
    node_id: str | None = None
    on_progress: ProgressHook | None = None
    wants_previews: bool = False
    call_index: int = 0  # which mapped call of the node is running (list inputs call a node several times)
    graph_index: int = 0  # sub-graphs allocated by that call so far (GraphBuilder id prefixes)
    events: "EventBus | None" = None  # the engine's bus (custom websocket events of ComfyUI-compat nodes)
    registry: "NodeRegistry | None" = None  # the engine's node classes (ComfyUI's `nodes.NODE_CLASS_MAPPINGS`)
    client_id: str | None = None  # the running prompt's websocket client, if any

    def check_interrupted(self) -> None:
        """Raise `Interrupted` if the engine was asked to stop the running prompt."""
        self.cancel.raise_if_set()

    def progress(self, value: int, total: int, preview: Any = None) -> None:
        """Report progress of the current node (a sampler step, a tile...); also an interrupt point."""
        self.check_interrupted()
        if self.on_progress is not None:
            self.on_progress(int(value), int(total), preview)

    def for_node(self, node_id: str, on_progress: ProgressHook | None) -> "NodeContext":
        ctx = copy.copy(self)  # cheaper than dataclasses.replace on the per-node hot path
        ctx.node_id, ctx.on_progress = node_id, on_progress
        return ctx

    def start_call(self, index: int) -> None:
        """The executor is about to make mapped call `index` of this node (a per-node context, never shared)."""
        self.call_index, self.graph_index = index, 0

    def new_graph_prefix(self) -> str:
        """A node-id prefix for a sub-graph this call expands into, unique within the prompt and deterministic."""
        if self.node_id is None:
            raise NoContextError("sub-graphs can only be built while a node runs")
        prefix = f"{self.node_id}.{self.call_index}.{self.graph_index}."
        self.graph_index += 1
        return prefix


_current: ContextVar[NodeContext | None] = ContextVar("comfy_core_node_context", default=None)


class NoContextError(ComfyCoreError):
    """A node that needs engine services was called outside an engine (no `NodeContext` installed)."""


def current() -> NodeContext:
    """The context of the node being run; raises `NoContextError` outside the engine."""
    ctx = _current.get()
    if ctx is None:
        raise NoContextError("this node needs a running comfy-core engine (no NodeContext is installed)")
    return ctx


def current_or_none() -> NodeContext | None:
    return _current.get()


@contextmanager
def use(ctx: NodeContext) -> Iterator[NodeContext]:
    """Install `ctx` for the duration of the block (per thread / per asyncio task)."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
