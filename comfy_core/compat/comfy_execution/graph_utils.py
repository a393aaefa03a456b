"""ComfyUI's `comfy_execution.graph_utils`: `GraphBuilder` (node expansion) and `is_link`, comfy-core's own."""
from __future__ import annotations

from typing import Any

from ...graph_utils import ExecutionBlocker, GraphBuilder, GraphNode

__all__ = ["ExecutionBlocker", "GraphBuilder", "GraphNode", "is_link"]


def is_link(obj: Any) -> bool:
    """Whether `obj` is a link `[node_id, output_slot]` (how an input refers to another node's output)."""
    return (isinstance(obj, list) and len(obj) == 2 and isinstance(obj[0], str)
            and isinstance(obj[1], (int, float)) and not isinstance(obj[1], bool))
