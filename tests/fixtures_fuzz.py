"""Helpers of tests/test_asgi_fuzz.py: a raw ASGI client, the route walker, the request battery and its checker, the
structural prompt mutator, and model files with hostile headers."""
from __future__ import annotations

import asyncio
import json
import random
import traceback
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from fixtures_asgi import png_bytes, steps_prompt
from starlette.routing import Match, Mount, Route, WebSocketRoute

DEEP = b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}"  # msgspec raises RecursionError (not DecodeError) here


# --- a raw ASGI client --------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str = ""  # the traceback when the app raised


async def asgi_call(app: Any, method: str, raw_path: str, query: str = "", body: bytes | list[bytes] = b"",
                    headers: dict[str, str] | None = None) -> Answer:
    """One request as uvicorn would pass it on: `path` percent-decoded from `raw_path`, nothing normalized."""
    chunks = body if isinstance(body, list) else [body]
    headers = dict(headers or {})
    if "content-length" not in headers and "transfer-encoding" not in headers:
        headers["content-length"] = str(sum(map(len, chunks)))
    headers.setdefault("host", "127.0.0.1:8188")  # a loopback Host: the origin guard is on
    header_list = []
    for key, value in headers.items():
        header_list.append((key.lower().encode("latin-1"), value.encode("latin-1")))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": unquote(raw_path), "raw_path": raw_path.encode("latin-1"), "root_path": "",
             "query_string": query.encode("latin-1"), "headers": header_list, "client": ("127.0.0.1", 50000),
             "server": ("127.0.0.1", 8188)}
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    answer = Answer(status=0)

    async def receive() -> dict[str, Any]:
        if pending:
            return pending.pop(0)
        await asyncio.Event().wait()  # the client stays connected until the response is done
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")

    try:
        await asyncio.wait_for(app(scope, receive, send), timeout=30)
    except Exception:  # noqa: BLE001 - Starlette has sent its 500 and re-raised; keep the cause for the report
        answer.error = traceback.format_exc(limit=-4)
        answer.status = answer.status or 500
    return answer


def call(app: Any, method: str, path: str, body: bytes = b"", content_type: str = "application/json") -> Answer:
    return asyncio.run(asgi_call(app, method, path, body=body, headers={"content-type": content_type}))


def call_with(app: Any, method: str, path: str, headers: dict[str, str]) -> Answer:
    return asyncio.run(asgi_call(app, method, path, headers={"content-length": "0", **headers}))


# --- the route table ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RouteInfo:
    path: str  # a Starlette path template, e.g. "/api/models/{folder}"
    methods: frozenset[str]
    kind: str  # "http", "websocket" or "static" (a mounted file app)


def walk_routes(routes: list[Any], prefix: str = "") -> list[RouteInfo]:
    found: list[RouteInfo] = []
    for route in routes:
        if isinstance(route, Route):
            found.append(RouteInfo(prefix + route.path, frozenset(route.methods or ()), "http"))
        elif isinstance(route, WebSocketRoute):
            found.append(RouteInfo(prefix + route.path, frozenset(), "websocket"))
        elif isinstance(route, Mount):
            if route.routes:
                found += walk_routes(route.routes, prefix + route.path)
            else:
                found.append(RouteInfo(prefix + route.path + "/{path:path}", frozenset({"GET", "HEAD"}), "static"))
    return found


def handler_of(app: Any, method: str, raw_path: str) -> Any:
    """The route that fully matches a request (what will answer it), or None."""
    scope = {"type": "http", "method": method, "path": unquote(raw_path), "root_path": ""}
    for route in app.router.routes:
        if route.matches(scope)[0] == Match.FULL:
            return route
    return None


# --- the HTTP battery ---------------------------------------------------------------------------------------------

BODY_LIMIT = 64 * 1024
UPLOAD_LIMIT = 256 * 1024
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"]
# Path parameter values as they travel on the wire (percent-encoded where a client would have to).
SEGMENTS = ["x", "..", ".", "%2e%2e", ".%2E", "%2e%2e%2f%2e%2e%2fetc%2fpasswd", "..%5c..%5cwin.ini", "%5c",
            "%2fetc%2fpasswd", "C:%5cWindows", "%00", "a%00b.png", "%c3%a9%e2%9c%93%f0%9f%98%80", "%ff%fe",
            "%ed%a0%80", "%25", "%252e%252e", "%zz", "a" * 300, "b" * 5000, "%20", "con", "-1",
            "99999999999999999999999999", "1e309", "NaN", "null", "%7B%7D", "a.safetensors", "checkpoints"]
PATH_TAILS = ["../../etc/passwd", "a/../../b", "/abs/x", "a//b", "a/./b", "a/b/c/" + "d" * 250, "x/" * 200]
QUERIES = ["", "filename=..%2F..%2Fetc%2Fpasswd", "filename=/etc/passwd&type=output", "filename=a&type=..",
           "filename=a.png&subfolder=..%2F..", "filename=a%00b", "filename=" + "a" * 5000,
           "filename=a.png&type=input&subfolder=" + "s" * 300, "filename=a.png&type=input&preview=webp;99999999999",
           "filename=a.png&type=input&preview=jpeg;-5&channel=zz", "filename=a.png [zzz]", "filename=%ff%fe",
           "max_items=abc&offset=1e3", "max_items=-5&offset=-99999999999999999999", "max_items=NaN",
           "dir=..%2F..&recurse=true&split=true&full_info=true", "dir=%00", "dir=" + "d" * 300, "path=..%2F",
           "path=/etc", "path=" + "p" * 300, "overwrite=false&full_info=true", "%zz=%zz&&&==", "clientId=%00",
           "filename=a&filename=b&filename=c"]
BODIES = [b"", b" ", b"{", b"null", b"[]", b"1", b"-0", b'"s"', b"true", b"[1,2,{}]", b'{"a":{"b":[null,{}]}}',
          b"1e400", b"NaN", b'{"x":NaN}', b'{"x":Infinity}', b"\x00\xff\xfe", '{"é":"\\u0000"}'.encode(),
          b'{"k":"\\ud800"}', b'{"prompt":[]}', b'{"prompt":1}', b'{"prompt":{"1":[]}}', b'{"prompt":"{}"}',
          b'{"clear":"yes","delete":[1,2]}', b'{"delete":"abc"}', b'{"delete":[null]}', b'{"unload_models":1}',
          b'{"clientId":1,"enabled":"x"}', b'{"clientId":"c","enabled":true}', b'{"username":null}',
          b'{"username":"' + b"u" * 3000 + b'"}', b'{"number":1e308,"prompt":{}}', b'{"prompt_id":{"a":1}}',
          b'{"front":[],"prompt":{}}', b'[' * 2000 + b']' * 2000, b'{"a":' * 500 + b'1' + b'}' * 500,
          b'{"prompt":{"1":{"class_type":"X","inputs":{"a":' + b"[" * 3000 + b"]" * 3000 + b"}}}}",
          b'{"x":' + b"[" * 3000 + b"]" * 3000 + b"}"]
HEADER_SETS = [{"origin": "http://["}, {"origin": "null"}, {"origin": "http://127.0.0.1:x"}, {"origin": "\xff"},
               {"host": "[", "origin": "http://a"}, {"host": "127.0.0.1:99999999", "origin": "http://127.0.0.1"},
               {"host": "a" * 5000}, {"comfy-user": "../x"}, {"comfy-user": "\x00"}, {"comfy-user": "a" * 3000},
               {"content-type": "application/json; charset=\xff"}, {"content-length": "-1"},
               {"content-length": "abc"}]
CONTENT_TYPES = ["application/json", "text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data; boundary=zz", "multipart/form-data", "application/json; charset=latin-1",
                 "x/y;;;=", "image/png"]


def fill(template: str, value: str, tail: str | None = None) -> str:
    """The template with every `{param}` set to `value` (a `{param:path}` to `tail` when given)."""
    out, rest = "", template
    while "{" in rest:
        head, _, after = rest.partition("{")
        name, _, rest = after.partition("}")
        out += head + (tail if tail is not None and name.endswith(":path") else value)
    return out + rest


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "fuzzboundary", close: bool = True) -> bytes:
    """A multipart/form-data body of (name, filename or None, data) parts."""
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
    return out + (f"--{boundary}--\r\n".encode() if close else b"")


def upload_forms() -> list[bytes]:
    png = png_bytes()
    image = ("image", "f.png", png)
    forms = [multipart([image]), multipart([]), multipart([("image", None, b"text")]), multipart([("image", "", png)]),
             multipart([image, ("subfolder", "s.txt", b"x")]), multipart([image, ("type", "t.txt", b"x")]),
             multipart([image, ("type", None, b"../x")]), multipart([image, ("type", None, b"zzz")]),
             multipart([image, image, ("extra", None, b"1"), ("overwrite", None, b"\xff")]),
             multipart([image], close=False), multipart([image])[:40], b"--other\r\n\r\n",
             multipart([image, ("subfolder", None, b"f.png")]), multipart([image, ("subfolder", None, b"s" * 300)]),
             multipart([image, ("subfolder", None, b"..")]), multipart([image, ("subfolder", None, b"/abs")]),
             multipart([("x", None, b"1")] * 1500)]
    for name in ["a\x00b.png", "f" * 300 + ".png", "../../x.png", "/abs.png", "a\\b.png", "é✓😀.png", ".", "..",
                 "f.png/", "f.png/x.png"]:
        forms.append(multipart([("image", name, png)]))
    for ref in [b"null", b"[]", b"{}", b'{"filename":5}', b"not json", b'{"filename":"f.png","type":"../x"}',
                b'{"filename":"' + b"q" * 300 + b'","type":"input"}', b'{"filename":"f.png","subfolder":{}}']:
        forms.append(multipart([image, ("original_ref", None, ref)]))
        forms.append(multipart([("image", "m.png", b"not a png"), ("original_ref", None, ref)]))
    return forms


def battery(route: RouteInfo) -> list[tuple[str, str, str, bytes | list[bytes], dict[str, str] | None]]:
    """(method, raw path, query, body, headers or None) requests for one route."""
    base = fill(route.path, "x", "x")
    requests: list[tuple[str, str, str, bytes | list[bytes], dict[str, str] | None]] = []
    requests += [(method, base, "", b"", None) for method in METHODS]
    requests += [(min(route.methods - {"HEAD"}, default="GET"), base, "", b"{}", headers) for headers in HEADER_SETS]
    if "{" in route.path:
        main = min(route.methods - {"HEAD"}, default="GET")
        requests += [(main, fill(route.path, seg), "", b"", None) for seg in SEGMENTS]
        if ":path}" in route.path:
            requests += [(main, fill(route.path, "x", tail), "", b"", None) for tail in PATH_TAILS]
    if "GET" in route.methods:
        requests += [("GET", base, query, b"", None) for query in QUERIES]
    for method in sorted(route.methods & {"POST", "PUT", "PATCH", "DELETE"}):
        requests += [(method, base, "", body, {"content-type": "application/json"}) for body in BODIES]
        requests += [(method, base, "", body, {"content-type": ct}) for body in BODIES[:4] for ct in CONTENT_TYPES]
        requests += [(method, base, "", form, {"content-type": "multipart/form-data; boundary=fuzzboundary"})
                     for form in upload_forms()]
        limit = UPLOAD_LIMIT if "upload" in route.path or "userdata/" in route.path else BODY_LIMIT
        over = b"[" + b"0," * (limit // 2) + b"0]"
        requests += [(method, base, "", over, None),  # honest Content-Length, over the limit
                     (method, base, "", [over[:10], over[10:]], {"content-length": "5"}),  # a lying one
                     (method, base, "", [b"{"] * 3 + [over], {"transfer-encoding": "chunked"})]  # streamed
    return requests


def check(app: Any, route: RouteInfo, request: tuple, answer: Answer) -> str | None:
    """A failure line, or None: never a 500; JSON error bodies from our own handlers."""
    method, raw_path, query = request[:3]
    where = f"{method} {raw_path[:90]}{'?' + query[:60] if query else ''} body={str(request[3])[:50]}"
    if answer.status >= 500 or answer.status == 0:
        return f"{answer.status} for {where}\n{answer.error}"
    handler = handler_of(app, method, raw_path)
    guarded = answer.status == 403 and not answer.body  # the origin guard's empty 403, as ComfyUI's
    if isinstance(handler, Route) and 400 <= answer.status < 500 and answer.status not in (405, 413) \
            and method != "HEAD" and not guarded:
        try:
            body = json.loads(answer.body)
        except ValueError:
            return f"{answer.status} without a JSON body for {where}: {answer.body[:100]!r}"
        if not isinstance(body, dict) or "error" not in body:
            return f"{answer.status} JSON without `error` for {where}: {answer.body[:100]!r}"
    return None


def run_battery(app: Any, routes: list[RouteInfo]) -> tuple[int, list[str]]:
    async def go() -> tuple[int, list[str]]:
        failures, count = [], 0
        for route in routes:
            for request in battery(route):
                method, raw_path, query, body, headers = request
                answer = await asgi_call(app, method, raw_path, query, body, headers)
                count += 1
                failure = check(app, route, request, answer)
                if failure:
                    failures.append(failure)
        return count, failures

    return asyncio.run(go())


# --- model files a folder may hold --------------------------------------------------------------------------------

HOSTILE_HEADERS = {  # safetensors files whose header a model folder may hold: name -> (declared length, header)
    "deep.safetensors": (None, b'{"__metadata__": ' + b"[" * 5000 + b"]" * 5000 + b"}"),
    "deep_covers.safetensors": (None, json.dumps({"__metadata__": {"ssmd_cover_images": "[" * 5000}}).encode()),
    "bad_b64.safetensors": (None, json.dumps({"__metadata__": {"ssmd_cover_images": '["!!"]'}}).encode()),
    "not_image.safetensors": (None, json.dumps({"__metadata__": {"ssmd_cover_images": '["aGVsbG8="]'}}).encode()),
    "covers_object.safetensors": (None, json.dumps({"__metadata__": {"ssmd_cover_images": '{"a": 1}'}}).encode()),
    "metadata_list.safetensors": (None, b'{"__metadata__": [1]}'),
    "short.safetensors": (10**6, b"{}"),
    "huge_length.safetensors": (2**63, b"{}"),
    "tiny.safetensors": (None, None),
}


def write_hostile_models(folder: Any) -> None:
    folder.mkdir(parents=True)
    for name, (declared, header) in HOSTILE_HEADERS.items():
        data = b"\x01" if header is None else (len(header) if declared is None else declared).to_bytes(8, "little")
        (folder / name).write_bytes(data + (header or b""))
    (folder / "folder.safetensors").mkdir()


# --- prompts, structurally ----------------------------------------------------------------------------------------


def base_prompts() -> list[dict[str, Any]]:
    image = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
             "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
             "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}}
    return [image, steps_prompt(), {**steps_prompt(), "9": {"class_type": "AsgiFail", "inputs": {"value": 1}}}]


GARBAGE = [None, True, 0, -1, 10**30, -(10**30), 1e308, 0.5, "", "x", "\x00", "é😀", "9" * 400, [], [1], ["1"],
           ["1", 0, 0], ["999", 0], ["1", 99], ["1", -1], ["1", "0"], ["1", 0.5], ["1", True], [None, 0], [[], 0],
           [{"a": 1}, 0], {}, {"a": [1, {"b": None}]}, {"__value__": [1]}, "nan", "inf", "-inf", "1e999"]


def mutate(prompt: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """One structural mutation of a prompt (the input is copied, not changed)."""
    prompt = json.loads(json.dumps(prompt))
    nodes = sorted(k for k, v in prompt.items() if isinstance(v, dict))
    if not nodes:
        return prompt
    node_id = rng.choice(nodes)
    node = prompt[node_id]
    inputs = node.get("inputs") if isinstance(node.get("inputs"), dict) else node.setdefault("junk", {})
    op = rng.randrange(10)
    if op == 0:
        prompt[node_id] = rng.choice(GARBAGE)  # a node that is not an object
    elif op == 1:
        node["class_type"] = rng.choice([*GARBAGE, "Nope", "PreviewImage", "ImageInvert", "EmptyImage"])
    elif op == 2:
        node["inputs"] = rng.choice(GARBAGE)
    elif op == 3 and inputs:
        inputs[rng.choice(sorted(inputs))] = rng.choice(GARBAGE)
    elif op == 4 and inputs:
        del inputs[rng.choice(sorted(inputs))]
    elif op == 5:
        inputs[rng.choice(["image", "images", "value", "junk"])] = [node_id, 0]  # a self-cycle
    elif op == 6:
        other = rng.choice(nodes)
        inputs["image"] = [other, 0]
        if isinstance(prompt[other].get("inputs"), dict):
            prompt[other]["inputs"]["image"] = [node_id, 0]  # a two-node cycle
    elif op == 7:
        prompt[rng.choice(["", "\x00", "é", "x" * 300, "-1"])] = json.loads(json.dumps(node))
    elif op == 8:
        node.pop("class_type", None)
    else:
        node["_meta"] = rng.choice(GARBAGE)
    return prompt


def huge_prompts() -> list[dict[str, Any]]:
    chain = {str(i): {"class_type": "ImageInvert", "inputs": {"image": [str(i - 1), 0]}} for i in range(1, 5000)}
    chain["0"] = {"class_type": "EmptyImage", "inputs": {"width": 1, "height": 1, "batch_size": 1, "color": 0}}
    chain["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["4999", 0]}}
    broken = {**chain, "0": {"class_type": "ImageInvert", "inputs": {"image": ["missing", 0]}}}
    ring = {str(i): {"class_type": "ImageInvert", "inputs": {"image": [str((i + 1) % 5000), 0]}} for i in range(5000)}
    ring["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["0", 0]}}
    unknown = {str(i): {"class_type": f"Unknown{i}", "inputs": {}} for i in range(5000)}
    wide = {str(i): steps_prompt(value=-i, steps=1)["1"] for i in range(5000)}  # all but "0" below the min
    return [chain, broken, ring, unknown, wide]


def assert_comfyui_answer(status: int, body: Any, where: str) -> None:
    """200 `{prompt_id, number, node_errors}` or ComfyUI's 400 `{"error": {...}, "node_errors": {...}}`."""
    assert status in (200, 400), f"{status} for {where}: {body}"
    error_keys = {"type", "message", "details", "extra_info"}
    if status == 200:
        assert set(body) == {"prompt_id", "number", "node_errors"}, where
    else:
        assert set(body) == {"error", "node_errors"}, where
        assert set(body["error"]) == error_keys and isinstance(body["error"]["message"], str), where
    for entry in body["node_errors"].values():
        assert set(entry) == {"errors", "dependent_outputs", "class_type"}, where
        assert entry["errors"] and all(set(e) == error_keys for e in entry["errors"]), where
        assert isinstance(entry["dependent_outputs"], list) and entry["dependent_outputs"], where
