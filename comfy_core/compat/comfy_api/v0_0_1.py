"""`comfy_api.v0_0_1`: ComfyUI 0.3.64's pinned API version; here the same classes as `comfy_api.latest`."""
from __future__ import annotations

from .latest import IO, UI, ComfyExtension, io, ui

__all__ = ["IO", "UI", "ComfyExtension", "io", "ui"]
