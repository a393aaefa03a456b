"""A bounded in-memory capture of log records, for ComfyUI's /internal/logs routes and `logs` websocket events.

ComfyUI intercepts stdout/stderr and keeps the last 300 writes as `{"t": iso time, "m": text}`; each engine here
owns a `LogCapture` (a `logging.Handler` on the root logger while the engine lives) keeping the last `capacity`
records in that shape, `m` being the formatted record plus a newline (what ComfyUI's console handler would write).
Only records that pass their logger's level reach it: the host application decides the verbosity.

Clients subscribed by id (PATCH /internal/logs/subscribe) get each new record as a `Logs` event through the
engine's event bus, routed to that client only. Records logged while a `Logs` event is being delivered are kept but
not forwarded again, so a failing subscriber cannot feed itself.
"""
from __future__ import annotations

import logging
import shutil
import threading
from collections import deque
from datetime import datetime
from typing import Any, ClassVar

from .events import Event, EventBus

DEFAULT_CAPACITY = 300  # ComfyUI's log buffer size


class Logs(Event):
    """The `logs` websocket message: new entries and the server terminal's size."""

    TYPE: ClassVar[str] = "logs"
    entries: list[dict[str, str]]
    size: dict[str, int]


def terminal_size() -> dict[str, int]:
    """{"cols", "rows"} of the server's terminal (80x24 when there is none, e.g. under a process manager)."""
    size = shutil.get_terminal_size((80, 24))
    return {"cols": size.columns, "rows": size.lines}


class LogCapture(logging.Handler):
    """The last `capacity` log records of the process as ComfyUI log entries; forwards new ones to subscribers."""

    def __init__(self, bus: EventBus | None = None, capacity: int = DEFAULT_CAPACITY, level: int = logging.NOTSET):
        super().__init__(level)
        self.setFormatter(logging.Formatter("%(message)s"))
        self._bus = bus
        self._entries: deque[dict[str, str]] = deque(maxlen=capacity)
        self._subscribers: set[str] = set()
        self._guard = threading.local()
        self._logger: logging.Logger | None = None

    # --- logging.Handler -----------------------------------------------------------------------------------------

    def emit(self, record: logging.LogRecord) -> None:
        try:
            entry = {"t": datetime.fromtimestamp(record.created).isoformat(), "m": self.format(record) + "\n"}
        except Exception:  # noqa: BLE001  # a bad format string: logging's own handlers report and go on
            self.handleError(record)
            return
        self._entries.append(entry)  # deque.append is atomic; the Handler lock serialises emit anyway
        if self._bus is None or not self._subscribers or getattr(self._guard, "active", False):
            return
        self._guard.active = True
        try:
            event = Logs(entries=[entry], size=terminal_size())
            for client_id in list(self._subscribers):
                self._bus.emit(event, client_id=client_id, broadcast=False)
        finally:
            self._guard.active = False

    # --- reading -------------------------------------------------------------------------------------------------

    def entries(self) -> list[dict[str, str]]:
        """The kept entries, oldest first."""
        with self.lock:  # type: ignore[union-attr]  # Handler.createLock made it
            return list(self._entries)

    def text(self) -> str:
        """GET /internal/logs: every entry as `<t> - <m>`, concatenated (the messages end with their newline)."""
        return "".join(f"{e['t']} - {e['m']}" for e in self.entries())

    def raw(self) -> dict[str, Any]:
        """GET /internal/logs/raw."""
        return {"entries": self.entries(), "size": terminal_size()}

    # --- subscriptions -------------------------------------------------------------------------------------------

    def subscribe(self, client_id: str, enabled: bool = True) -> None:
        subscribers = set(self._subscribers)  # copy-on-write: emit iterates without a lock
        if enabled:
            subscribers.add(client_id)
        else:
            subscribers.discard(client_id)
        self._subscribers = subscribers

    def prune(self, connected: set[str] | list[str]) -> None:
        """Forget subscriptions of clients that are no longer connected (ComfyUI drops them on the next record)."""
        self._subscribers = self._subscribers & set(connected)

    @property
    def subscribers(self) -> set[str]:
        return set(self._subscribers)

    # --- lifetime ------------------------------------------------------------------------------------------------

    def attach(self, logger: logging.Logger | None = None) -> LogCapture:
        """Start capturing the records that reach `logger` (default: the root logger)."""
        self.detach()
        self._logger = logger or logging.getLogger()
        self._logger.addHandler(self)
        return self

    def detach(self) -> None:
        if self._logger is not None:
            self._logger.removeHandler(self)
            self._logger = None


__all__ = ["DEFAULT_CAPACITY", "LogCapture", "Logs", "terminal_size"]
