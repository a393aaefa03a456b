"""The prompt queue: ComfyUI's min-heap of `[number, prompt_id, prompt, extra_data, outputs]` items.

`number` orders the heap (lower runs first); without an explicit number the engine hands out a counter, negated for
`front` submissions, so repeated front items run last-in first-out as in ComfyUI.
"""
from __future__ import annotations

import heapq
import threading
from typing import Any, Protocol


class QueueItem(tuple):
    """(number, prompt_id, prompt, extra_data, outputs); heap order compares (number, prompt_id) only."""

    def __lt__(self, other: "QueueItem") -> bool:  # type: ignore[override]
        return (self[0], self[1]) < (other[0], other[1])

    @property
    def number(self) -> float:
        return self[0]

    @property
    def prompt_id(self) -> str:
        return self[1]

    def as_list(self) -> list[Any]:
        return [self[0], self[1], self[2], self[3], self[4]]


class QueueJournal(Protocol):
    """Where queued prompts are written down until they finish (`persistence.StateFile`)."""

    def put_queued(self, item: list[Any]) -> None: ...
    def remove_queued(self, prompt_ids: list[str]) -> None: ...
    def clear_queued(self, keep: list[str]) -> None: ...


class PromptQueue:
    def __init__(self, journal: QueueJournal | None = None) -> None:
        self._heap: list[QueueItem] = []
        self._running: dict[str, QueueItem] = {}
        self._counter = 0
        self._cond = threading.Condition()
        self._closed = False
        self._journal = journal

    def restore(self, item: QueueItem) -> None:
        """Queue an item journaled by an earlier engine; later counter numbers sort after it."""
        with self._cond:
            heapq.heappush(self._heap, item)
            if float(item.number).is_integer():
                self._counter = max(self._counter, abs(int(item.number)) + 1)
            self._cond.notify_all()

    def next_number(self, number: float | None, front: bool) -> float:
        with self._cond:
            if number is not None:
                return float(number)
            value = -self._counter if front else self._counter
            self._counter += 1
            return value

    def put(self, item: QueueItem) -> None:
        if self._journal is not None:
            self._journal.put_queued(item.as_list())
        with self._cond:
            heapq.heappush(self._heap, item)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> QueueItem | None:
        """Block until an item is ready (None on timeout or close); the item counts as running until `done`."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._heap or self._closed, timeout):
                return None
            if self._closed:
                return None
            item = heapq.heappop(self._heap)
            self._running[item.prompt_id] = item  # executing never mutates the validated prompt
            return item

    def done(self, prompt_id: str) -> None:
        if self._journal is not None:
            self._journal.remove_queued([prompt_id])
        with self._cond:
            self._running.pop(prompt_id, None)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def snapshot(self) -> dict[str, list[list[Any]]]:
        """ComfyUI's GET /queue: running items and the raw (unsorted) heap array of pending ones."""
        with self._cond:
            return {"queue_running": [i.as_list() for i in self._running.values()],
                    "queue_pending": [i.as_list() for i in self._heap]}

    def remaining(self) -> int:
        with self._cond:
            return len(self._heap) + len(self._running)

    def running_ids(self) -> list[str]:
        with self._cond:
            return list(self._running)

    def delete(self, prompt_ids: list[str]) -> int:
        """Remove the first pending match of each id; running prompts are never touched."""
        removed: list[str] = []
        with self._cond:
            for prompt_id in prompt_ids:
                for index, item in enumerate(self._heap):
                    if item.prompt_id == prompt_id:
                        self._heap.pop(index)
                        heapq.heapify(self._heap)
                        removed.append(prompt_id)
                        break
        if removed and self._journal is not None:
            self._journal.remove_queued(removed)
        return len(removed)

    def clear(self) -> None:
        with self._cond:
            self._heap.clear()
            running = list(self._running)
        if self._journal is not None:
            self._journal.clear_queued(keep=running)

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: not self._heap and not self._running, timeout)
