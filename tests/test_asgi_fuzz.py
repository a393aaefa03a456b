"""The HTTP + WebSocket API under malformed input: never a 500, JSON errors, and the engine keeps serving.

Every route `create_app` registers (walked recursively: `/x` and `/api/x`, the unaliased `/internal/*` and static
routes, the frontend mount) gets a deterministic battery of bad requests: wrong methods, bodies of every wrong JSON
type, NaN / huge numbers, NUL bytes, unicode and invalid UTF-8, path tricks in path parameters and query strings,
wrong content types, broken multipart forms, lying Content-Length headers and oversized bodies. Requests are sent
straight to the ASGI app with hand-built scopes, so `..` segments and odd bytes reach the routes exactly as a raw
HTTP client can send them (an HTTP client library would normalize them away). `POST /prompt` bodies are mutated
structurally from valid prompts with a seeded generator. The websocket is driven over real sockets (uvicorn).
After each battery a prompt still runs and a websocket still streams its events.
"""
from __future__ import annotations

import asyncio
import json
import random
import socket
import time
import urllib.request
import zlib
from typing import Any

import pytest
from comfy_core.asgi import create_app
from fixtures_asgi import make_engine, png_bytes, running_server, steps_prompt
from fixtures_fuzz import (
    BODY_LIMIT,
    DEEP,
    HOSTILE_HEADERS,
    UPLOAD_LIMIT,
    RouteInfo,
    asgi_call,
    assert_comfyui_answer,
    base_prompts,
    call,
    call_with,
    huge_prompts,
    multipart,
    mutate,
    run_battery,
    walk_routes,
    write_hostile_models,
)
from starlette.routing import Route
from websockets.sync.client import connect

SEED = 20261129


# --- fixtures ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(app, engine, base url): one engine and app behind a real uvicorn, with a tiny frontend build mounted."""
    root = tmp_path_factory.mktemp("fuzz")
    web = root / "web"
    (web / "assets").mkdir(parents=True)
    (web / "index.html").write_text("<html></html>")
    (web / "assets" / "app.js").write_text("console.log(1)")
    write_hostile_models(root / "models" / "checkpoints")
    engine = make_engine(root, user_dir=str(root / "user"))
    app = create_app(engine, owns_engine=True, max_body_bytes=BODY_LIMIT, max_upload_bytes=UPLOAD_LIMIT,
                     frontend_dir=web)
    with running_server(app) as base:
        http(base, "/upload/image", multipart([("image", "f.png", png_bytes())]),
             "multipart/form-data; boundary=fuzzboundary")
        http(base, "/userdata/f.json", b"{}", "application/json")
        yield app, engine, base
    engine.close()


def http(base: str, path: str, body: bytes | None = None, content_type: str = "application/json") -> Any:
    request = urllib.request.Request(base + path, data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def ws_url(base: str, client_id: str) -> str:
    return base.replace("http://", "ws://") + "/ws?clientId=" + client_id


def assert_still_serving(base: str, client_id: str = "alive") -> None:
    """A prompt runs end to end and its events stream to a websocket client."""
    with connect(ws_url(base, client_id)) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "status"
        value = zlib.crc32(client_id.encode()) % 10**9  # a prompt of its own: not answered from the cache
        queued = http(base, "/prompt", json.dumps({"prompt": steps_prompt(value=value, steps=2),
                                                   "client_id": client_id}).encode())
        seen, deadline = [], time.monotonic() + 30
        while True:
            frame = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            message = json.loads(frame)
            seen.append(message["type"])
            if message["type"] == "executed":
                assert message["data"]["output"] == {"text": [str(value)]}
            if message["type"] == "executing" and message["data"]["node"] is None:
                break
    assert seen.count("progress") == 2 and "executed" in seen and "execution_success" in seen
    assert http(base, f"/history/{queued['prompt_id']}")[queued["prompt_id"]]["status"]["status_str"] == "success"


# --- the route table -----------------------------------------------------------------------------------------------


def test_every_route_is_enumerated_with_its_aliases(served):
    app, _, _ = served
    routes = walk_routes(app.routes)
    paths = {r.path for r in routes}
    assert len(routes) >= 75
    api_only = {"/api/workflow_templates/{module}/{path:path}"}  # static, registered under /api only
    for route in routes:
        if route.kind == "http" and route.path.startswith("/api/") and route.path not in api_only:
            assert route.path[4:] in paths, f"{route.path} has no unprefixed twin"
    internal = {p for p in paths if p.startswith("/internal/")}
    assert len(internal) == 5 and not any(p.startswith("/api/internal") for p in paths)
    assert {"/ws", "/api/ws", "/extensions/{module}/{path:path}", "/{path:path}", "/"} <= paths
    assert {r.kind for r in routes} == {"http", "websocket", "static"}


# --- HTTP battery --------------------------------------------------------------------------------------------------


def test_no_route_answers_500_to_malformed_requests(served):
    app, engine, base = served
    routes = walk_routes(app.routes)
    count, failures = run_battery(app, routes)
    assert count > 5000
    assert not failures, f"{len(failures)} failures, first ones:\n" + "\n".join(failures[:15])
    engine.clear_queue()
    engine.interrupt()
    assert engine.wait_idle(60)
    assert_still_serving(base, "after-http-battery")


def test_battery_catches_a_500(served):
    """The checker itself: a route that raises is reported, with its traceback."""
    app, _, _ = served

    async def boom(request):
        raise RuntimeError("kaboom")

    failing = Route("/fuzz-self-test", boom, methods=["GET"])
    app.router.routes.insert(0, failing)
    try:
        count, failures = run_battery(app, [RouteInfo("/fuzz-self-test", frozenset({"GET", "HEAD"}), "http")])
    finally:
        app.router.routes.remove(failing)
    assert count > 20 and failures and "kaboom" in failures[0] and failures[0].startswith("500 for GET")


# --- regressions: each bug the battery found, on its own -------------------------------------------------------

@pytest.mark.parametrize("path", ["/settings", "/settings/Comfy.X", "/users", "/api/users", "/prompt", "/queue",
                                  "/free", "/internal/logs/subscribe"])
def test_json_nested_too_deeply_is_a_400(served, path):
    app, _, _ = served
    method = "PATCH" if path.startswith("/internal") else "POST"
    answer = call(app, method, path, DEEP)
    assert answer.status == 400, answer.error
    assert json.loads(answer.body)["error"]["type"] == "invalid_json"
    nested_prompt = b'{"prompt": {"1": {"class_type": "X", "inputs": {"a": ' + DEEP + b"}}}}"
    if path == "/prompt":
        body = json.loads(call(app, "POST", path, nested_prompt).body)
        assert body["error"]["message"] == "the request body is nested too deeply" and body["node_errors"] == {}


def test_interrupt_ignores_a_body_nested_too_deeply(served):
    app, _, _ = served
    assert call(app, "POST", "/interrupt", DEEP).status == 200


def test_settings_file_nested_too_deeply_reads_as_no_settings(served):
    app, _, _ = served
    assert call(app, "POST", "/userdata/comfy.settings.json", DEEP).status == 200  # any bytes are a user file
    answer = call(app, "GET", "/settings")
    assert answer.status == 200 and json.loads(answer.body) == {}
    assert call(app, "POST", "/settings/Comfy.A", b"1").status == 200
    assert json.loads(call(app, "GET", "/settings").body) == {"Comfy.A": 1}


@pytest.mark.parametrize("body, content_type, detail", [
    (b"", "multipart/form-data", "Missing boundary in multipart."),
    (b"--other\r\n\r\n", "multipart/form-data; boundary=fuzzboundary", "Invalid multipart data."),
    (multipart([("x", None, b"1")] * 1001), "multipart/form-data; boundary=fuzzboundary",
     "Too many fields. Maximum number of fields is 1000."),
], ids=["no-boundary", "bad-framing", "too-many-fields"])
def test_broken_multipart_uploads_are_json_400s(served, body, content_type, detail):
    app, _, _ = served
    for path in ("/upload/image", "/api/upload/mask"):
        answer = call(app, "POST", path, body, content_type)
        assert answer.status == 400 and answer.headers["content-type"] == "application/json"
        error = json.loads(answer.body)["error"]
        assert error["type"] == "invalid_request" and error["message"].endswith(detail)


def test_mask_original_ref_nested_too_deeply_is_a_400(served):
    app, _, _ = served
    form = multipart([("image", "m.png", png_bytes()), ("original_ref", None, DEEP)])
    answer = call(app, "POST", "/upload/mask", form, "multipart/form-data; boundary=fuzzboundary")
    assert answer.status == 400 and "nested too deeply" in json.loads(answer.body)["error"]["message"]


@pytest.mark.parametrize("path, body, status", [
    ("/upload/image", multipart([("image", "n" * 300 + ".png", b"x")]), 400),
    ("/upload/image", multipart([("image", "c.png", b"x"), ("subfolder", None, b"f.png")]), 409),
    ("/userdata/" + "u" * 300, b"{}", 400),
    ("/userdata/f.json%2Fx.json", b"{}", 409),
])
def test_names_the_filesystem_refuses_are_4xx(served, path, body, status):
    app, _, _ = served
    content_type = "multipart/form-data; boundary=fuzzboundary" if path.startswith("/upload") else "application/json"
    answer = call(app, "POST", path, body, content_type)
    assert answer.status == status, answer.error
    assert json.loads(answer.body)["error"]["type"] == ("file_exists" if status == 409 else "invalid_file")


def test_origin_that_is_not_a_url_is_refused_not_a_500(served):
    app, _, base = served
    answer = call_with(app, "GET", "/prompt", {"origin": "http://["})
    assert answer.status == 403 and answer.body == b""
    assert call_with(app, "GET", "/prompt", {"host": "[", "origin": "http://["}).status == 200  # not loopback
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:  # the websocket upgrade is refused the same way
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://[\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 403")


@pytest.mark.parametrize("name", [*HOSTILE_HEADERS, "folder.safetensors"])
def test_hostile_model_headers_are_no_metadata_and_no_preview(served, name):
    app, _, _ = served
    metadata = asyncio.run(asgi_call(app, "GET", "/view_metadata/checkpoints", f"filename={name}"))
    preview = asyncio.run(asgi_call(app, "GET", f"/experiment/models/preview/checkpoints/0/{name}"))
    assert metadata.status in (200, 404) and preview.status in (400, 404), metadata.error + preview.error
    assert "error" in json.loads(preview.body)


@pytest.mark.parametrize("path, limit", [("/prompt", BODY_LIMIT), ("/api/settings", BODY_LIMIT),
                                         ("/upload/image", UPLOAD_LIMIT), ("/userdata/big.json", UPLOAD_LIMIT)])
def test_bodies_over_the_limit_are_413_however_they_arrive(served, path, limit):
    app, _, _ = served
    form = path.startswith("/upload")
    over = multipart([("image", "big.png", b"0" * limit)]) if form else b"0" * (limit + 1)
    kind = {"content-type": "multipart/form-data; boundary=fuzzboundary" if form else "application/json"}
    honest = asyncio.run(asgi_call(app, "POST", path, body=over, headers=kind))
    lying = asyncio.run(asgi_call(app, "POST", path, body=[over[:10], over[10:]],
                                  headers={**kind, "content-length": "5"}))
    chunked = asyncio.run(asgi_call(app, "POST", path, body=[over[: limit // 2], over[limit // 2:]],
                                    headers={**kind, "transfer-encoding": "chunked"}))
    assert (honest.status, lying.status, chunked.status) == (413, 413, 413)
    if not form:
        assert asyncio.run(asgi_call(app, "POST", path, body=over[:limit])).status != 413  # at the limit: fine


def test_unhashable_class_type_is_invalid_prompt(served):
    app, _, _ = served
    body = json.dumps({"prompt": {"1": {"class_type": ["SaveImage"], "inputs": {}}}}).encode()
    answer = json.loads(call(app, "POST", "/prompt", body).body)
    assert answer["error"]["type"] == "invalid_prompt" and answer["node_errors"] == {}


def test_hello_nested_too_deeply_keeps_the_socket_registered(served):
    app, _, base = served
    with connect(ws_url(base, "deep-hello")) as ws:
        ws.recv(timeout=10)
        ws.send('{"type":"feature_flags","data":' + DEEP.decode() + "}")
        ws.send('{"type":"feature_flags","data":{"supports_preview_metadata":true}}')  # still the first hello
        assert json.loads(ws.recv(timeout=10))["type"] == "feature_flags"
        assert "deep-hello" in app.state.hub.client_ids


# --- POST /prompt, structurally ------------------------------------------------------------------------------------


def test_prompt_bodies_fuzzed_structurally_get_comfyui_answers(served):
    _, engine, base = served
    rng = random.Random(SEED)
    prompts = []
    for _ in range(400):
        prompt = rng.choice(base_prompts())
        for _ in range(rng.randint(1, 3)):
            prompt = mutate(prompt, rng)
        prompts.append(prompt)
    prompts += huge_prompts()

    roomy = create_app(engine)  # the same engine behind the default body limit: the 5000-node prompts need it

    async def go() -> list[tuple[int, Any, str]]:
        answers = []
        for i, prompt in enumerate(prompts):
            raw = json.dumps({"prompt": prompt, "client_id": "fuzz"}).encode()
            answer = await asgi_call(roomy, "POST", "/prompt", body=raw, headers={"content-type": "application/json"})
            assert answer.status < 500, f"prompt #{i} {raw[:300]!r}:\n{answer.error}"
            answers.append((answer.status, json.loads(answer.body), raw[:200].decode("utf-8", "replace")))
        return answers

    started = time.monotonic()
    answers = asyncio.run(go())
    for status, body, where in answers:
        assert_comfyui_answer(status, body, where)
    statuses = [status for status, _, _ in answers]
    assert statuses.count(400) > 200 and statuses.count(200) > 10  # the mutations hit both sides
    error_types = {body["error"]["type"] for status, body, _ in answers if status == 400}
    assert {"invalid_prompt", "prompt_outputs_failed_validation", "prompt_no_outputs"} <= error_types
    cycle_errors = [e for status, body, _ in answers if status == 400
                    for entry in body["node_errors"].values() for e in entry["errors"]
                    if e["type"] == "dependency_cycle"]
    assert cycle_errors
    chain, broken, ring, unknown, wide = answers[-5:]
    assert [s for s, _, _ in answers[-5:]] == [200, 400, 400, 400, 200]
    assert chain[1]["node_errors"] == {}  # a valid 5000-deep chain is accepted (and runs)
    assert broken[1]["node_errors"]["0"]["errors"][0]["message"] == "Linked node does not exist"
    assert {e["type"] for entry in ring[1]["node_errors"].values() for e in entry["errors"]} == {"dependency_cycle"}
    assert len(ring[1]["node_errors"]) == 5000 and unknown[1]["error"]["type"] == "invalid_prompt"
    assert len(wide[1]["node_errors"]) == 4999  # accepted with its one valid output, the others reported
    assert time.monotonic() - started < 60
    assert engine.wait_idle(60)
    accepted = [body["prompt_id"] for status, body, _ in answers if status == 200]
    assert all(engine.history_item(pid) for pid in accepted)  # every accepted prompt ended, none vanished
    errors = [m[1] for pid in accepted for m in engine.history_item(pid)[pid]["status"]["messages"]
              if m[0] == "execution_error"]
    # nodes may fail on constants given for socket inputs (as in ComfyUI), but the executor itself never does
    assert "graph.DependencyCycleError" in {e["exception_type"] for e in errors}
    assert not {e["exception_type"] for e in errors} & {"RecursionError", "KeyError"}
    assert_still_serving(base, "after-prompt-fuzz")


# --- websocket -----------------------------------------------------------------------------------------------------

BAD_FRAMES: list[str | bytes] = [
    b"\x00\x01\x02", b"", "{nope", "[1,2]", "null", "1e999", '"text"', "\x00", "x" * (2 << 20),
    '{"type":"feature_flags","data":[1]}', '{"type":"feature_flags","data":null}', '{"type":5,"data":{}}',
    '{"type":"feature_flags","data":{"supports_preview_metadata":{"a":[1]}}}', '{"type":"zzz","data":{}}',
    '{"type":"feature_flags","data":{"supports_preview_metadata":1e999}}', '{"type":"feature_flags"}',
    '{"type":"feature_flags","data":{"a":"' + "y" * (1 << 20) + '"}}', "[" * 5000,
    '{"type":"feature_flags","data":{"a":' + "[" * 5000 + "]" * 5000 + "}}",
]


def test_malformed_websocket_messages_leave_the_hub_serving(served):
    app, _, base = served
    with connect(ws_url(base, "bystander")) as bystander:
        assert json.loads(bystander.recv(timeout=10))["type"] == "status"
        for i, frame in enumerate(BAD_FRAMES):
            with connect(ws_url(base, f"bad{i}"), max_size=None) as ws:
                assert json.loads(ws.recv(timeout=10))["type"] == "status"
                ws.send(frame)
                ws.send("{}" if i % 2 else b"\xff")  # and something after it
                ws.ping().wait(10)  # the socket still answers: the server has read past the bad frames
                assert f"bad{i}" in app.state.hub.client_ids, f"frame #{i} ended the connection"
        for burst in range(3):  # a flood of messages on one socket
            with connect(ws_url(base, f"flood{burst}")) as ws:
                ws.recv(timeout=10)
                for _ in range(300):
                    ws.send('{"type":"feature_flags","data":{}}')
                ws.ping().wait(10)
        assert_still_serving(base, "after-ws-fuzz")
        assert app.state.hub.client_ids == ["bystander"] or wait_for_clients(app, ["bystander"])
        bystander.ping().wait(10)


def wait_for_clients(app: Any, expected: list[str], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while sorted(app.state.hub.client_ids) != sorted(expected):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.parametrize("raw_id, sid", [("%00", "\x00"), ("a%20b", "a b"), ("%C3%A9%F0%9F%98%80", "é😀"),
                                         ("..%2F..%2Fetc", "../../etc"), ("%ff", "\ufffd"), ("<script>", "<script>"),
                                         ("x" * 2000, "x" * 2000), ("a&clientId=b", "a")])
def test_odd_client_ids_are_echoed_and_routed(served, raw_id, sid):
    _, _, base = served
    with connect(ws_url(base, raw_id)) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello["data"]["sid"] == sid
        queued = http(base, "/prompt", json.dumps({"prompt": steps_prompt(value=3, steps=1),
                                                   "client_id": sid}).encode())
        while True:  # this client's own events reach it under that odd id
            message = json.loads(ws.recv(timeout=30))
            if message["type"] == "executed":
                assert message["data"]["prompt_id"] == queued["prompt_id"]
                break


def test_rapid_connect_and_disconnect_leaves_no_clients_behind(served):
    app, _, base = served
    host, port = base.removeprefix("http://").split(":")
    handshake = ("GET /ws?clientId=r{} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    for i in range(150):  # half-open handshakes, dropped before, during or after the upgrade answer
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(handshake.format(i).encode()[: None if i % 3 else 40])
            if i % 3 == 1:
                sock.recv(16)
    for i in range(50):
        with connect(ws_url(base, f"quick{i}")):
            pass
    assert wait_for_clients(app, [])
    assert_still_serving(base, "after-rapid-connects")
    assert wait_for_clients(app, [])
