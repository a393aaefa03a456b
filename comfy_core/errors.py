"""The one small exception hierarchy of comfy-core.

Every failure a caller can act on is one of these; nothing else should escape the engine's public methods.
"""
from __future__ import annotations

from typing import Any


class ComfyCoreError(Exception):
    """Base class of every error comfy-core raises on purpose."""


class PromptError(ComfyCoreError):
    """A prompt failed validation. `body` is ComfyUI's 400 JSON: {"error": {...}, "node_errors": {...}}."""

    def __init__(self, body: dict[str, Any]):
        self.body = body
        error = body.get("error", {})
        super().__init__(f"{error.get('type')}: {error.get('message')}")

    @property
    def error(self) -> dict[str, Any]:
        return self.body.get("error", {})

    @property
    def node_errors(self) -> dict[str, Any]:
        return self.body.get("node_errors", {})


class NodeExecutionError(ComfyCoreError):
    """A node raised while a prompt ran. `details` carries the fields of ComfyUI's `execution_error` message."""

    def __init__(self, message: str, details: dict[str, Any] | None = None):
        self.details = details or {}
        super().__init__(message)


class ModelLoadError(ComfyCoreError):
    """A model file is missing, damaged or of an unknown layout. The message names the file and what was wrong."""


class InputFileError(ComfyCoreError):
    """A file name or path from a client is unsafe, unknown or unreadable.

    `status` is the HTTP status the ASGI layer should answer with: 400 for a bad name (the default), 403 for a path
    that escapes its folder, 404 for a file that does not exist.
    """

    def __init__(self, message: str, *, status: int = 400):
        self.status = status
        super().__init__(message)


class Interrupted(ComfyCoreError):
    """The running prompt was interrupted (by `Engine.interrupt()` or the /interrupt route)."""


class UserDataError(InputFileError):
    """A user-data request that cannot be served: unknown user (403), unsafe path (400/403), missing file (404),
    existing file without overwrite (409), duplicate or invalid user name (400). `status` as for InputFileError."""
