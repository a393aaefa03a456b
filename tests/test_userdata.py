"""comfy_core.userdata (users, user files, settings), comfy_core.logs, the model browser and custom node resources,
without HTTP."""
from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import threading

import msgspec
import pytest
from PIL import Image

from comfy_core import model_browser, node_resources
from comfy_core.errors import InputFileError, UserDataError
from comfy_core.events import EventBus
from comfy_core.folders import ModelFolders
from comfy_core.logs import LogCapture, Logs
from comfy_core.userdata import UserData


@pytest.fixture
def store(tmp_path):
    return UserData(tmp_path / "user")


def status_of(call, *args, **kwargs) -> int:
    with pytest.raises(UserDataError) as info:
        call(*args, **kwargs)
    return info.value.status


# --- users -----------------------------------------------------------------------------------------------------------


def test_single_user_is_always_default(store):
    assert store.users() == {"default": "default"}
    assert store.request_user(None) == "default"
    assert store.request_user("someone-else") == "default"  # the header counts only with multi-user
    assert store.migrated() is False
    store.write("default", "a.json", b"{}")
    assert store.migrated() is True


def test_multi_user_ids_header_and_persistence(tmp_path):
    store = UserData(tmp_path / "user", multi_user=True)
    assert store.users() == {}
    assert status_of(store.request_user, None) == 403  # no "default" user exists in multi-user mode
    user_id = store.add_user("  Jane Doe!! ")
    prefix, uid = user_id.split("_", 1)
    assert prefix == "Jane-Doe-" and re.fullmatch(r"[0-9a-f-]{36}", uid)
    assert store.users() == {user_id: "Jane Doe!!"}
    assert json.loads((tmp_path / "user" / "users.json").read_text()) == {user_id: "Jane Doe!!"}
    assert store.request_user(user_id) == user_id
    assert status_of(store.request_user, "nobody") == 403
    assert status_of(store.add_user, "Jane Doe!!") == 400  # duplicate name
    assert str(pytest.raises(UserDataError, store.add_user, "Jane Doe!!").value) == "Duplicate username."
    assert status_of(store.add_user, "   ") == 400
    assert status_of(store.add_user, "__system") == 400
    reopened = UserData(tmp_path / "user", multi_user=True)
    assert reopened.users() == {user_id: "Jane Doe!!"}


def test_system_and_unsafe_user_ids_are_refused(tmp_path):
    root = tmp_path / "user"
    root.mkdir()
    (root / "users.json").write_text(json.dumps({"__sys": "s", "../evil": "e", "ok": "ok"}))
    store = UserData(root, multi_user=True)
    assert store.users() == {"__sys": "s", "ok": "ok"}  # ids that are not one path segment are dropped
    assert status_of(store.request_user, "__sys") == 403
    assert status_of(store.user_root, "..") == 403


# --- the resolver ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, status", [
    ("../escape.json", 403), ("a/../../escape.json", 403), ("a/../b.json", 403), ("/etc/passwd", 403),
    ("C:/windows", 403), ("a\x00b", 400), ("a\\b.json", 400),
])
def test_resolver_refuses_path_tricks(store, name, status):
    assert status_of(store.resolve, "default", name) == status
    assert status_of(store.write, "default", name, b"x") == status


def test_resolver_refuses_symlinks_leaving_the_user_folder(store, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text("s")
    root = store.user_root("default")
    root.mkdir(parents=True)
    os.symlink(outside, root / "link")
    os.symlink(outside / "secret.json", root / "secret.json")
    assert status_of(store.resolve, "default", "link/secret.json") == 403
    assert status_of(store.file_path, "default", "secret.json") == 403
    assert status_of(store.write, "default", "link/new.json", b"x") == 403
    assert not (outside / "new.json").exists()
    assert store.list_files("default", ".", recurse=True) == []  # escaping links are not listed either
    (root / "inner.json").write_text("i")
    os.symlink(root / "inner.json", root / "alias.json")  # a link that stays inside is fine
    assert store.file_path("default", "alias.json").read_text() == "i"


# --- files -----------------------------------------------------------------------------------------------------------


def test_write_read_overwrite_and_full_info(store):
    assert store.write("default", "workflows/a.json", b'{"a": 1}') == "workflows/a.json"
    path = store.file_path("default", "workflows/a.json")
    assert path.read_bytes() == b'{"a": 1}'
    assert status_of(store.write, "default", "workflows/a.json", b"2", overwrite=False) == 409
    assert path.read_bytes() == b'{"a": 1}'
    info = store.write("default", "workflows/a.json", b"12345", full_info=True)
    stat = os.stat(path)
    assert info == {"path": "workflows/a.json", "size": 5, "modified": int(stat.st_mtime * 1000),
                    "created": int(stat.st_ctime * 1000)}
    assert status_of(store.write, "default", "workflows", b"x") == 400  # a folder is not a file name
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temp file left behind


def test_delete_and_missing_files(store):
    store.write("default", "x.json", b"x")
    store.delete("default", "x.json")
    assert status_of(store.delete, "default", "x.json") == 404
    assert status_of(store.file_path, "default", "nothing.json") == 404


def test_move_rules(store):
    store.write("default", "workflows/a.json", b"A")
    store.write("default", "workflows/b.json", b"B")
    assert status_of(store.move, "default", "workflows/missing.json", "c.json") == 404
    assert status_of(store.move, "default", "workflows/a.json", "workflows/b.json", overwrite=False) == 409
    assert status_of(store.move, "default", "workflows/a.json", "../out.json") == 403
    assert store.move("default", "workflows/a.json", "archive/a2.json") == "archive/a2.json"
    assert store.file_path("default", "archive/a2.json").read_bytes() == b"A"
    assert status_of(store.file_path, "default", "workflows/a.json") == 404
    info = store.move("default", "archive/a2.json", "workflows/b.json", full_info=True)
    assert info["path"] == "workflows/b.json" and info["size"] == 1
    assert store.file_path("default", "workflows/b.json").read_bytes() == b"A"


def test_listing_recurse_full_info_split(store):
    for name in ("workflows/a.json", "workflows/sub/b.json", "workflows/.hidden.json", "workflows/.dot/c.json"):
        store.write("default", name, b"xy")
    assert store.list_files("default", "workflows") == ["a.json"]
    assert store.list_files("default", "workflows", recurse=True) == ["a.json", "sub/b.json"]
    assert store.list_files("default", "workflows", recurse=True, split=True) == [
        ["a.json", "a.json"], ["sub/b.json", "sub", "b.json"]]
    full = store.list_files("default", "workflows", recurse=True, full_info=True)
    assert [(f["path"], f["size"]) for f in full] == [("a.json", 2), ("sub/b.json", 2)]
    assert status_of(store.list_files, "default", "nowhere") == 404
    assert status_of(store.list_files, "default", "../x") == 403


def test_listing_v2_dirs_first_relative_to_user_root(store):
    assert store.list_v2("default") == []  # a new user without a folder yet
    store.write("default", "workflows/b.json", b"bb")
    store.write("default", "workflows/A.json", b"a")
    store.write("default", "workflows/zz/c.json", b"c")
    listing = store.list_v2("default", "workflows")
    assert [(e["type"], e["path"]) for e in listing] == [
        ("directory", "workflows/zz"), ("file", "workflows/A.json"), ("file", "workflows/b.json"),
        ("file", "workflows/zz/c.json")]
    assert listing[2]["size"] == 2 and isinstance(listing[2]["modified"], float)
    assert "size" not in listing[0]
    assert status_of(store.list_v2, "default", "workflows/b.json") == 400  # not a directory
    assert status_of(store.list_v2, "default", "missing") == 404


# --- settings --------------------------------------------------------------------------------------------------------


def test_settings_get_merge_set(store):
    assert store.settings("default") == {} and store.setting("default", "Comfy.X") is None
    store.update_settings("default", {"a": 1, "b": {"x": 1}})
    store.update_settings("default", {"b": {"y": 2}, "c": [1]})  # shallow: "b" is replaced, not merged
    assert store.settings("default") == {"a": 1, "b": {"y": 2}, "c": [1]}
    store.set_setting("default", "Comfy.Locale", "fr")
    assert store.setting("default", "Comfy.Locale") == "fr"
    raw = (store.user_root("default") / "comfy.settings.json").read_text()
    assert json.loads(raw) == {"a": 1, "b": {"y": 2}, "c": [1], "Comfy.Locale": "fr"}
    assert '\n    "a": 1' in raw  # indented like ComfyUI's json.dumps(indent=4)
    assert status_of(store.update_settings, "default", [1, 2]) == 400


def test_unreadable_settings_are_empty(store):
    root = store.user_root("default")
    root.mkdir(parents=True)
    (root / "comfy.settings.json").write_text("{not json")
    assert store.settings("default") == {}


def test_concurrent_setting_writes_lose_nothing(store):
    def writer(i):
        for j in range(20):
            store.set_setting("default", f"k{i}.{j}", j)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.settings("default")) == 80


# --- logs ------------------------------------------------------------------------------------------------------------


def test_log_capture_is_bounded_and_formats_like_comfyui():
    capture = LogCapture(capacity=3)
    logger = logging.getLogger("test_userdata.capture")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    capture.attach(logger)
    try:
        for i in range(5):
            logger.info("line %d", i)
        logger.debug("not kept: below the logger's level")
    finally:
        capture.detach()
    logger.info("after detach")
    entries = capture.entries()
    assert [e["m"] for e in entries] == ["line 2\n", "line 3\n", "line 4\n"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?", entries[0]["t"])
    assert capture.text() == "".join(f"{e['t']} - {e['m']}" for e in entries)
    raw = capture.raw()
    assert raw["entries"] == entries and set(raw["size"]) == {"cols", "rows"} and raw["size"]["cols"] > 0


def test_log_capture_forwards_to_subscribed_clients_only():
    bus = EventBus()
    seen = []
    bus.subscribe(lambda m: seen.append((m.client_id, m.type, m.event)))
    capture = LogCapture(bus)
    logger = logging.getLogger("test_userdata.forward")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    capture.attach(logger)
    try:
        logger.info("nobody listens")
        capture.subscribe("c1")
        capture.subscribe("c2")
        capture.subscribe("c2", enabled=False)
        logger.warning("hello %s", "there")
        capture.prune({"c2"})
        logger.warning("after prune")
    finally:
        capture.detach()
    assert len(seen) == 1
    client_id, kind, event = seen[0]
    assert client_id == "c1" and kind == "logs" and isinstance(event, Logs)
    assert [e["m"] for e in event.entries] == ["hello there\n"]
    message = msgspec.json.decode(msgspec.json.encode(event))
    assert set(message) == {"entries", "size"} and set(message["size"]) == {"cols", "rows"}


def test_log_capture_does_not_feed_itself_through_a_failing_subscriber():
    bus = EventBus()
    bus.subscribe(lambda m: 1 / 0)  # the bus logs the failure: that record must not be forwarded again
    capture = LogCapture(bus)
    capture.subscribe("c")
    capture.attach()
    try:
        logging.getLogger("test_userdata.loop").error("boom")
    finally:
        capture.detach()
    messages = [e["m"] for e in capture.entries()]
    assert messages[0] == "boom\n" and any("event subscriber failed" in m for m in messages)
    assert len(messages) == 2


# --- model browser ---------------------------------------------------------------------------------------------------


def _png(color=(255, 0, 0)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(out, format="PNG")
    return out.getvalue()


def _safetensors_with_cover(path, image: bytes) -> None:
    metadata = {"ssmd_cover_images": json.dumps([base64.b64encode(image).decode()])}
    header = json.dumps({"__metadata__": metadata}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header)


def test_model_browser_lists_and_previews(tmp_path):
    extra = tmp_path / "extra_loras"
    folders = ModelFolders(tmp_path / "models", {"loras": [str(extra)]})
    loras = tmp_path / "models" / "loras"
    (loras / "sub").mkdir(parents=True)
    extra.mkdir()
    (loras / "a.safetensors").write_bytes(b"12345678")
    (loras / "sub" / "b.pt").write_bytes(b"1")
    (loras / "notes.txt").write_text("not a model")
    (loras / ".hidden.pt").write_bytes(b"1")
    (extra / "c.ckpt").write_bytes(b"1")
    names = [f["name"] for f in model_browser.folders(folders)]
    assert "configs" not in names and "custom_nodes" not in names and names[0] == "checkpoints"
    listing = model_browser.files(folders, "loras")
    assert [(f["name"], f["pathIndex"]) for f in listing] == [("a.safetensors", 0), ("sub/b.pt", 0), ("c.ckpt", 1)]
    assert listing[0]["size"] == 8 and isinstance(listing[0]["modified"], float)
    with pytest.raises(InputFileError) as info:
        model_browser.files(folders, "clip")  # legacy names are not folder keys here
    assert info.value.status == 404

    (loras / "sub" / "b.preview.png").write_bytes(_png((0, 255, 0)))
    with Image.open(io.BytesIO(model_browser.preview(folders, "loras", 0, "sub/b.pt"))) as img:
        assert img.format == "WEBP" and img.getpixel((1, 1))[1] > 200
    _safetensors_with_cover(extra / "d.safetensors", _png((0, 0, 255)))
    with Image.open(io.BytesIO(model_browser.preview(folders, "loras", 1, "d.safetensors"))) as img:
        assert img.format == "WEBP" and img.getpixel((1, 1))[2] > 200
    for args, status in [(("loras", 0, "a.safetensors"), 404), (("loras", 5, "a.safetensors"), 404),
                         (("loras", 0, "../x.pt"), 403), (("nope", 0, "a.pt"), 404)]:
        with pytest.raises(InputFileError) as info:
            model_browser.preview(folders, *args)
        assert info.value.status == status


# --- custom node resources -------------------------------------------------------------------------------------------


def test_workflow_templates_and_i18n(tmp_path):
    root = tmp_path / "custom_nodes"
    (root / "packA" / "example_workflows").mkdir(parents=True)
    (root / "packA" / "example_workflows" / "one.json").write_text("{}")
    (root / "packA" / "my_workflows").mkdir()
    (root / "packA" / "my_workflows" / "two.json").write_text("{}")
    (root / "packB" / "docs").mkdir(parents=True)
    (root / "packB" / "docs" / "three.json").write_text("{}")
    assert node_resources.workflow_templates([root]) == {"packA": ["one", "two"]}

    def locale(pack, lang, name, data):
        folder = root / pack / "locales" / lang
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(data))

    locale("packA", "en", "main.json", {"menu": {"a": "A"}, "list": [1]})
    locale("packA", "en", "nodeDefs.json", {"NodeA": {"display_name": "Node A"}})
    locale("packB", "en", "main.json", {"menu": {"b": "B"}, "list": [2]})
    locale("packB", "fr", "settings.json", {"S": {"name": "s"}})
    (root / "packB" / "locales" / "en" / "commands.json").write_text("{broken")
    assert node_resources.translations([root]) == {
        "en": {"menu": {"a": "A", "b": "B"}, "list": [1, 2], "nodeDefs": {"NodeA": {"display_name": "Node A"}}},
        "fr": {"settings": {"S": {"name": "s"}}},
    }
    assert node_resources.translations([tmp_path / "missing"]) == {}


# --- config and CLI --------------------------------------------------------------------------------------------------


def test_serve_flags_set_user_dir_and_multi_user(tmp_path):
    from comfy_core.cli import build_parser, load_config

    args = build_parser().parse_args(["serve", "--user-directory", str(tmp_path / "u"), "--multi-user"])
    config = load_config(args)
    assert config.user_dir == str(tmp_path / "u") and config.multi_user is True
    plain = load_config(build_parser().parse_args(["serve"]))
    assert plain.user_dir == "user" and plain.multi_user is False
    assert plain.resolved(tmp_path).user_dir == str(tmp_path / "user")


# --- names the OS refuses (found by tests/test_asgi_fuzz.py: these were OSErrors, i.e. HTTP 500s) ----------------

@pytest.mark.parametrize("call, args", [
    ("file_path", ("a" * 256,)),
    ("write", ("w/" + "a" * 256, b"x")),
    ("list_files", ("a" * 300,)),
    ("list_v2", ("a" * 300,)),
    ("delete", ("/".join(["d" * 250] * 17),)),  # components fine, the whole over PATH_MAX
])
def test_overlong_user_paths_are_400(store, call, args):
    assert status_of(getattr(store, call), "default", *args) == 400
    assert not (store.root / "default" / "w").exists()


def test_longest_legal_user_file_name_round_trips(store):
    name = "f" * 250 + ".json"  # 255 bytes
    assert store.write("default", name, b"{}") == name
    assert store.file_path("default", name).read_bytes() == b"{}"


def test_writing_or_moving_through_a_file_is_409(store):
    store.write("default", "f.json", b"{}")
    assert status_of(store.write, "default", "f.json/x.json", b"1") == 409
    assert status_of(store.move, "default", "f.json", "f.json/y.json") == 409
    assert store.file_path("default", "f.json").read_bytes() == b"{}"


def test_settings_file_nested_too_deeply_reads_as_empty(store):
    # a client can write any bytes to its settings file through /userdata; msgspec raises RecursionError here
    root = store.user_root("default")
    root.mkdir(parents=True)
    (root / "comfy.settings.json").write_text("[" * 5000 + "]" * 5000)
    assert store.settings("default") == {}
    store.set_setting("default", "a", 1)
    assert store.settings("default") == {"a": 1}


@pytest.mark.parametrize("metadata", [
    "[" * 5000 + "]" * 5000,  # the header itself nested too deeply for msgspec (RecursionError)
    {"ssmd_cover_images": "[" * 5000 + "]" * 5000},  # the covers' JSON nested too deeply
])
def test_model_preview_of_a_hostile_header_is_a_404(tmp_path, metadata):
    folders = ModelFolders(tmp_path / "models")
    loras = tmp_path / "models" / "loras"
    loras.mkdir(parents=True)
    header = ('{"__metadata__": ' + (metadata if isinstance(metadata, str) else json.dumps(metadata)) + "}").encode()
    (loras / "h.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(InputFileError) as err:
        model_browser.preview(folders, "loras", 0, "h.safetensors")
    assert err.value.status == 404
