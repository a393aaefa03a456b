"""HTTP routes of comfy_core.asgi against a real engine (Starlette TestClient): shapes, status codes, refusals."""
from __future__ import annotations

import io
import struct

import msgspec
import pytest
from comfy_core.asgi import create_app
from fixtures_asgi import Gate, image_prompt, make_engine, png_bytes, steps_prompt
from PIL import Image
from starlette.testclient import TestClient


@pytest.fixture
def engine(tmp_path):
    eng = make_engine(tmp_path)
    yield eng
    eng.close()


@pytest.fixture
def client(engine):
    with TestClient(create_app(engine, owns_engine=True)) as c:
        yield c


def run_prompt(client, engine, prompt, **body):
    r = client.post("/prompt", json={"prompt": prompt, **body})
    assert r.status_code == 200, r.text
    prompt_id = r.json()["prompt_id"]
    assert engine.wait(prompt_id, 30) is not None
    return prompt_id


# --- prompt, queue, history ------------------------------------------------------------------------------------------


def test_prompt_history_view_round_trip(client, engine):
    assert client.post("/prompt", json={"prompt": image_prompt("n"), "extra_data": None}).status_code == 200
    r = client.post("/prompt", json={"prompt": image_prompt(), "client_id": "c1", "extra_data": {"k": 1}})
    body = r.json()
    assert r.status_code == 200 and set(body) == {"prompt_id", "number", "node_errors"}
    assert body["node_errors"] == {} and body["number"] == 1
    assert engine.wait(body["prompt_id"], 30) is not None
    history = client.get(f"/history/{body['prompt_id']}").json()
    entry = history[body["prompt_id"]]
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    assert entry["prompt"][1] == body["prompt_id"] and entry["prompt"][3] == {"k": 1, "client_id": "c1"}
    image = entry["outputs"]["2"]["images"][0]
    assert image == {"filename": "asgi_00001_.png", "subfolder": "", "type": "output"}
    r = client.get("/view", params=image)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["content-disposition"] == 'filename="asgi_00001_.png"'
    with Image.open(io.BytesIO(r.content)) as img:
        assert img.size == (16, 8) and img.getpixel((0, 0))[:3] == (255, 128, 0)
    assert client.get("/history/unknown-id").json() == {}


def test_api_aliases_and_head(client, engine):
    prompt_id = run_prompt(client, engine, image_prompt())
    assert client.get("/api/history").json().keys() == client.get("/history").json().keys() == {prompt_id}
    assert client.get("/api/prompt").json() == {"exec_info": {"queue_remaining": 0}}
    head = client.head("/api/object_info/EmptyImage")
    assert head.status_code == 200 and head.content == b""
    assert client.head("/view", params={"filename": "asgi_00001_.png"}).status_code == 200


def test_prompt_client_errors_are_400_with_comfyui_shape(client):
    def error_of(response):
        assert response.status_code == 400, response.text
        body = response.json()
        assert set(body) == {"error", "node_errors"} and set(body["error"]) == {"type", "message", "details",
                                                                                 "extra_info"}
        return body["error"]

    assert error_of(client.post("/prompt", json={"client_id": "x"}))["type"] == "no_prompt"
    assert error_of(client.post("/prompt", json={"prompt": None}))["message"] == "No prompt provided"
    bad_json = error_of(client.post("/prompt", content=b'{"prompt": {'))
    assert bad_json["type"] == "invalid_json" and "JSON" in bad_json["message"]
    assert error_of(client.post("/prompt", content=b""))["type"] == "invalid_json"
    wrong = error_of(client.post("/prompt", json={"prompt": "text"}))
    assert wrong["type"] == "invalid_request" and "$.prompt" in wrong["message"]
    assert error_of(client.post("/prompt", json={"prompt": {}, "number": "high"}))["type"] == "invalid_request"
    unknown = error_of(client.post("/prompt", json={"prompt": {"1": {"class_type": "Nope", "inputs": {}}}}))
    assert unknown["type"] == "invalid_prompt" and "Nope" in unknown["message"]
    no_out = error_of(client.post("/prompt", json={"prompt": {"1": image_prompt()["1"]}}))
    assert no_out["type"] == "prompt_no_outputs"
    invalid = client.post("/prompt", json={"prompt": {"1": {"class_type": "AsgiSteps", "inputs": {"value": -5}}}})
    err = error_of(invalid)
    assert err["type"] == "prompt_outputs_failed_validation"
    assert invalid.json()["node_errors"]["1"]["class_type"] == "AsgiSteps"


def test_prompt_fields_number_front_prompt_id_partial_targets(client, engine):
    gate = Gate()
    engine.register_nodes({"AsgiGate": gate.node_class})
    blocker = client.post("/prompt", json={"prompt": {"9": {"class_type": "AsgiGate", "inputs": {"value": 0}}}})
    assert gate.entered.wait(10)
    a = client.post("/prompt", json={"prompt": image_prompt("a"), "number": 7.5}).json()
    b = client.post("/prompt", json={"prompt": image_prompt("b"), "front": True}).json()
    c = client.post("/prompt", json={"prompt": image_prompt("c"), "prompt_id": 1234}).json()
    assert a["number"] == 7.5 and b["number"] < 0 and c["prompt_id"] == "1234"
    two = {**image_prompt("d"), "3": steps_prompt(1)["1"]}
    d = client.post("/prompt", json={"prompt": two, "partial_execution_targets": ["3"]}).json()
    queue = client.get("/queue").json()
    assert [item[1] for item in queue["queue_running"]] == [blocker.json()["prompt_id"]]
    pending = {item[1]: item for item in queue["queue_pending"]}
    assert set(pending) == {a["prompt_id"], b["prompt_id"], "1234", d["prompt_id"]}
    assert pending[d["prompt_id"]][4] == ["3"] and len(pending["1234"]) == 5
    assert client.get("/prompt").json() == {"exec_info": {"queue_remaining": 5}}
    gate.release()
    assert engine.wait(d["prompt_id"], 30)["outputs"] == {"3": {"text": ["1"]}}


def test_queue_delete_clear_and_bad_bodies(client, engine):
    gate = Gate()
    engine.register_nodes({"AsgiGate": gate.node_class})
    client.post("/prompt", json={"prompt": {"1": {"class_type": "AsgiGate", "inputs": {"value": 0}}}})
    assert gate.entered.wait(10)
    ids = [client.post("/prompt", json={"prompt": steps_prompt(i)}).json()["prompt_id"] for i in range(3)]
    r = client.post("/queue", json={"delete": [ids[0], "not-queued"]})
    assert r.status_code == 200 and r.content == b""
    assert sorted(i[1] for i in client.get("/queue").json()["queue_pending"]) == sorted(ids[1:])
    assert client.post("/api/queue", json={"clear": True}).status_code == 200
    queue = client.get("/queue").json()
    assert queue["queue_pending"] == [] and len(queue["queue_running"]) == 1  # the running prompt is untouched
    assert client.post("/queue", content=b"nope").status_code == 400
    assert client.post("/queue", json={"delete": "abc"}).status_code == 400
    gate.release()


def test_interrupt_accepts_any_body_and_targets_running_prompt(client, engine):
    gate = Gate()
    engine.register_nodes({"AsgiGate": gate.node_class})

    def start_gate(value):
        r = client.post("/prompt", json={"prompt": {"1": {"class_type": "AsgiGate", "inputs": {"value": value}}}})
        assert gate.entered.wait(10)
        gate.entered.clear()
        return r.json()["prompt_id"]

    def interrupted(prompt_id):
        entry = engine.wait(prompt_id, 10)
        return entry["status"]["status_str"] == "error" and "execution_interrupted" in [
            m[0] for m in entry["status"]["messages"]]

    first = start_gate(1)
    assert client.post("/interrupt", json={"prompt_id": "someone-else"}).status_code == 200
    assert engine.wait(first, 0.3) is None  # another prompt's id: a no-op
    assert client.post("/interrupt", content=b"not json").status_code == 200  # no prompt_id: interrupt all
    assert interrupted(first)
    second = start_gate(2)
    assert client.post("/api/interrupt", json={"prompt_id": second}).status_code == 200
    assert interrupted(second)
    third = start_gate(3)
    assert client.get("/interrupt").status_code == 200
    assert interrupted(third)
    assert client.post("/interrupt").status_code == 200  # idle: still fine


def test_free(client):
    assert client.post("/free", json={"unload_models": False, "free_memory": True}).status_code == 200
    assert client.post("/free", content=b"{").status_code == 400
    assert client.post("/free", json={"unload_models": "maybe"}).status_code == 400


def test_history_paging_delete_clear_and_bad_ints(client, engine):
    ids = [run_prompt(client, engine, steps_prompt(i)) for i in range(4)]
    assert list(client.get("/history").json()) == ids
    assert list(client.get("/history", params={"max_items": 2}).json()) == ids[-2:]
    assert list(client.get("/history", params={"max_items": 2, "offset": 1}).json()) == ids[1:3]
    assert client.get("/history", params={"offset": 10}).json() == {}
    for bad in ({"max_items": "x"}, {"offset": "1.5"}):
        r = client.get("/history", params=bad)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request"
    assert client.post("/history", json={"delete": [ids[0]]}).status_code == 200
    assert list(client.get("/history").json()) == ids[1:]
    assert client.post("/history", json={"clear": True}).status_code == 200
    assert client.get("/history").json() == {}
    assert client.post("/history", content=b"x").status_code == 400


# --- uploads -------------------------------------------------------------------------------------------------------


def upload(client, data, name="photo.png", route="/upload/image", **fields):
    return client.post(route, files={"image": (name, data, "image/png")}, data=fields)


def test_upload_image_naming_dedupe_overwrite(client, engine):
    first, other = png_bytes(color=(1, 2, 3, 255)), png_bytes(color=(9, 9, 9, 255))
    assert upload(client, first).json() == {"name": "photo.png", "subfolder": "", "type": "input"}
    assert upload(client, first).json()["name"] == "photo.png"  # identical bytes: reused
    assert upload(client, other).json()["name"] == "photo (1).png"
    assert upload(client, other, overwrite="true").json()["name"] == "photo.png"
    assert (engine.storage.root("input") / "photo.png").read_bytes() == other
    r = upload(client, first, subfolder="a/b", type="temp")
    assert r.json() == {"name": "photo.png", "subfolder": "a/b", "type": "temp"}
    assert (engine.storage.root("temp") / "a" / "b" / "photo.png").read_bytes() == first


def test_upload_refusals(client, engine, tmp_path):
    data = png_bytes()
    assert upload(client, data, type="secrets").status_code == 400  # ComfyUI: 500
    assert upload(client, data, name="../escape.png").status_code == 400
    assert upload(client, data, subfolder="../../outside").status_code == 403
    assert upload(client, data, subfolder="/etc").status_code == 403
    assert client.post("/upload/image", data={"subfolder": "x"}).status_code == 400  # no file part
    assert client.post("/upload/image", files={"image": ("", data)}).status_code == 400
    assert client.post("/upload/image", content=b"junk",
                       headers={"content-type": "multipart/form-data; boundary=zz"}).status_code == 400
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "outside").exists()


def test_upload_mask_replaces_alpha_and_keeps_text(client, engine):
    original = png_bytes(8, 8, "RGBA", (200, 100, 50, 255), workflow="wf")
    upload(client, original, name="orig.png", type="output")
    mask = png_bytes(8, 8, "RGBA", (0, 0, 0, 40))
    ref = msgspec.json.encode({"filename": "orig.png"}).decode()  # type defaults to output
    r = upload(client, mask, name="masked.png", route="/upload/mask", original_ref=ref)
    assert r.status_code == 200 and r.json() == {"name": "masked.png", "subfolder": "", "type": "input"}
    with Image.open(engine.storage.root("input") / "masked.png") as img:
        assert img.mode == "RGBA" and img.getpixel((3, 3)) == (200, 100, 50, 40) and img.text["workflow"] == "wf"


def test_upload_mask_refusals(client, engine):
    upload(client, png_bytes(8, 8), name="orig.png", type="output")
    mask = png_bytes(8, 8)
    bad_ref = msgspec.json.encode({"filename": "../../orig.png"}).decode()
    r = upload(client, mask, name="m1.png", route="/upload/mask", original_ref=bad_ref)
    assert r.status_code == 200 and not (engine.storage.root("input") / "m1.png").exists()  # ComfyUI semantics
    assert upload(client, mask, name="m2.png", route="/upload/mask", original_ref="{nope").status_code == 400
    assert upload(client, mask, name="m3.png", route="/upload/mask").status_code == 400  # no original_ref
    good_ref = msgspec.json.encode({"filename": "orig.png", "type": "output"}).decode()
    wrong_size = upload(client, png_bytes(4, 4), name="m4.png", route="/upload/mask", original_ref=good_ref)
    assert wrong_size.status_code == 400  # ComfyUI: 500
    not_image = upload(client, b"definitely not a png", name="m5.png", route="/upload/mask", original_ref=good_ref)
    assert not_image.status_code == 400


def test_body_limits_413(engine):
    with TestClient(create_app(engine, max_upload_bytes=2000, max_body_bytes=500)) as c:
        assert upload(c, b"x" * 5000).status_code == 413
        assert upload(c, png_bytes()).status_code == 200
        assert c.post("/prompt", content=b"{" + b" " * 600 + b"}").status_code == 413

        def chunks():  # no Content-Length: the limit is enforced while streaming
            for _ in range(10):
                yield b" " * 100

        assert c.post("/prompt", content=chunks()).status_code == 413
        assert c.get("/features").json()["max_upload_size"] == 2000.0


# --- /view ---------------------------------------------------------------------------------------------------------


def test_view_resolution_rules(client, engine):
    (engine.storage.root("output") / "sub").mkdir()
    (engine.storage.root("output") / "sub" / "a.png").write_bytes(png_bytes())
    (engine.storage.root("input") / "i.png").write_bytes(png_bytes())
    assert client.get("/view").status_code == 404
    assert client.get("/view", params={"filename": "a.png", "subfolder": "sub"}).status_code == 200
    # paths belong in subfolder: the name is reduced to its basename
    assert client.get("/view", params={"filename": "sub/a.png"}).status_code == 404
    assert client.get("/view", params={"filename": "zzz/a.png", "subfolder": "sub"}).status_code == 200
    assert client.get("/view", params={"filename": "i.png [input]"}).status_code == 200
    assert client.get("/view", params={"filename": "i.png", "type": "input"}).status_code == 200
    assert client.get("/view", params={"filename": "../i.png"}).status_code == 400
    assert client.get("/view", params={"filename": "/etc/passwd"}).status_code == 400
    assert client.get("/view", params={"filename": " [input]"}).status_code == 400
    assert client.get("/view", params={"filename": "a.png", "type": "models"}).status_code == 400
    assert client.get("/view", params={"filename": "a.png", "subfolder": "../../"}).status_code == 403
    assert client.get("/view", params={"filename": "passwd", "subfolder": "/etc"}).status_code == 403
    assert client.get("/view", params={"filename": "missing.png"}).status_code == 404


def test_view_symlink_out_of_folder_is_refused(client, engine, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    (engine.storage.root("output") / "link.txt").symlink_to(secret)
    r = client.get("/view", params={"filename": "link.txt"})
    assert r.status_code == 403 and b"secret" not in r.content


def test_view_preview_and_channels(client, engine):
    (engine.storage.root("output") / "x.png").write_bytes(png_bytes(6, 4, "RGBA", (250, 10, 10, 77)))
    jpeg = client.get("/view", params={"filename": "x.png", "preview": "jpeg;80"})
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content[:2] == b"\xff\xd8"
    assert jpeg.headers["content-disposition"] == 'filename="x.png"'
    webp = client.get("/view", params={"filename": "x.png", "preview": "jpeg;80", "channel": "rgba"})
    assert webp.headers["content-type"] == "image/webp" and webp.content[8:12] == b"WEBP"
    assert client.get("/view", params={"filename": "x.png", "preview": "gif"}).headers["content-type"] == "image/webp"
    assert client.get("/view", params={"filename": "x.png", "preview": "jpeg;500"}).status_code == 200
    rgb = client.get("/view", params={"filename": "x.png", "channel": "rgb"})
    with Image.open(io.BytesIO(rgb.content)) as img:
        assert rgb.headers["content-type"] == "image/png" and img.mode == "RGB" and img.getpixel((0, 0)) == (250, 10, 10)
    alpha = client.get("/view", params={"filename": "x.png", "channel": "a"})
    with Image.open(io.BytesIO(alpha.content)) as img:
        assert img.mode == "RGBA" and img.getpixel((1, 1)) == (0, 0, 0, 77)


def test_view_raw_content_types_range_and_undecodable(client, engine):
    out = engine.storage.root("output")
    (out / "page.html").write_text("<script>alert(1)</script>")
    (out / "data.bin").write_bytes(bytes(range(256)))
    (out / "fake.png").write_bytes(b"not an image")
    (out / "bild é.png").write_bytes(png_bytes())
    html = client.get("/view", params={"filename": "page.html"})
    assert html.headers["content-type"] == "application/octet-stream"
    assert html.headers["x-content-type-options"] == "nosniff"
    part = client.get("/view", params={"filename": "data.bin"}, headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == bytes(range(10, 20))
    assert client.get("/view", params={"filename": "fake.png", "preview": "webp;50"}).status_code == 400
    assert client.get("/view", params={"filename": "fake.png", "channel": "a"}).status_code == 400
    unicode_name = client.get("/view", params={"filename": "bild é.png"})
    assert unicode_name.status_code == 200
    assert "filename*=UTF-8''bild%20%C3%A9.png" in unicode_name.headers["content-disposition"]


# --- metadata routes -----------------------------------------------------------------------------------------------


def write_safetensors(path, metadata):
    header = {"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = msgspec.json.encode(header)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0\0\0\0")


def test_view_metadata(client, engine):
    models = engine.config.models_dir
    from pathlib import Path

    write_safetensors(Path(models) / "loras" / "style.safetensors", {"ss_name": "style", "k": "v"})
    write_safetensors(Path(models) / "loras" / "bare.safetensors", None)
    (Path(models) / "loras" / "huge.safetensors").write_bytes(struct.pack("<Q", 2 * 1024 * 1024) + b"{}")
    r = client.get("/view_metadata/loras", params={"filename": "style.safetensors"})
    assert r.status_code == 200 and r.json() == {"ss_name": "style", "k": "v"}
    assert client.post("/api/view_metadata/loras", params={"filename": "style.safetensors"}).status_code == 200
    for folder, name in (("loras", "bare.safetensors"), ("loras", "huge.safetensors"), ("loras", "nope.safetensors"),
                         ("loras", "style.ckpt"), ("nofolder", "style.safetensors")):
        assert client.get(f"/view_metadata/{folder}", params={"filename": name}).status_code == 404, (folder, name)
    assert client.get("/view_metadata/loras").status_code == 404
    assert client.get("/view_metadata/loras", params={"filename": "../loras/style.safetensors"}).status_code == 400


def test_object_info_models_embeddings_features_stats(client, engine):
    from pathlib import Path

    info = client.get("/object_info").json()
    assert {"EmptyImage", "SaveImage", "AsgiSteps"} <= set(info)
    assert info["SaveImage"]["output_node"] is True and info["SaveImage"]["input_order"]["required"] == [
        "images", "filename_prefix"]
    assert client.get("/object_info/EmptyImage").json() == {"EmptyImage": info["EmptyImage"]}
    assert client.get("/object_info/NoSuchNode").json() == {}
    models = Path(engine.config.models_dir)
    for rel in ("checkpoints/b.safetensors", "checkpoints/sub/a.ckpt", "checkpoints/readme.txt",
                "embeddings/easy.pt", "embeddings/style/foo.safetensors"):
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        (models / rel).write_bytes(b"0")
    kinds = client.get("/models").json()
    assert kinds[:4] == ["checkpoints", "configs", "loras", "vae"] and "clip" not in kinds
    assert client.get("/models/checkpoints").json() == ["b.safetensors", "sub/a.ckpt"]
    assert client.get("/models/clip").status_code == 404 and client.get("/models/unet").status_code == 404
    assert client.get("/models/nonsense").status_code == 404
    assert client.get("/embeddings").json() == ["easy", "style/foo"]
    assert client.get("/features").json() == {"supports_preview_metadata": True, "max_upload_size": 104857600.0}
    stats = client.get("/system_stats").json()
    assert set(stats) == {"system", "devices"} and len(stats["devices"]) == 1
    assert stats["system"]["comfyui_version"] == "0.3.64"


def test_extensions_listing_and_safe_serving(tmp_path):
    pkg = tmp_path / "custom_nodes" / "my_pack"
    (pkg / "web" / "lib").mkdir(parents=True)
    (pkg / "__init__.py").write_text("NODE_CLASS_MAPPINGS = {}\nWEB_DIRECTORY = './web'\n")
    (pkg / "web" / "main.js").write_text("console.log('hi')")
    (pkg / "web" / "lib" / "util.js").write_text("export const x = 1")
    (pkg / "web" / "style.css").write_text("body{}")
    (tmp_path / "secret.js").write_text("secret")
    (pkg / "web" / "link.js").symlink_to(tmp_path / "secret.js")
    engine = make_engine(tmp_path, custom_nodes_dirs=[str(tmp_path / "custom_nodes")])
    with TestClient(create_app(engine, owns_engine=True)) as c:
        urls = c.get("/extensions").json()
        assert "/extensions/my_pack/main.js" in urls and "/extensions/my_pack/lib/util.js" in urls
        r = c.get("/extensions/my_pack/lib/util.js")
        assert r.status_code == 200 and r.text == "export const x = 1" and r.headers["cache-control"] == "no-cache"
        assert c.get("/extensions/my_pack/link.js").status_code == 404  # symlink out of the web dir
        assert c.get("/extensions/my_pack/..%2F__init__.py").status_code == 404
        assert c.get("/extensions/my_pack/../../secret.js").status_code == 404
        assert c.get("/extensions/other/main.js").status_code == 404


# --- origin guard, CORS, mounting, two engines ---------------------------------------------------------------------


def test_origin_guard_and_cors(engine):
    with TestClient(create_app(engine), base_url="http://127.0.0.1:8188") as c:
        evil = c.post("/prompt", json={"prompt": image_prompt()}, headers={"Origin": "http://evil.example"})
        assert evil.status_code == 403 and evil.content == b""
        assert c.get("/queue", headers={"Origin": "http://127.0.0.1:9999"}).status_code == 403
        assert c.get("/queue", headers={"Origin": "http://127.0.0.1:8188"}).status_code == 200
        assert c.get("/queue", headers={"Origin": "http://127.0.0.1"}).status_code == 200  # no port: hosts compared
        assert c.get("/queue", headers={"Origin": "http://evil.example", "Host": "comfy.lan"}).status_code == 200
    with TestClient(create_app(engine, cors_origins=["*"]), base_url="http://127.0.0.1:8188") as c:
        r = c.get("/queue", headers={"Origin": "http://evil.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] in ("*", "http://evil.example")
        pre = c.options("/prompt", headers={"Origin": "http://a.example", "Access-Control-Request-Method": "POST"})
        assert pre.status_code == 200 and "POST" in pre.headers["access-control-allow-methods"]


def test_mounted_under_prefix(engine):
    from starlette.applications import Starlette
    from starlette.routing import Mount

    comfy = create_app(engine)
    outer = Starlette(routes=[Mount("/comfy", app=comfy)],
                      lifespan=lambda app: comfy.router.lifespan_context(comfy))
    engine.start()
    with TestClient(outer) as c:
        assert c.get("/queue").status_code == 404
        with c.websocket_connect("/comfy/ws?clientId=m1") as ws:
            assert ws.receive_json()["data"]["sid"] == "m1"
            r = c.post("/comfy/api/prompt", json={"prompt": image_prompt("mounted"), "client_id": "m1"})
            prompt_id = r.json()["prompt_id"]
            while True:
                msg = ws.receive_json()
                if msg["type"] == "executing" and msg["data"]["node"] is None:
                    break
        assert msg["data"]["prompt_id"] == prompt_id
        image = c.get(f"/comfy/history/{prompt_id}").json()[prompt_id]["outputs"]["2"]["images"][0]
        view = c.get("/comfy/view", params=image)
        assert view.status_code == 200 and view.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_apps_two_engines_in_one_process(tmp_path):
    e1, e2 = make_engine(tmp_path / "one"), make_engine(tmp_path / "two")
    with TestClient(create_app(e1, owns_engine=True)) as c1, TestClient(create_app(e2, owns_engine=True)) as c2:
        p1 = run_prompt(c1, e1, image_prompt("first"))
        p2 = run_prompt(c2, e2, image_prompt("second"))
        assert list(c1.get("/history").json()) == [p1] and list(c2.get("/history").json()) == [p2]
        assert c1.get("/view", params={"filename": "first_00001_.png"}).status_code == 200
        assert c2.get("/view", params={"filename": "first_00001_.png"}).status_code == 404
        assert (tmp_path / "two" / "output" / "second_00001_.png").is_file()
