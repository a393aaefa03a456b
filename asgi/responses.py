"""Response helpers: JSON encoded with msgspec (no stdlib json on the hot paths) and ComfyUI's empty 200."""
from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response


def _fallback(obj: Any) -> Any:
    """Last resort for values msgspec cannot encode (a Path, an exception in an error body): their text."""
    return str(obj)


# An Encoder holds no per-call state; sharing one is thread-safe and saves building it per response.
ENCODER = msgspec.json.Encoder(enc_hook=_fallback)


def encode(obj: Any) -> bytes:
    return ENCODER.encode(obj)


class MsgspecJSONResponse(Response):
    """A JSON response encoded with msgspec; Structs, dicts and lists are written without a detour through dicts."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return ENCODER.encode(content)


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return MsgspecJSONResponse(content, status_code=status_code, headers=headers)


def empty_response(status_code: int = 200) -> Response:
    """ComfyUI answers POST /queue, /interrupt, /free and /history with a bodiless 200."""
    return Response(status_code=status_code)
