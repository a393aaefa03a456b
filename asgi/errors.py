"""Client errors and the exception handlers that turn them into 4xx answers.

Where ComfyUI answers a client mistake with a 500 (a body that is not JSON, `max_items=abc`, an unknown upload
`type`, a mask of the wrong size, a prompt field of the wrong type) or lets a path leave its folder, this adapter
answers 400/403/404/413 with a JSON body `{"error": {"type", "message", "details", "extra_info"}}` and refuses.
Errors of `POST /prompt` also carry `"node_errors": {}` so that clients reading ComfyUI's 400 shape keep working.
"""
from __future__ import annotations

import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from comfy_core.errors import InputFileError, PromptError

from .responses import json_response

log = logging.getLogger(__name__)


def error_body(type_: str, message: str, details: str = "", extra_info: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"type": type_, "message": message, "details": details, "extra_info": extra_info or {}}}


class ClientError(Exception):
    """A request the client got wrong; answered with `status` and a JSON error body."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request", details: str = "", prompt: bool = False):
        super().__init__(message)
        self.status, self.type, self.message, self.details, self.prompt = status, type_, message, details, prompt

    def body(self) -> dict[str, Any]:
        body = error_body(self.type, self.message, self.details)
        if self.prompt:
            body["node_errors"] = {}
        return body


async def _client_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClientError)
    return json_response(exc.body(), exc.status)


async def _input_file_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InputFileError)
    status = exc.status if 400 <= exc.status < 500 else 400
    kind = {403: "forbidden_path", 404: "not_found", 409: "file_exists"}.get(status, "invalid_file")
    return json_response(error_body(kind, str(exc)), status)


async def _prompt_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PromptError)
    return json_response(exc.body, 400)


EXCEPTION_HANDLERS = {
    ClientError: _client_error,
    InputFileError: _input_file_error,
    PromptError: _prompt_error,
}
