"""Node output cache keyed by input signature (a node's constants, class, IS_CHANGED value and its ancestors').

Unlike ComfyUI's default "classic" cache, which forgets everything not in the current prompt, this is an LRU bounded by
entry count, so alternating between two workflows keeps both cached (ComfyUI's `--cache-lru N` behaviour).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import msgspec


class CachedResult(msgspec.Struct):
    outputs: list[list[Any]]  # per output slot, the list of values (one per mapped call)
    ui: dict[str, Any] | None


class OutputCache:
    def __init__(self, max_entries: int = 512):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CachedResult] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> CachedResult | None:
        with self._lock:
            result = self._entries.get(key)
            if result is not None:
                self._entries.move_to_end(key)
            return result

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def put(self, key: str, result: CachedResult) -> None:
        with self._lock:
            self._entries[key] = result
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
