"""ComfyUI's `comfy_execution.graph`: `ExecutionBlocker`, comfy-core's own."""
from __future__ import annotations

from ...graph_utils import ExecutionBlocker

__all__ = ["ExecutionBlocker"]
