"""Node output cache keyed by input signature (a node's constants, class, IS_CHANGED value and its ancestors').

Modes (`EngineConfig.cache_mode`):
- "lru" (default): an LRU bounded by entry count, so alternating between two workflows keeps both cached
  (ComfyUI's `--cache-lru N`).
- "classic": ComfyUI's default: when a prompt starts, entries for signatures that are not in it are dropped, so
  results survive only between consecutive prompts (after A, B, A the nodes of A not shared with B run again).
- "none": nothing is kept between prompts (ComfyUI's `--cache-none`); within a prompt, results live until it ends.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import msgspec


class CachedResult(msgspec.Struct):
    outputs: list[list[Any]]  # per output slot, the list of values (one per mapped call)
    ui: dict[str, Any] | None


CACHE_MODES = ("lru", "classic", "none")


class OutputCache:
    def __init__(self, max_entries: int = 512, mode: str = "lru"):
        if mode not in CACHE_MODES:
            raise ValueError(f"cache mode must be one of {CACHE_MODES}, not {mode!r}")
        self.max_entries, self.mode = max_entries, mode
        self._entries: OrderedDict[str, CachedResult] = OrderedDict()
        self._lock = threading.Lock()

    def begin_prompt(self, keys: set[str]) -> None:
        """A prompt whose nodes have these signatures starts: "classic" forgets every other entry."""
        if self.mode == "classic":
            with self._lock:
                for key in [k for k in self._entries if k not in keys]:
                    del self._entries[key]

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
        if self.mode == "none":
            return
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
