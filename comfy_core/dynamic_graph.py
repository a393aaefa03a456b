"""The graph of one running prompt and the order its nodes run in (ComfyUI's `DynamicPrompt` and `ExecutionList`).

The graph is the validated prompt plus *ephemeral* nodes that node expansion adds while it runs; each ephemeral node
remembers its parent (the node that expanded) and the node the UI should highlight for it (its display node).

The order is decided while the prompt runs, not up front, because it can change:
- lazy inputs are not followed until the node asks for them (`check_lazy_status`), which adds dependencies;
- an expanding node waits for the outputs of the nodes it added.
Among the nodes that are ready, the pick is ComfyUI's: an output (or async) node first, then a node feeding an
output, then one two steps from an output, else the first ready node in the order nodes were added. So previews
appear as early as possible, and the `executing` sequence a client sees matches ComfyUI's.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ComfyCoreError
from .graph import is_link


class DependencyCycleError(ComfyCoreError):
    """The nodes left to run wait on each other (possible only through lazy inputs or expansion)."""

    def __init__(self, nodes: list[str], blamed: str):
        self.nodes, self.blamed = nodes, blamed
        super().__init__("Dependency cycle detected")


class DynamicPrompt:
    """The prompt's nodes plus the ephemeral ones added by expansion. Nodes asking for the hidden `DYNPROMPT`
    input get this object; its method names are ComfyUI's, so such nodes work unchanged."""

    def __init__(self, prompt: Mapping[str, dict[str, Any]]):
        self.original = prompt
        self.ephemeral: dict[str, dict[str, Any]] = {}
        self._parent: dict[str, str] = {}
        self._display: dict[str, str] = {}

    def get_node(self, node_id: str) -> dict[str, Any]:
        node = self.ephemeral.get(node_id)
        return node if node is not None else self.original[node_id]

    def has_node(self, node_id: str) -> bool:
        return node_id in self.ephemeral or node_id in self.original

    __contains__ = has_node

    def add_ephemeral_node(self, node_id: str, node: dict[str, Any], parent_id: str, display_id: str) -> None:
        self.ephemeral[node_id] = node
        self._parent[node_id] = parent_id
        self._display[node_id] = display_id

    def get_parent_node_id(self, node_id: str) -> str | None:
        return self._parent.get(node_id)

    def get_display_node_id(self, node_id: str) -> str:
        while node_id in self._display:
            node_id = self._display[node_id]
        return node_id

    def get_real_node_id(self, node_id: str) -> str:
        """The prompt node this node descends from (itself for a prompt node)."""
        while node_id in self._parent:
            node_id = self._parent[node_id]
        return node_id

    def get_original_prompt(self) -> Mapping[str, dict[str, Any]]:
        return self.original

    def all_nodes(self) -> dict[str, dict[str, Any]]:
        """Every node, prompt and ephemeral, as one API-format mapping."""
        return {**self.original, **self.ephemeral}


class ExecutionList:
    """The nodes still to run, what blocks each one, and which ready node runs next.

    `is_done(node)`: its outputs are available (cached or already run); such nodes are never added as
    dependencies. `is_output(node)` / `is_async(node)` steer the pick; `lazy_inputs(node)` names the inputs that
    are not followed until asked for.
    """

    def __init__(self, graph: DynamicPrompt, *, is_done: Callable[[str], bool], is_output: Callable[[str], bool],
                 is_async: Callable[[str], bool], lazy_inputs: Callable[[str], frozenset[str]]):
        self.graph = graph
        self._is_done, self._is_output, self._is_async = is_done, is_output, is_async
        self._lazy_inputs = lazy_inputs
        self.pending: dict[str, int] = {}  # node -> insertion number (ties in the pick go to the earliest)
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, set[int]]] = {}  # from node -> {node it blocks: sockets}
        self._ready: set[str] = set()  # pending nodes with block_count 0, kept incrementally
        self._added = itertools.count()

    def is_empty(self) -> bool:
        return not self.pending

    def add_node(self, node_id: str, include_lazy: bool = False) -> None:
        """Add a node and, recursively, the not-yet-done sources of its (non-lazy) linked inputs."""
        stack, links = [node_id], []
        while stack:
            current = stack.pop()
            if current in self.pending:
                continue
            self.pending[current] = next(self._added)
            self.block_count[current] = 0
            self.blocking[current] = {}
            self._ready.add(current)
            lazy = frozenset() if include_lazy else self._lazy_inputs(current)
            for name, value in self.graph.get_node(current)["inputs"].items():
                if not is_link(value) or name in lazy:
                    continue
                source = str(value[0])
                if not self._is_done(source):
                    stack.append(source)
                    links.append((source, value[1], current))
        for source, slot, target in links:
            self._block(source, slot, target)

    def add_strong_link(self, source: str, slot: int, target: str) -> None:
        """`target` cannot run before `source` has (unless source's outputs are already available)."""
        if self._is_done(source):
            return
        if source not in self.pending:
            self.add_node(source)
        self._block(source, slot, target)

    def _block(self, source: str, slot: int, target: str) -> None:
        blocked = self.blocking[source]
        if target not in blocked:
            blocked[target] = set()
            self.block_count[target] += 1
            self._ready.discard(target)
        blocked[target].add(slot)

    def make_input_strong_link(self, target: str, input_name: str) -> bool:
        """Turn a (lazy) linked input into a dependency; False if the input is not a link."""
        value = self.graph.get_node(target)["inputs"].get(input_name)
        if not is_link(value):
            return False
        self.add_strong_link(str(value[0]), value[1], target)
        return True

    def next_node(self) -> str:
        """The node to run next; raises `DependencyCycleError` when nodes remain but none is ready."""
        ready = sorted(self._ready, key=self.pending.__getitem__)
        if not ready:
            cycle = self.nodes_in_cycle()
            blamed = next((self.graph.get_display_node_id(n) for n in cycle if self.graph.get_display_node_id(n) != n), cycle[0])
            raise DependencyCycleError(cycle, blamed)
        return self._pick(ready)

    def complete(self, node_id: str) -> None:
        """`node_id` ran: drop it and unblock what waited on it."""
        del self.pending[node_id]
        self._ready.discard(node_id)
        for blocked in self.blocking.pop(node_id, {}):
            self.block_count[blocked] -= 1
            if self.block_count[blocked] == 0:
                self._ready.add(blocked)
        del self.block_count[node_id]

    def _pick(self, ready: list[str]) -> str:
        if len(ready) == 1:
            return ready[0]
        for node_id in ready:
            if self._is_output(node_id) or self._is_async(node_id):
                return node_id
        for node_id in ready:  # e.g. VAEDecode -> PreviewImage
            if any(self._is_output(b) for b in self.blocking[node_id]):
                return node_id
        for node_id in ready:  # e.g. VAELoader -> VAEDecode -> PreviewImage
            for blocked in self.blocking[node_id]:
                if any(self._is_output(b) for b in self.blocking.get(blocked, {})):
                    return node_id
        return ready[0]

    def nodes_in_cycle(self) -> list[str]:
        """The pending nodes that are part of (or stuck behind) a cycle: peel off nodes nobody blocks, repeatedly."""
        blocked_by: dict[str, set[str]] = {n: set() for n in self.pending}
        for source, targets in self.blocking.items():
            for target in targets:
                if target in blocked_by:
                    blocked_by[target].add(source)
        free = [n for n, sources in blocked_by.items() if not sources]
        while free:
            for node_id in free:
                del blocked_by[node_id]
                for sources in blocked_by.values():
                    sources.discard(node_id)
            free = [n for n, sources in blocked_by.items() if not sources]
        return list(blocked_by)
