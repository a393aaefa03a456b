"""The state of one prompt's execution and the events it emits: its live graph, results so far, UI outputs,
per-node progress (`progress_state`), expansions waiting for their sub-graphs, and the messages kept for history."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .cache import CachedResult
from .dynamic_graph import DynamicPrompt
from .events import Event, Executed, OutputImage, PreviewFrame, Progress, ProgressState
from .node_calls import NodeCall


class PromptRun:
    """The state of one prompt's execution: its live graph, results so far, UI outputs, per-node progress,
    expansions waiting for their sub-graphs, and the messages recorded for history."""

    def __init__(self, prompt: dict[str, Any], prompt_id: str, emit: Callable[[Event], None]):
        self.prompt, self.prompt_id, self._emit = prompt, prompt_id, emit
        self.graph = DynamicPrompt(prompt)
        self.signatures: dict[str, str] = {}
        self.messages: list[list[Any]] = []
        self.results: dict[str, CachedResult] = {}
        self.ui_outputs: dict[str, dict[str, Any]] = {}
        self.executed: list[str] = []
        self.states: dict[str, dict[str, Any]] = {}
        self.expansions: dict[str, tuple[list[NodeCall], dict[str, Any] | None]] = {}

    def emit(self, event: Event) -> None:
        self._emit(event)

    def record(self, event: Event) -> None:
        """Emit and keep for the history entry's status messages."""
        self.messages.append([event.TYPE, event.to_builtins()])
        self._emit(event)

    def display(self, node_id: str) -> str:
        return self.graph.get_display_node_id(node_id) if self.graph.ephemeral else node_id

    def meta(self, node_id: str) -> dict[str, Any]:
        if not self.graph.ephemeral:  # the common case: no expansion in this prompt
            return {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}
        return {"node_id": node_id, "display_node": self.display(node_id),
                "parent_node": self.graph.get_parent_node_id(node_id),
                "real_node_id": self.graph.get_real_node_id(node_id)}

    def node_state(self, node_id: str, state: str, value: float = 0, total: float = 1) -> None:
        """progress_state: every started node with its progress (entries are replaced, never mutated)."""
        meta = self.meta(node_id)
        self.states[node_id] = {"value": value, "max": total, "state": state, "node_id": node_id,
                                "prompt_id": self.prompt_id, "display_node_id": meta["display_node"],
                                "parent_node_id": meta["parent_node"], "real_node_id": meta["real_node_id"]}
        self._emit(ProgressState(prompt_id=self.prompt_id, nodes=dict(self.states)))

    def show_ui(self, node_id: str, ui: dict[str, Any] | None) -> None:
        if ui is not None:
            self.ui_outputs[node_id] = ui
            self.emit(Executed(node=node_id, display_node=self.display(node_id), output=ui,
                               prompt_id=self.prompt_id))

    def progress_hook(self, node_id: str, wants_previews: bool):
        def on_progress(value: int, total: int, preview: Any) -> None:
            self._emit(Progress(value=value, max=total, prompt_id=self.prompt_id, node=node_id))
            self.node_state(node_id, "running", value, total)
            if isinstance(preview, OutputImage):  # a node's output image: sent whatever the preview method
                self._emit(PreviewFrame(image=preview.image, image_type=preview.image_type, prompt_id=self.prompt_id,
                                        node_id=node_id, lossy=False))
            elif preview is not None and wants_previews:
                self._emit(PreviewFrame(image=preview, image_type="image/jpeg", prompt_id=self.prompt_id,
                                        node_id=node_id))
        return on_progress
