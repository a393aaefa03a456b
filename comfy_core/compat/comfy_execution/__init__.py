"""ComfyUI's `comfy_execution` package: the node-expansion and blocking helpers (see `comfy_core.graph_utils`)."""
