"""User, settings, model browser, i18n/template and /internal routes over HTTP (Starlette TestClient), plus one
real-socket test that a subscribed websocket client receives `logs` messages."""
from __future__ import annotations

import io
import json
import logging
import os
import time

import pytest
from comfy_core.asgi import create_app
from fixtures_asgi import make_engine, running_server
from PIL import Image
from starlette.testclient import TestClient
from websockets.sync.client import connect


def build(tmp_path, **overrides):
    return make_engine(tmp_path, user_dir=str(tmp_path / "user"), custom_nodes_dirs=[str(tmp_path / "cn")],
                       **overrides)


@pytest.fixture
def engine(tmp_path):
    eng = build(tmp_path)
    yield eng
    eng.close()


@pytest.fixture
def client(engine):
    with TestClient(create_app(engine, owns_engine=True, max_upload_bytes=4096, max_body_bytes=1024)) as c:
        yield c


@pytest.fixture
def multi(tmp_path):
    eng = build(tmp_path, multi_user=True)
    with TestClient(create_app(eng, owns_engine=True)) as c:
        yield c
    eng.close()


PREFIXES = ("", "/api")


# --- users -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_users_single_user(client, engine, prefix):
    assert client.get(prefix + "/users").json() == {"storage": "server", "migrated": False}
    client.post(prefix + "/userdata/x.json", content=b"1")
    assert client.get(prefix + "/users").json() == {"storage": "server", "migrated": True}


def test_users_multi_user_and_unknown_users(multi):
    assert multi.get("/users").json() == {"storage": "server", "users": {}}
    r = multi.post("/api/users", json={"username": "Ann"})
    assert r.status_code == 200 and r.json().startswith("Ann_")
    user_id = r.json()
    assert multi.get("/users").json() == {"storage": "server", "users": {user_id: "Ann"}}
    dup = multi.post("/users", json={"username": "Ann"})
    assert dup.status_code == 400 and dup.json() == {"error": "Duplicate username."}
    assert multi.post("/users", json={"name": "x"}).status_code == 400
    # files are per user; an unknown or missing header is a 403
    assert multi.post("/userdata/a.json", content=b"A", headers={"Comfy-User": user_id}).status_code == 200
    assert multi.get("/userdata/a.json", headers={"Comfy-User": user_id}).content == b"A"
    assert multi.get("/userdata/a.json").status_code == 403
    assert multi.get("/settings", headers={"Comfy-User": "mallory"}).status_code == 403
    assert multi.get("/userdata", params={"dir": "."}, headers={"Comfy-User": "__system"}).status_code == 403


# --- user data files -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_userdata_round_trip(client, tmp_path, prefix):
    r = client.post(prefix + "/userdata/workflows%2Fa.json", content=b'{"nodes": []}')
    assert r.status_code == 200 and r.json() == "workflows/a.json"
    assert (tmp_path / "user" / "default" / "workflows" / "a.json").read_bytes() == b'{"nodes": []}'
    got = client.get(prefix + "/userdata/workflows%2Fa.json")
    assert got.status_code == 200 and got.content == b'{"nodes": []}'
    assert got.headers["content-type"].startswith("application/json")
    assert got.headers["x-content-type-options"] == "nosniff" and got.headers["content-disposition"] == "attachment"
    conflict = client.post(prefix + "/userdata/workflows%2Fa.json?overwrite=false", content=b"new")
    assert conflict.status_code == 409
    info = client.post(prefix + "/userdata/workflows%2Fa.json?full_info=true", content=b"new").json()
    assert info["path"] == "workflows/a.json" and info["size"] == 3 and isinstance(info["modified"], int)
    assert client.get(prefix + "/userdata", params={"dir": "workflows"}).json() == ["a.json"]
    moved = client.post(prefix + "/userdata/workflows%2Fa.json/move/workflows%2Fb.json")
    assert moved.status_code == 200 and moved.json() == "workflows/b.json"
    assert client.get(prefix + "/userdata/workflows%2Fa.json").status_code == 404
    assert client.delete(prefix + "/userdata/workflows%2Fb.json").status_code == 204
    assert client.delete(prefix + "/userdata/workflows%2Fb.json").status_code == 404
    assert client.head(prefix + "/userdata/missing.json").status_code == 404


def test_userdata_double_encoded_and_markup_files(client):
    assert client.post("/userdata/w%252Fc.json", content=b"c").json() == "w/c.json"  # decoded twice, as ComfyUI
    html = client.post("/userdata/page.html", content=b"<script>alert(1)</script>")
    assert html.status_code == 200
    r = client.get("/userdata/page.html")
    assert r.headers["content-type"] == "application/octet-stream" and r.headers["content-disposition"] == "attachment"
    client.post("/userdata/user.css", content=b"body{}")
    css = client.get("/userdata/user.css")
    assert css.headers["content-type"].startswith("text/css") and css.headers["content-disposition"] == "inline"


def test_userdata_move_rules(client):
    client.post("/userdata/a.json", content=b"A")
    client.post("/userdata/b.json", content=b"B")
    assert client.post("/userdata/a.json/move/b.json?overwrite=false").status_code == 409
    assert client.post("/userdata/nope.json/move/c.json").status_code == 404
    assert client.post("/userdata/a.json/move/..%2Fout.json").status_code == 403
    info = client.post("/userdata/a.json/move/b.json?full_info=true").json()
    assert info["path"] == "b.json" and info["size"] == 1
    assert client.get("/userdata/b.json").content == b"A"


@pytest.mark.parametrize("path", ["/userdata/..%2F..%2Fsecret.json", "/api/userdata/..%2Fusers.json",
                                  "/userdata/%2Fetc%2Fpasswd", "/userdata/a%2F..%2F..%2Fx.json",
                                  "/userdata/..%252Fx.json"])
def test_userdata_escapes_are_403(client, tmp_path, path):
    (tmp_path / "user").mkdir(exist_ok=True)
    (tmp_path / "user" / "users.json").write_text("{}")
    (tmp_path / "secret.json").write_text("s")
    assert client.get(path).status_code == 403
    assert client.post(path, content=b"x").status_code == 403
    assert client.delete(path).status_code == 403
    assert (tmp_path / "secret.json").read_text() == "s" and (tmp_path / "user" / "users.json").read_text() == "{}"


def test_userdata_nul_is_400_and_symlink_escape_is_403(client, tmp_path):
    assert client.get("/userdata/a%00b.json").status_code == 400
    root = tmp_path / "user" / "default"
    root.mkdir(parents=True)
    (tmp_path / "outside.json").write_text("o")
    os.symlink(tmp_path / "outside.json", root / "link.json")
    assert client.get("/userdata/link.json").status_code == 403


def test_userdata_body_limit_is_413(client):
    assert client.post("/userdata/big.json", content=b"x" * 5000).status_code == 413
    assert client.post("/userdata/ok.json", content=b"x" * 2000).status_code == 200  # above the JSON limit


@pytest.mark.parametrize("prefix", PREFIXES)
def test_userdata_listings(client, prefix):
    for name in ("w%2Fa.json", "w%2Fsub%2Fb.json", "w%2Fsub%2Fdeeper%2Fc.json"):
        client.post(f"{prefix}/userdata/{name}", content=b"12")
    assert client.get(prefix + "/userdata").status_code == 400  # no dir
    assert client.get(prefix + "/userdata", params={"dir": "nowhere"}).status_code == 404
    assert client.get(prefix + "/userdata", params={"dir": "../x"}).status_code == 403
    listing = client.get(prefix + "/userdata", params={"dir": "w", "recurse": "true", "split": "true"}).json()
    assert listing == [["a.json", "a.json"], ["sub/b.json", "sub", "b.json"],
                       ["sub/deeper/c.json", "sub", "deeper", "c.json"]]
    full = client.get(prefix + "/userdata", params={"dir": "w", "full_info": "true"}).json()
    assert [(f["path"], f["size"]) for f in full] == [("a.json", 2)]
    v2 = client.get(prefix + "/v2/userdata", params={"path": "w"}).json()
    assert [(e["type"], e["path"]) for e in v2] == [  # folders first, then by name (not by path)
        ("directory", "w/sub/deeper"), ("directory", "w/sub"), ("file", "w/a.json"), ("file", "w/sub/b.json"),
        ("file", "w/sub/deeper/c.json")]
    assert [e["type"] for e in v2] == ["directory", "directory", "file", "file", "file"]
    assert client.get(prefix + "/v2/userdata", params={"path": "../x"}).status_code == 400
    assert client.get(prefix + "/v2/userdata", params={"path": "w/a.json"}).status_code == 400
    assert client.get(prefix + "/v2/userdata", params={"path": "missing"}).status_code == 404


# --- settings --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_settings_routes(client, prefix):
    assert client.get(prefix + "/settings").json() == {}
    assert client.get(prefix + "/settings/Comfy.Locale").json() is None
    r = client.post(prefix + "/settings", json={"a": 1, "b": 2})
    assert r.status_code == 200 and r.content == b""
    assert client.post(prefix + "/settings", json={"b": 3}).status_code == 200
    assert client.post(prefix + "/settings/Comfy.Locale", json="fr").status_code == 200
    assert client.get(prefix + "/settings").json() == {"a": 1, "b": 3, "Comfy.Locale": "fr"}
    assert client.get(prefix + "/settings/Comfy.Locale").json() == "fr"
    assert client.post(prefix + "/settings", json=[1]).status_code == 400
    assert client.post(prefix + "/settings", content=b"{nope").status_code == 400
    assert client.post(prefix + "/settings", content=b'{"x": "' + b"y" * 2000 + b'"}').status_code == 413


# --- model browser, templates, i18n ----------------------------------------------------------------------------------


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 200, 30)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("prefix", PREFIXES)
def test_experiment_models(client, tmp_path, prefix):
    loras = tmp_path / "models" / "loras"
    loras.mkdir(parents=True)
    (loras / "x.safetensors").write_bytes(b"abc")
    (loras / "x.png").write_bytes(_png())
    kinds = client.get(prefix + "/experiment/models").json()
    by_name = {k["name"]: k["folders"] for k in kinds}
    assert by_name["loras"] == [str(loras), str(tmp_path / "output" / "loras")]  # output/loras is searched too
    assert not {"configs", "custom_nodes"} & {k["name"] for k in kinds}
    listing = client.get(prefix + "/experiment/models/loras").json()
    assert [(f["name"], f["pathIndex"], f["size"]) for f in listing] == [("x.safetensors", 0, 3)]
    assert client.get(prefix + "/experiment/models/nope").status_code == 404
    preview = client.get(prefix + "/experiment/models/preview/loras/0/x.safetensors")
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/webp"
    with Image.open(io.BytesIO(preview.content)) as img:
        assert img.format == "WEBP" and img.size == (4, 4)
    assert client.get(prefix + "/experiment/models/preview/loras/0/none.pt").status_code == 404
    assert client.get(prefix + "/experiment/models/preview/loras/9/x.safetensors").status_code == 404
    assert client.get(prefix + "/experiment/models/preview/loras/zero/x.safetensors").status_code == 400
    assert client.get(prefix + "/experiment/models/preview/loras/0/..%2F..%2Fx.pt").status_code == 403


def test_workflow_templates_i18n_and_template_files(client, tmp_path):
    pack = tmp_path / "cn" / "pack"
    (pack / "example_workflows").mkdir(parents=True)
    (pack / "example_workflows" / "demo.json").write_text('{"demo": true}')
    (pack / "locales" / "de").mkdir(parents=True)
    (pack / "locales" / "de" / "main.json").write_text('{"hello": "hallo"}')
    for prefix in PREFIXES:
        assert client.get(prefix + "/workflow_templates").json() == {"pack": ["demo"]}
        assert client.get(prefix + "/i18n").json() == {"de": {"hello": "hallo"}}
    r = client.get("/api/workflow_templates/pack/demo.json")
    assert r.status_code == 200 and r.json() == {"demo": True}
    assert client.get("/api/workflow_templates/pack/..%2F..%2Fpack%2Flocales%2Fde%2Fmain.json").status_code == 404
    assert client.get("/api/workflow_templates/nope/demo.json").status_code == 404


# --- internal --------------------------------------------------------------------------------------------------------


def test_internal_routes_are_not_aliased(client):
    assert client.get("/internal/folder_paths").status_code == 200
    assert client.get("/api/internal/folder_paths").status_code == 404
    assert client.get("/api/internal/logs").status_code == 404


def test_internal_logs(client, engine):
    logging.getLogger("comfy_core.test_internal").warning("internal log line")
    text = client.get("/internal/logs").json()
    assert isinstance(text, str) and " - internal log line\n" in text
    raw = client.get("/internal/logs/raw").json()
    assert set(raw) == {"entries", "size"} and set(raw["size"]) == {"cols", "rows"}
    assert raw["entries"][-1]["m"] == "internal log line\n" and set(raw["entries"][-1]) == {"t", "m"}
    r = client.patch("/internal/logs/subscribe", json={"clientId": "c1", "enabled": True})
    assert r.status_code == 200 and r.content == b""
    assert client.patch("/internal/logs/subscribe", json={"clientId": "c1"}).status_code == 400
    assert client.patch("/internal/logs/subscribe", content=b"nope").status_code == 400


def test_internal_folder_paths_and_files(client, engine, tmp_path):
    paths = client.get("/internal/folder_paths").json()
    assert paths["checkpoints"] == [str(tmp_path / "models" / "checkpoints"), str(tmp_path / "output" / "checkpoints")]
    assert paths["text_encoders"] == [str(tmp_path / "models" / d) for d in ("text_encoders", "clip")] + [
        str(tmp_path / "output" / "clip")]
    assert paths["custom_nodes"] == [str(tmp_path / "cn")] and "configs" in paths
    out = tmp_path / "output"
    out.mkdir(exist_ok=True)
    (out / "old.png").write_bytes(b"1")
    (out / "new.png").write_bytes(b"2")
    (out / "sub").mkdir()
    (out / "sub" / "nested.png").write_bytes(b"3")
    os.utime(out / "old.png", (1_000_000, 1_000_000))
    assert client.get("/internal/files/output").json() == ["new.png", "old.png"]
    assert client.get("/internal/files/input").json() == []
    bad = client.get("/internal/files/models")
    assert bad.status_code == 400 and bad.json() == {"error": "Invalid directory type"}


# --- logs over the websocket -----------------------------------------------------------------------------------------


def test_subscribed_websocket_client_receives_logs(tmp_path):
    engine = build(tmp_path)
    app = create_app(engine, owns_engine=True)
    try:
        with running_server(app) as base, connect(base.replace("http://", "ws://") + "/ws?clientId=w1") as ws:
            assert json.loads(ws.recv(timeout=10))["type"] == "status"
            client = TestClient(app)  # plain HTTP calls into the same app object (no lifespan)
            assert client.patch("/internal/logs/subscribe", json={"clientId": "w1", "enabled": True}).status_code == 200
            logging.getLogger("comfy_core.test_ws_logs").warning("over the socket")
            deadline = time.monotonic() + 10
            while True:
                message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                if message["type"] == "logs":
                    break
            data = message["data"]
            assert set(data) == {"entries", "size"} and set(data["size"]) == {"cols", "rows"}
            assert data["entries"][0]["m"] == "over the socket\n" and set(data["entries"][0]) == {"t", "m"}
            assert engine.log_capture.subscribers == {"w1"}
            client.patch("/internal/logs/subscribe", json={"clientId": "w1", "enabled": False})
            assert engine.log_capture.subscribers == set()
    finally:
        engine.close()
