"""ComfyUI's HTTP + WebSocket API as a Starlette app over an engine. Imported as `comfy_core.asgi`.

    from comfy_core.asgi import create_app, serve
"""
from .app import create_app
from .serve import serve

__all__ = ["create_app", "serve"]
