"""ComfyUI's HTTP + WebSocket API as a Starlette app over an engine. Imported as `comfy_core.asgi`."""
