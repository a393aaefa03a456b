"""The /ws websocket against a real uvicorn server on 127.0.0.1: ComfyUI's documented client flow, a third-party
ComfyUI client package, previews and feature flags, reconnects, slow clients and the origin guard."""
from __future__ import annotations

import base64
import io
import json
import os
import socket
import struct
import threading
import time
import urllib.parse
import urllib.request

import pytest
from comfy_core.asgi import create_app
from fixtures_asgi import Gate, image_prompt, make_engine, running_server, steps_prompt
from PIL import Image
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect


def http_json(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def ws_url(base, client_id):
    return base.replace("http://", "ws://") + f"/ws?clientId={client_id}"


def read_until_done(ws, prompt_id, timeout=30):
    """ComfyUI's script_examples/websockets_api_example.py loop: until executing{node: null} for our prompt."""
    messages = []
    deadline = time.monotonic() + timeout
    while True:
        frame = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(frame, bytes):
            messages.append(("binary", frame))
            continue
        message = json.loads(frame)
        messages.append((message["type"], message["data"]))
        if message["type"] == "executing" and message["data"]["node"] is None \
                and message["data"]["prompt_id"] == prompt_id:
            return messages


@pytest.fixture
def engine(tmp_path):
    eng = make_engine(tmp_path, preview_method="latent2rgb")
    yield eng
    eng.close()


@pytest.fixture
def app(engine):
    return create_app(engine, owns_engine=True)


@pytest.fixture
def server(app):
    with running_server(app) as base:
        yield base


def test_documented_websocket_client_flow(server, engine, app):
    with connect(ws_url(server, "doc-client")) as ws:
        hello = json.loads(ws.recv(timeout=10))
        assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                    "sid": "doc-client"}}
        queued = http_json(server + "/prompt", {"prompt": image_prompt("ws"), "client_id": "doc-client"})
        prompt_id = queued["prompt_id"]
        messages = read_until_done(ws, prompt_id)
        assert app.state.hub.client_ids == ["doc-client"]
    deadline = time.monotonic() + 10
    while app.state.hub.client_ids and time.monotonic() < deadline:  # a closed socket is forgotten
        time.sleep(0.02)
    assert app.state.hub.client_ids == []
    types = [t for t, _ in messages]
    assert types.index("execution_start") < types.index("executing") < types.index("executed") \
        < types.index("execution_success") < len(types) - 1
    executed = [d for t, d in messages if t == "executed"]
    assert executed == [{"node": "2", "display_node": "2", "prompt_id": prompt_id,
                         "output": {"images": [{"filename": "ws_00001_.png", "subfolder": "", "type": "output"}]}}]
    assert {d["node"] for t, d in messages if t == "executing"} == {"1", "2", None}
    history = http_json(f"{server}/history/{prompt_id}")[prompt_id]
    for node_output in history["outputs"].values():
        for image in node_output["images"]:
            with urllib.request.urlopen(f"{server}/view?{urllib.parse.urlencode(image)}", timeout=30) as response:
                assert response.headers["Content-Type"] == "image/png"
                with Image.open(io.BytesIO(response.read())) as img:
                    assert img.size == (16, 8)


def test_third_party_client_comfy_api_simplified(server, engine, tmp_path):
    api_module = pytest.importorskip("comfy_api_simplified")
    api = api_module.ComfyApiWrapper(server)
    workflow = api_module.ComfyWorkflowWrapper(image_prompt())
    workflow.set_node_param("Save Image", "filename_prefix", "thirdparty")
    workflow.set_node_param("Empty Image", "width", 24)
    results = api.queue_and_wait_images(workflow, "Save Image")
    assert list(results) == ["thirdparty_00001_.png"]
    with Image.open(io.BytesIO(results["thirdparty_00001_.png"])) as img:
        assert img.size == (24, 8)
    source = tmp_path / "upload.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(source)
    assert api.upload_image(source, subfolder="tp") == {"name": "upload.png", "subfolder": "tp", "type": "input"}
    assert (engine.storage.root("input") / "tp" / "upload.png").is_file()
    assert api.get_queue() == {"queue_running": [], "queue_pending": []}
    assert "EmptyImage" in api.get_object_info("EmptyImage")
    assert api.get_system_stats()["devices"][0]["type"] == "cpu"
    api.interrupt()


def test_previews_binary_frames_and_feature_flags(server, engine):
    with connect(ws_url(server, "plain")) as plain, connect(ws_url(server, "meta")) as meta:
        meta.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        assert json.loads(plain.recv(timeout=10))["type"] == "status"
        assert json.loads(meta.recv(timeout=10))["type"] == "status"
        flags = json.loads(meta.recv(timeout=10))
        assert flags == {"type": "feature_flags",
                         "data": {"supports_preview_metadata": True, "max_upload_size": 104857600.0}}
        # no client_id: ComfyUI broadcasts progress and previews to every socket
        prompt_id = http_json(server + "/prompt", {"prompt": steps_prompt(7, steps=2, preview_size=16)})["prompt_id"]
        assert engine.wait(prompt_id, 30) is not None

        def frames(ws):
            found = []
            while len(found) < 2:
                frame = ws.recv(timeout=10)
                if isinstance(frame, bytes):
                    found.append(frame)
            return found

        for frame in frames(plain):
            assert struct.unpack(">II", frame[:8]) == (1, 1) and frame[8:10] == b"\xff\xd8"
        for frame in frames(meta):
            kind, length = struct.unpack(">II", frame[:8])
            info = json.loads(frame[8:8 + length])
            assert kind == 4 and frame[8 + length:8 + length + 2] == b"\xff\xd8"
            assert info == {"node_id": "1", "prompt_id": prompt_id, "display_node_id": "1", "parent_node_id": None,
                            "real_node_id": "1", "image_type": "image/jpeg"}


def test_reconnect_resumes_and_replaced_socket_goes_quiet(server, engine):
    gate = Gate()
    engine.register_nodes({"AsgiGate": gate.node_class})
    gated = {"1": {"class_type": "AsgiGate", "inputs": {"value": 5}}}
    with connect(ws_url(server, "again")) as first:
        first.recv(timeout=10)
        prompt_id = http_json(server + "/prompt", {"prompt": gated, "client_id": "again"})["prompt_id"]
        assert gate.entered.wait(10)
    with connect(ws_url(server, "again")) as second:
        assert json.loads(second.recv(timeout=10))["data"]["sid"] == "again"
        assert json.loads(second.recv(timeout=10)) == {"type": "executing", "data": {"node": "1"}}
        with connect(ws_url(server, "again")) as third:  # replaces `second` for sid "again"
            json.loads(third.recv(timeout=10))
            json.loads(third.recv(timeout=10))  # executing node 1 again
            gate.release()
            messages = read_until_done(third, prompt_id)
            assert ("executed", {"node": "1", "display_node": "1", "output": {"text": ["5"]},
                                 "prompt_id": prompt_id}) in messages
            with pytest.raises(TimeoutError):  # the replaced socket is still open but gets nothing more
                second.recv(timeout=0.5)


def test_slow_client_neither_stalls_engine_nor_other_clients(engine):
    app = create_app(engine, owns_engine=True, ws_max_buffer=32, ws_lossy_buffer=4)
    hub = app.state.hub
    with running_server(app) as base:
        slow = stalled_websocket(base, "slow")
        with connect(ws_url(base, "fast"), max_queue=None) as fast:
            received: list = []
            threading.Thread(target=drain, args=(fast, received), daemon=True).start()
            # 60 incompressible ~0.3 MB previews, broadcast (no client_id): lossy, dropped for the stalled socket
            big = http_json(base + "/prompt", {"prompt": steps_prompt(1, steps=60, preview_size=512)})["prompt_id"]
            # then ~1 MB `executed` messages for the stalled client: its buffer overflows and it is disconnected
            heavy = [http_json(base + "/prompt", {"prompt": steps_prompt(10 + i, ui_bytes=1_000_000),
                                                  "client_id": "slow"})["prompt_id"] for i in range(8)]
            last = http_json(base + "/prompt", {"prompt": steps_prompt(2), "client_id": "fast"})["prompt_id"]
            for prompt_id in [big, *heavy, last]:
                assert engine.wait(prompt_id, 60)["status"]["status_str"] == "success"
            done = {"type": "executing", "data": {"node": None, "prompt_id": last}}
            deadline = time.monotonic() + 30
            while done not in received and time.monotonic() < deadline:
                time.sleep(0.02)
            assert done in received
            assert [m["data"]["output"] for m in received if isinstance(m, dict) and m["type"] == "executed"] \
                == [{"text": ["2"]}]
            assert hub.client_ids == ["fast"] and hub.evictions == 1 and hub.dropped_messages > 0
        # once the stalled client reads again it finds its connection closed by the server
        # once the stalled client reads again it finds the close frame with code 1013 (try again later)
        slow.settimeout(30)
        tail = b""
        while not tail.endswith(b"\x88\x02\x03\xf5"):
            chunk = slow.recv(1 << 20)
            assert chunk, "connection ended without a close frame"
            tail = (tail + chunk)[-16:]
        slow.close()


def stalled_websocket(base, client_id):
    """A websocket client that completes the handshake and then never reads; a tiny receive buffer keeps the
    kernel from absorbing what the server sends (a client library would keep reading in the background)."""
    port = int(base.rsplit(":", 1)[1])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101")
    return sock


def drain(ws, into):
    """Read every frame into `into` (JSON decoded) until the socket closes."""
    try:
        while True:
            frame = ws.recv()
            into.append(frame if isinstance(frame, bytes) else json.loads(frame))
    except ConnectionClosed:
        pass


def test_websocket_origin_guard(server):
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url(server, "x"), origin="http://evil.example")
    assert refused.value.response.status_code == 403
    with connect(ws_url(server, "ok"), origin=server) as ws:
        assert json.loads(ws.recv(timeout=10))["data"]["sid"] == "ok"


def test_mounted_app_websocket_on_real_server(engine):
    from starlette.applications import Starlette
    from starlette.routing import Mount

    comfy = create_app(engine)
    outer = Starlette(routes=[Mount("/comfy", app=comfy)], lifespan=lambda app: comfy.router.lifespan_context(comfy))
    engine.start()
    with running_server(outer) as base:
        with connect(base.replace("http://", "ws://") + "/comfy/api/ws?clientId=pre") as ws:
            assert json.loads(ws.recv(timeout=10))["data"]["sid"] == "pre"
            prompt_id = http_json(base + "/comfy/prompt", {"prompt": steps_prompt(3), "client_id": "pre"})["prompt_id"]
            messages = read_until_done(ws, prompt_id)
        assert [d["value"] for t, d in messages if t == "progress"] == [1, 2, 3]
