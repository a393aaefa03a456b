"""Prompt, queue, interrupt, free and history routes (ComfyUI server.py; spec §1-2, §4).

Each handler decodes with msgspec, makes one engine call in a worker thread and encodes with msgspec.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from .errors import ClientError
from .responses import empty_response, json_response
from .wire import (
    DeleteOrClear,
    FreeRequest,
    PromptRequest,
    PromptResponse,
    decode,
    decode_any,
)


def _engine(request: Request) -> Any:
    return request.app.state.engine


def _no_prompt() -> ClientError:
    return ClientError(400, "No prompt provided", type_="no_prompt", details="No prompt provided", prompt=True)


async def get_prompt(request: Request) -> Response:
    remaining = await run_in_threadpool(_engine(request).queue_remaining)
    return json_response({"exec_info": {"queue_remaining": remaining}})


async def post_prompt(request: Request) -> Response:
    body = decode(await request.body(), PromptRequest, prompt=True)
    if body.prompt is None:
        raise _no_prompt()
    submission = await run_in_threadpool(
        lambda: _engine(request).submit(
            body.prompt,
            client_id=body.client_id,
            extra_data=dict(body.extra_data or {}),
            prompt_id=None if body.prompt_id is None else str(body.prompt_id),
            number=body.number,
            front=bool(body.front),
            partial_execution_targets=body.partial_execution_targets,
        )
    )
    return json_response(PromptResponse(submission.prompt_id, submission.number, submission.node_errors))


async def get_queue(request: Request) -> Response:
    return json_response(await run_in_threadpool(_engine(request).queue))


async def _delete_or_clear(request: Request, clear: Callable[[], Any], delete: Callable[[list[str]], Any]) -> Response:
    """POST /queue and POST /history: `{"clear": true}` empties, `{"delete": [ids]}` removes (both may be given)."""
    body = decode(await request.body(), DeleteOrClear)
    if body.clear:
        await run_in_threadpool(clear)
    if body.delete:
        await run_in_threadpool(delete, body.delete)
    return empty_response()


async def post_queue(request: Request) -> Response:
    engine = _engine(request)
    return await _delete_or_clear(request, engine.clear_queue, engine.delete_queued)


async def interrupt(request: Request) -> Response:
    """Any body is accepted (ComfyUI's frontend posts none); `{"prompt_id": id}` targets one running prompt."""
    prompt_id = None
    raw = await request.body()
    if raw.strip():
        try:
            data = decode_any(raw)
        except ClientError:  # not JSON: a plain interrupt
            data = None
        if isinstance(data, dict) and data.get("prompt_id"):
            prompt_id = str(data["prompt_id"])
    await run_in_threadpool(_engine(request).interrupt, prompt_id)
    return empty_response()


async def post_free(request: Request) -> Response:
    body = decode(await request.body(), FreeRequest)
    await run_in_threadpool(
        lambda: _engine(request).free(unload_models=body.unload_models, free_memory=body.free_memory)
    )
    return empty_response()


def _int_param(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ClientError(400, f"query parameter {name!r} must be an integer, got {value!r}") from None


async def get_history(request: Request) -> Response:
    max_items, offset = _int_param(request, "max_items"), _int_param(request, "offset")
    history = await run_in_threadpool(lambda: _engine(request).history(max_items=max_items, offset=offset))
    return json_response(history)


async def get_history_item(request: Request) -> Response:
    item = await run_in_threadpool(_engine(request).history_item, request.path_params["prompt_id"])
    return json_response(item)


async def post_history(request: Request) -> Response:
    engine = _engine(request)
    return await _delete_or_clear(request, engine.clear_history, engine.delete_history)


ROUTES = [
    ("/prompt", get_prompt, ["GET"]),
    ("/prompt", post_prompt, ["POST"]),
    ("/queue", get_queue, ["GET"]),
    ("/queue", post_queue, ["POST"]),
    ("/interrupt", interrupt, ["GET", "POST"]),
    ("/free", post_free, ["POST"]),
    ("/history", get_history, ["GET"]),
    ("/history", post_history, ["POST"]),
    ("/history/{prompt_id}", get_history_item, ["GET"]),
]
