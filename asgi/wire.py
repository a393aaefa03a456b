"""msgspec structs for request bodies and websocket messages, and the one decode helper every route uses.

Field types follow what ComfyUI's handlers read from the JSON; a value of the wrong type is a 400 naming the field
(ComfyUI would fail later with a 500). Unknown fields are ignored, as ComfyUI ignores them.
"""
from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from .errors import ClientError

T = TypeVar("T")


class PromptRequest(msgspec.Struct):
    """POST /prompt. `prompt_id` is str()-ed like ComfyUI does; `front` counts when truthy."""

    prompt: dict[str, Any] | None = None
    client_id: str | None = None
    extra_data: dict[str, Any] | None = None  # null is taken as {} (ComfyUI would fail with a 500)
    front: Any = False
    number: int | float | None = None
    prompt_id: str | int | float | None = None
    partial_execution_targets: list[str] | None = None


class PromptResponse(msgspec.Struct):
    prompt_id: str
    number: int | float
    node_errors: dict[str, Any]


class DeleteOrClear(msgspec.Struct):
    """POST /queue and POST /history: `{"clear": true}` and/or `{"delete": [prompt_id, ...]}`."""

    clear: bool = False
    delete: list[str] | None = None


class FreeRequest(msgspec.Struct):
    unload_models: bool = False
    free_memory: bool = False


class WsMessage(msgspec.Struct):
    """A text websocket frame: `{"type": event, "data": {...}}`."""

    type: str
    data: Any


class ClientHello(msgspec.Struct):
    """The first text message a client may send: `{"type": "feature_flags", "data": {...}}`."""

    type: str = ""
    data: dict[str, Any] = {}


def decode(body: bytes, type_: type[T], *, prompt: bool = False) -> T:
    """Decode a JSON body into `type_`; malformed JSON or a wrong field type is a 400 with msgspec's message."""
    if not body.strip():
        raise ClientError(400, "the request body is empty; expected a JSON object", type_="invalid_json", prompt=prompt)
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        raise ClientError(400, f"invalid request: {exc}", type_="invalid_request", prompt=prompt) from None
    except msgspec.DecodeError as exc:
        raise ClientError(400, f"the request body is not valid JSON: {exc}", type_="invalid_json", prompt=prompt) from None
    except RecursionError:  # msgspec's depth guard (arrays/objects nested ~1000 deep) raises this, not DecodeError
        raise ClientError(400, "the request body is nested too deeply", type_="invalid_json", prompt=prompt) from None


def decode_any(body: bytes | str) -> Any:
    """Untyped JSON of a body or form field; empty, malformed or too deeply nested is a 400."""
    return decode(body, Any)  # type: ignore[arg-type]

