"""A tqdm progress display driven by engine events (used by the CLI)."""
from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from .events import Message


class TerminalProgress:
    """One bar per node that reports progress; node starts are written as plain lines."""

    def __init__(self, engine, prompt: dict[str, Any]):
        self.engine, self.prompt = engine, prompt
        self.bar: tqdm | None = None
        self.bar_node: str | None = None
        self.sub = None

    def __enter__(self) -> "TerminalProgress":
        self.sub = self.engine.events.subscribe(self.on_message)
        return self

    def __exit__(self, *exc: object) -> None:
        self.sub.close()
        self.close_bar()

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar, self.bar_node = None, None

    def on_message(self, message: Message) -> None:
        event = message.event
        if message.type == "executing" and event.node is not None:
            self.close_bar()
            class_type = self.prompt.get(event.node, {}).get("class_type", "?")
            tqdm.write(f"[{event.node}] {class_type}", file=sys.stderr)
        elif message.type == "progress":
            if self.bar_node != event.node:
                self.close_bar()
                self.bar = tqdm(total=event.max, file=sys.stderr, leave=False, unit="step")
                self.bar_node = event.node
            self.bar.total = event.max
            self.bar.n = event.value
            self.bar.refresh()
