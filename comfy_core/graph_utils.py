"""Tools for node authors: blocking downstream nodes and building sub-graphs for node expansion.

A node function may return

    {"result": (...), "expand": builder.finalize()}     # run these new nodes, then use their outputs as mine
    ExecutionBlocker("why") / {"result": ExecutionBlocker(None)}   # nodes that consume my outputs do not run

as in ComfyUI (`comfy_execution.graph_utils.GraphBuilder`, `comfy_execution.graph.ExecutionBlocker`). Values in an
expanding node's "result" may be links `[new_node_id, slot]` into the expansion; they resolve once it has run.
"""
from __future__ import annotations

from typing import Any

from . import context


class ExecutionBlocker:
    """An output value that stops every node it reaches from running (that node's outputs become blockers too).

    With a message, the engine sends an `execution_error` message naming the blocked node, once per blocked call,
    but the prompt goes on; with None the block is silent (used to switch branches off).
    """

    def __init__(self, message: str | None):
        self.message = message

    def __repr__(self) -> str:
        return f"ExecutionBlocker({self.message!r})"


class GraphNode:
    """One node of a sub-graph being built: its outputs are links usable as other nodes' inputs."""

    def __init__(self, node_id: str, class_type: str, inputs: dict[str, Any]):
        self.id, self.class_type, self.inputs = node_id, class_type, inputs
        self.override_display_id: str | None = None

    def out(self, slot: int) -> list[Any]:
        return [self.id, slot]

    def set_input(self, name: str, value: Any) -> None:
        if value is None:
            self.inputs.pop(name, None)
        else:
            self.inputs[name] = value

    def serialize(self) -> dict[str, Any]:
        node = {"class_type": self.class_type, "inputs": dict(self.inputs)}
        if self.override_display_id is not None:
            node["override_display_id"] = self.override_display_id
        return node


class GraphBuilder:
    """Builds an API-format sub-graph whose node ids are unique within the running prompt.

    Without an explicit prefix, ids start with "<expanding node id>.<call index>.<graph index>." (ComfyUI's scheme),
    so they are deterministic: re-running the same expansion yields the same ids, and cached results match.
    """

    def __init__(self, prefix: str | None = None):
        self.prefix = prefix if prefix is not None else context.current().new_graph_prefix()
        self.nodes: dict[str, GraphNode] = {}
        self._next_id = 1

    def node(self, class_type: str, id: str | None = None, **inputs: Any) -> GraphNode:
        node_id = self.prefix + (str(self._next_id) if id is None else str(id))
        if id is None:
            self._next_id += 1
        if node_id in self.nodes:
            return self.nodes[node_id]
        node = GraphNode(node_id, class_type, {k: v for k, v in inputs.items() if v is not None})
        self.nodes[node_id] = node
        return node

    def lookup_node(self, id: str) -> GraphNode | None:
        return self.nodes.get(self.prefix + str(id))

    def finalize(self) -> dict[str, dict[str, Any]]:
        return {node_id: node.serialize() for node_id, node in self.nodes.items()}
