"""History of finished prompts: ComfyUI's entries, bounded, with its paging rules, and waiting for a prompt.

The store is a small interface (`HistoryStore`) so a persistent backend can replace the in-memory one.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Protocol


class HistoryStore(Protocol):
    def add(self, prompt_id: str, entry: dict[str, Any]) -> None: ...
    def get(self, prompt_id: str) -> dict[str, Any] | None: ...
    def page(self, max_items: int | None, offset: int | None) -> dict[str, Any]: ...
    def delete(self, prompt_ids: list[str]) -> None: ...
    def clear(self) -> None: ...
    def wait(self, prompt_id: str, timeout: float | None) -> dict[str, Any] | None: ...


class MemoryHistory:
    """Entries oldest first; above `max_items` the oldest is dropped (ComfyUI keeps 10000)."""

    def __init__(self, max_items: int = 10_000):
        self.max_items = max_items
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._cond = threading.Condition()

    def add(self, prompt_id: str, entry: dict[str, Any]) -> None:
        with self._cond:
            self._entries.pop(prompt_id, None)
            while len(self._entries) >= self.max_items:
                self._entries.popitem(last=False)
            self._entries[prompt_id] = entry
            self._cond.notify_all()

    def get(self, prompt_id: str) -> dict[str, Any] | None:
        with self._cond:
            return self._entries.get(prompt_id)

    def page(self, max_items: int | None = None, offset: int | None = None) -> dict[str, Any]:
        """ComfyUI's rules: with max_items and no (or negative) offset, the *last* max_items entries."""
        with self._cond:
            items = list(self._entries.items())
        if offset is None or offset < 0:
            start = max(0, len(items) - max_items) if max_items is not None else 0
        else:
            start = offset
        end = len(items) if max_items is None else start + max_items
        return dict(items[start:end])

    def delete(self, prompt_ids: list[str]) -> None:
        with self._cond:
            for prompt_id in prompt_ids:
                self._entries.pop(prompt_id, None)

    def clear(self) -> None:
        with self._cond:
            self._entries.clear()

    def wait(self, prompt_id: str, timeout: float | None = None) -> dict[str, Any] | None:
        with self._cond:
            self._cond.wait_for(lambda: prompt_id in self._entries, timeout)
            return self._entries.get(prompt_id)
