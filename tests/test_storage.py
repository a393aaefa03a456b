"""Storage: ComfyUI's input/output/temp semantics (annotations, SaveImage counters, uploads, mask uploads) and the
path refusals that ComfyUI lacks."""
from __future__ import annotations

import hashlib
import io
import os
import time

import pytest
from PIL import Image, PngImagePlugin

from comfy_core.errors import InputFileError
from comfy_core.storage import Storage, UploadResult


@pytest.fixture
def storage(tmp_path):
    return Storage(tmp_path / "input", tmp_path / "output", tmp_path / "temp")


def png_bytes(size=(4, 4), color=(10, 20, 30, 255), mode="RGBA", text: dict[str, str] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for k, v in (text or {}).items():
        info.add_text(k, v)
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


# --- roots and annotations ------------------------------------------------------------------------------------------

def test_roots_are_created_lazily(tmp_path, storage):
    assert not (tmp_path / "output").exists()
    assert storage.root("output") == tmp_path / "output"
    assert (tmp_path / "output").is_dir()


def test_unknown_kind_is_a_400(storage):
    with pytest.raises(InputFileError) as err:
        storage.root("models")
    assert err.value.status == 400


@pytest.mark.parametrize("name, expected", [
    ("photo.png [output]", ("photo.png", "output")),
    ("photo.png [input]", ("photo.png", "input")),
    ("sub/photo.png [temp]", ("sub/photo.png", "temp")),
    ("photo.png", ("photo.png", "input")),
    ("photo [output].png", ("photo [output].png", "input")),
])
def test_split_annotation(name, expected):
    assert Storage.split_annotation(name, "input") == expected


# --- path refusals --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["/etc/passwd", "../secret.png", "a/../../x.png", "a\x00b.png", "..\\x.png", ""])
def test_bad_file_names_are_400(storage, name):
    with pytest.raises(InputFileError) as err:
        storage.resolve("input", name)
    assert err.value.status == 400


@pytest.mark.parametrize("subfolder", ["..", "../..", "/etc", "a/../../b"])
def test_escaping_subfolders_are_403(storage, subfolder):
    with pytest.raises(InputFileError) as err:
        storage.resolve("input", "x.png", subfolder)
    assert err.value.status == 403


def test_subfolder_that_stays_inside_is_accepted(tmp_path, storage):
    assert storage.resolve("input", "x.png", "a/../b") == tmp_path / "input" / "b" / "x.png"


def test_symlink_escapes_are_403(tmp_path, storage):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    root = storage.root("input")
    os.symlink(outside, root / "link_dir")
    os.symlink(outside / "secret.png", root / "link_file.png")
    for call in (lambda: storage.resolve("input", "secret.png", "link_dir"),
                 lambda: storage.resolve("input", "link_dir/secret.png"),
                 lambda: storage.resolve("input", "link_file.png")):
        with pytest.raises(InputFileError) as err:
            call()
        assert err.value.status == 403


def test_symlink_inside_the_root_is_followed(storage):
    root = storage.root("input")
    (root / "real.png").write_bytes(b"x")
    os.symlink(root / "real.png", root / "alias.png")
    assert storage.resolve("input", "alias.png", must_exist=True) == root / "real.png"


def test_missing_file_is_404_only_when_required(tmp_path, storage):
    assert storage.resolve("input", "none.png") == tmp_path / "input" / "none.png"
    with pytest.raises(InputFileError) as err:
        storage.resolve("input", "none.png", must_exist=True)
    assert err.value.status == 404


def test_annotated_names(tmp_path, storage):
    (storage.root("output") / "x.png").write_bytes(b"x")
    assert storage.resolve_annotated("x.png [output]", "input") == tmp_path / "output" / "x.png"
    assert storage.exists_annotated("x.png [output]")
    assert not storage.exists_annotated("x.png")
    assert not storage.exists_annotated("../x.png [output]")


# --- SaveImage paths ------------------------------------------------------------------------------------------------

def test_save_path_counter_starts_at_1(tmp_path, storage):
    p = storage.save_image_path("ComfyUI", 8, 8)
    assert (p.full_folder, p.filename, p.counter, p.subfolder, p.filename_prefix) == (
        tmp_path / "output", "ComfyUI", 1, "", "ComfyUI")


def test_save_path_counter_continues_past_existing_files(storage):
    out = storage.root("output")
    for name in ["ComfyUI_00005_.png", "ComfyUI_00002_.png", "ComfyUI_abc_.png", "ComfyUIx_00009_.png",
                 "Other_00042_.png"]:
        (out / name).write_bytes(b"")
    assert storage.save_image_path("ComfyUI", 8, 8).counter == 6


def test_save_path_non_numeric_counter_counts_as_zero(storage):
    (storage.root("output") / "ComfyUI_abc_.png").write_bytes(b"")
    assert storage.save_image_path("ComfyUI", 8, 8).counter == 1


def test_save_path_subfolder_from_prefix(tmp_path, storage):
    p = storage.save_image_path("portraits/day1/img", 8, 8)
    assert p.subfolder == os.path.join("portraits", "day1")
    assert p.filename == "img"
    assert p.full_folder == tmp_path / "output" / "portraits" / "day1"
    assert p.full_folder.is_dir()
    (p.full_folder / "img_00007_.png").write_bytes(b"")
    assert storage.save_image_path("portraits/day1/img", 8, 8).counter == 8


def test_save_path_tokens(storage):
    p = storage.save_image_path("run_%width%x%height%_%year%", 640, 480)
    years = {time.localtime().tm_year, time.localtime().tm_year - 1}  # tolerate New Year's Eve
    assert p.filename.startswith("run_640x480_")
    assert int(p.filename.rsplit("_", 1)[1]) in years
    assert p.filename_prefix == p.filename
    month = storage.save_image_path("%month%-%day%", 1, 1).filename
    assert len(month) == 5 and month[2] == "-"


def test_save_path_without_percent_is_literal(storage):
    assert storage.save_image_path("width", 640, 480).filename == "width"


@pytest.mark.parametrize("prefix", ["../escape", "/tmp/abs", "a/../../x"])
def test_save_path_escape_is_refused(storage, prefix):
    with pytest.raises(InputFileError, match="Saving image outside the output folder is not allowed."):
        storage.save_image_path(prefix, 8, 8)


def test_save_path_symlinked_subfolder_escape_is_refused(tmp_path, storage):
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", storage.root("output") / "link")
    with pytest.raises(InputFileError, match="outside the output folder"):
        storage.save_image_path("link/img", 8, 8)


# --- uploads --------------------------------------------------------------------------------------------------------

def test_upload_naming_and_dedupe(storage):
    root = storage.root("input")
    assert storage.upload(b"one", "photo.png") == UploadResult(name="photo.png", subfolder="", type="input")
    before = os.stat(root / "photo.png").st_mtime_ns
    time.sleep(0.01)
    assert storage.upload(b"one", "photo.png").name == "photo.png"  # same bytes: reuse, write nothing
    assert os.stat(root / "photo.png").st_mtime_ns == before
    assert storage.upload(b"two", "photo.png").name == "photo (1).png"
    assert storage.upload(b"three", "photo.png").name == "photo (2).png"
    assert storage.upload(b"two", "photo.png").name == "photo (1).png"  # matches the (1) file
    assert (root / "photo (2).png").read_bytes() == b"three"
    assert sorted(os.listdir(root)) == ["photo (1).png", "photo (2).png", "photo.png"]


def test_upload_overwrite(storage):
    storage.upload(b"one", "a.png")
    assert storage.upload(b"two", "a.png", overwrite=True).name == "a.png"
    assert (storage.root("input") / "a.png").read_bytes() == b"two"


def test_upload_into_subfolder_and_other_kinds(tmp_path, storage):
    r = storage.upload(b"x", "a.png", subfolder="clip/space", kind="temp")
    assert r == UploadResult(name="a.png", subfolder="clip/space", type="temp")
    assert (tmp_path / "temp" / "clip" / "space" / "a.png").read_bytes() == b"x"


@pytest.mark.parametrize("kwargs, status", [
    ({"filename": ""}, 400),
    ({"filename": "../x.png"}, 400),
    ({"filename": "x.png", "subfolder": "../.."}, 403),
    ({"filename": "x.png", "kind": "models"}, 400),
])
def test_upload_refusals(tmp_path, storage, kwargs, status):
    with pytest.raises(InputFileError) as err:
        storage.upload(b"x", **kwargs)
    assert err.value.status == status
    assert not (tmp_path / "x.png").exists()


def test_mask_upload_replaces_alpha_and_keeps_text(storage):
    original = png_bytes((3, 2), (200, 100, 50, 255), text={"prompt": '{"a": 1}'})
    (storage.root("output") / "orig.png").write_bytes(original)
    mask = Image.new("RGBA", (3, 2), (0, 0, 0, 0))
    mask.putpixel((1, 0), (0, 0, 0, 77))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    r = storage.upload_mask(buf.getvalue(), "clipspace-mask.png", {"filename": "orig.png", "type": "output"})
    assert r == UploadResult(name="clipspace-mask.png", subfolder="", type="input")
    with Image.open(storage.root("input") / "clipspace-mask.png") as img:
        assert img.mode == "RGBA"
        assert img.getpixel((0, 0)) == (200, 100, 50, 0)
        assert img.getpixel((1, 0)) == (200, 100, 50, 77)
        assert img.text == {"prompt": '{"a": 1}'}


def test_mask_upload_type_defaults_to_output_and_annotation_overrides(storage):
    (storage.root("input") / "o.png").write_bytes(png_bytes((2, 2), (1, 2, 3, 255)))
    data = png_bytes((2, 2), (0, 0, 0, 9))
    storage.upload_mask(data, "m1.png", {"filename": "o.png"})  # looks in output: missing
    assert not (storage.root("input") / "m1.png").exists()
    storage.upload_mask(data, "m2.png", {"filename": "o.png [input]", "type": "output"})
    with Image.open(storage.root("input") / "m2.png") as img:
        assert img.getpixel((0, 0)) == (1, 2, 3, 9)


@pytest.mark.parametrize("ref", [
    {"filename": "missing.png"},
    {"filename": "../o.png", "type": "input"},
    {"filename": "/etc/passwd"},
    {"filename": "o.png", "type": "nope"},
    {"filename": "o.png", "type": "input", "subfolder": "../.."},
    "not a dict",
])
def test_mask_upload_bad_original_writes_nothing_but_answers(storage, ref):
    (storage.root("input") / "o.png").write_bytes(png_bytes())
    r = storage.upload_mask(png_bytes(), "mask.png", ref)
    assert r.name == "mask.png"
    assert not (storage.root("input") / "mask.png").exists()


def test_mask_upload_dedupe_uses_raw_upload_bytes(storage):
    data = png_bytes()
    (storage.root("input") / "mask.png").write_bytes(data)
    (storage.root("output") / "o.png").write_bytes(png_bytes())
    r = storage.upload_mask(data, "mask.png", {"filename": "o.png"})
    assert r.name == "mask.png"
    assert hashlib.sha256((storage.root("input") / "mask.png").read_bytes()).digest() == hashlib.sha256(data).digest()


# --- listings -------------------------------------------------------------------------------------------------------

def test_input_listings(storage):
    root = storage.root("input")
    for name in ["b.png", "a.jpg", "c.webp", "notes.txt", "model.safetensors"]:
        (root / name).write_bytes(b"x")
    (root / "sub").mkdir()
    (root / "sub" / "deep.png").write_bytes(b"x")
    assert storage.list_input_images() == ["a.jpg", "b.png", "c.webp"]
    assert storage.list_input_files() == ["a.jpg", "b.png", "c.webp", "model.safetensors", "notes.txt"]


def test_list_files_newest_first(storage):
    root = storage.root("output")
    (root / "sub").mkdir()
    for i, name in enumerate(["old.png", "sub/mid.png", "new.png"]):
        (root / name).write_bytes(b"x")
        os.utime(root / name, (1_000_000 + i, 1_000_000 + i))
    assert storage.list_files("output") == ["new.png", "sub/mid.png", "old.png"]


def test_clear_temp(tmp_path, storage):
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "k.txt").write_bytes(b"k")
    root = storage.root("temp")
    (root / "a.png").write_bytes(b"x")
    (root / "d").mkdir()
    (root / "d" / "b.png").write_bytes(b"x")
    os.symlink(keep, root / "link")
    storage.clear_temp()
    assert os.listdir(root) == []
    assert (keep / "k.txt").exists()  # the link was removed, not followed


# --- names the OS refuses (found by tests/test_asgi_fuzz.py: these were OSErrors, i.e. HTTP 500s) ----------------

def test_upload_names_up_to_name_max_are_stored(tmp_path, storage):
    name = "n" * 251 + ".png"  # 255 bytes: legal, though the temp file used to append 39 more characters
    assert storage.upload(b"x", name).name == name
    assert (tmp_path / "input" / name).read_bytes() == b"x"
    assert [p.name for p in (tmp_path / "input").iterdir()] == [name]  # no temp file left behind


@pytest.mark.parametrize("kwargs", [
    {"filename": "n" * 252 + ".png"},  # 256 bytes
    {"filename": "é" * 128 + ".png"},  # 128 characters, 260 bytes in UTF-8
    {"filename": "x.png", "subfolder": "s" * 300},
    {"filename": "/".join(["d" * 200] * 21) + "/x.png"},  # every component fine, the whole over PATH_MAX
])
def test_overlong_names_are_400_before_touching_the_disk(tmp_path, storage, kwargs):
    with pytest.raises(InputFileError) as err:
        storage.upload(b"x", **kwargs)
    assert err.value.status == 400 and "too long" in str(err.value)
    with pytest.raises(InputFileError) as err:
        storage.resolve("input", kwargs["filename"], kwargs.get("subfolder", ""), must_exist=True)
    assert err.value.status == 400
    assert list((tmp_path / "input").iterdir()) == []


@pytest.mark.parametrize("kwargs", [
    {"filename": "c.png", "subfolder": "a.png"},
    {"filename": "c.png", "subfolder": "a.png/deeper"},
    {"filename": "a.png/c.png"},
])
def test_upload_through_a_file_is_409(tmp_path, storage, kwargs):
    storage.upload(b"x", "a.png")
    with pytest.raises(InputFileError) as err:
        storage.upload(b"y", **kwargs)
    assert err.value.status == 409
    assert (tmp_path / "input" / "a.png").read_bytes() == b"x"


def test_upload_overwriting_a_folder_is_409_and_without_overwrite_renames(tmp_path, storage):
    storage.upload(b"x", "inner.png", subfolder="dir")
    with pytest.raises(InputFileError) as err:
        storage.upload(b"y", "dir", overwrite=True)
    assert err.value.status == 409 and (tmp_path / "input" / "dir").is_dir()
    assert storage.upload(b"y", "dir").name == "dir (1)"


def test_mask_original_with_an_overlong_name_writes_nothing(tmp_path, storage):
    result = storage.upload_mask(png_bytes(), "m.png", {"filename": "q" * 300, "type": "input"})
    assert result.name == "m.png" and not (tmp_path / "input" / "m.png").exists()
