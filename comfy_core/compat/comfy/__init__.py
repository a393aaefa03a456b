"""ComfyUI's `comfy` package, reduced to the modules custom node packs use most (see `comfy_core.compat`)."""
