"""Queue and history that survive a restart (ComfyUI loses both): one SQLite file under `EngineConfig.state_dir`.

- History entries are written through as they are added, deleted or cleared; a new engine starts with them.
- A queued prompt is journaled when queued and removed from the journal only once it has *finished* (or was deleted),
  so prompts that were pending, or running when the process died, are queued again by the next engine.
Everything is encoded as JSON (ComfyUI's wire format for both); a value that is not JSON (a custom node's UI object)
is stored as its `str()`. One connection, guarded by a lock: writes come from the worker and from request threads.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec

from .history import MemoryHistory

log = logging.getLogger(__name__)

STATE_FILE = "comfy-core-state.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS history (seq INTEGER PRIMARY KEY AUTOINCREMENT, prompt_id TEXT UNIQUE, entry BLOB);
CREATE TABLE IF NOT EXISTS queue (prompt_id TEXT PRIMARY KEY, number REAL, item BLOB);
"""


def _encode(value: Any) -> bytes:
    return msgspec.json.encode(value, enc_hook=str)


class StateFile:
    """The SQLite file holding history entries and the queue journal."""

    def __init__(self, state_dir: str | Path):
        path = Path(state_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / STATE_FILE
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def _run(self, sql: str, args: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, tuple(args)).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- history ------------------------------------------------------------------------------------------------------
    def history(self) -> list[tuple[str, dict[str, Any]]]:
        rows = self._run("SELECT prompt_id, entry FROM history ORDER BY seq")
        return [(prompt_id, msgspec.json.decode(entry)) for prompt_id, entry in rows]

    def put_history(self, prompt_id: str, entry: dict[str, Any], keep: int) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM history WHERE prompt_id = ?", (prompt_id,))
            self._db.execute("INSERT INTO history (prompt_id, entry) VALUES (?, ?)", (prompt_id, _encode(entry)))
            self._db.execute("DELETE FROM history WHERE seq NOT IN (SELECT seq FROM history ORDER BY seq DESC "
                             "LIMIT ?)", (keep,))

    def delete_history(self, prompt_ids: list[str]) -> None:
        with self._lock, self._db:
            self._db.executemany("DELETE FROM history WHERE prompt_id = ?", [(p,) for p in prompt_ids])

    def clear_history(self) -> None:
        self._run("DELETE FROM history")

    # -- queue journal ------------------------------------------------------------------------------------------------
    def queued(self) -> list[list[Any]]:
        """Journaled queue items `[number, prompt_id, prompt, extra_data, outputs]`, lowest number first."""
        rows = self._run("SELECT item FROM queue ORDER BY number, prompt_id")
        return [msgspec.json.decode(item) for (item,) in rows]

    def put_queued(self, item: list[Any]) -> None:
        try:
            data = msgspec.json.encode(item)
        except (TypeError, msgspec.EncodeError):  # extra_data a library caller filled with Python objects
            log.warning("prompt %s is not JSON; it will not survive a restart", item[1])
            return
        self._run("INSERT OR REPLACE INTO queue (prompt_id, number, item) VALUES (?, ?, ?)", (item[1], item[0], data))

    def remove_queued(self, prompt_ids: list[str]) -> None:
        with self._lock, self._db:
            self._db.executemany("DELETE FROM queue WHERE prompt_id = ?", [(p,) for p in prompt_ids])

    def clear_queued(self, keep: list[str]) -> None:
        """Forget every journaled item except `keep` (the running prompts)."""
        with self._lock, self._db:
            rows = self._db.execute("SELECT prompt_id FROM queue").fetchall()
            self._db.executemany("DELETE FROM queue WHERE prompt_id = ?", [r for r in rows if r[0] not in keep])


class PersistentHistory(MemoryHistory):
    """MemoryHistory that starts from the state file and writes every change through to it."""

    def __init__(self, state: StateFile, max_items: int = 10_000):
        super().__init__(max_items)
        self._state = state
        for prompt_id, entry in state.history()[-max_items:]:
            super().add(prompt_id, entry)

    def add(self, prompt_id: str, entry: dict[str, Any]) -> None:
        self._state.put_history(prompt_id, entry, self.max_items)
        super().add(prompt_id, entry)

    def delete(self, prompt_ids: list[str]) -> None:
        self._state.delete_history(prompt_ids)
        super().delete(prompt_ids)

    def clear(self) -> None:
        self._state.clear_history()
        super().clear()
