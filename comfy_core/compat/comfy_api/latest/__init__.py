"""`comfy_api.latest`: `ComfyExtension`, `io` (node schema types) and `ui` (node UI outputs)."""
from __future__ import annotations

from abc import ABC, abstractmethod

from . import _io as io
from . import _ui as ui

IO = io
UI = ui


class ComfyExtension(ABC):
    """What a V3 pack's `comfy_entrypoint()` returns: the pack's node classes, plus an optional load hook."""

    async def on_load(self) -> None:
        """Called once before `get_node_list`; packs set up their shared resources here."""

    @abstractmethod
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        """The pack's `io.ComfyNode` classes."""


__all__ = ["IO", "UI", "ComfyExtension", "io", "ui"]
