"""ModelFolders: ComfyUI's folder keys, extensions, recursive cached listings, legacy names and lookups."""
from __future__ import annotations

import os

import pytest

from comfy_core.errors import InputFileError
from comfy_core.folders import ModelFolders, UnknownFolderError

COMFY_MODELS_KEYS = ["checkpoints", "configs", "loras", "vae", "text_encoders", "diffusion_models", "clip_vision",
                     "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "gligen",
                     "upscale_models", "custom_nodes", "hypernetworks", "photomaker", "classifiers",
                     "model_patches", "audio_encoders"]


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


@pytest.fixture
def folders(tmp_path):
    f = ModelFolders(tmp_path / "models")
    f.create_dirs()
    return f


def test_kinds_are_comfyuis_keys_plus_annotators(folders):
    assert folders.kinds() == COMFY_MODELS_KEYS + ["annotators"]


def test_create_dirs(tmp_path, folders):
    for sub in ["checkpoints", "clip", "text_encoders", "unet", "diffusion_models", "t2i_adapter", "annotators"]:
        assert (tmp_path / "models" / sub).is_dir()


def test_listing_is_recursive_sorted_and_filtered(tmp_path, folders):
    ck = tmp_path / "models" / "checkpoints"
    for name in ["b.safetensors", "a.CKPT", "sub/c.pt", "readme.txt", ".hidden.pth", ".git/x.safetensors"]:
        touch(ck / name)
    assert folders.list("checkpoints") == [".hidden.pth", "a.CKPT", "b.safetensors", os.path.join("sub", "c.pt")]


def test_listing_follows_symlinks(tmp_path, folders):
    elsewhere = tmp_path / "shared_models"
    touch(elsewhere / "x.safetensors")
    os.symlink(elsewhere, tmp_path / "models" / "loras" / "linked")
    assert folders.list("loras") == [os.path.join("linked", "x.safetensors")]


def test_union_of_dirs_and_legacy_names(tmp_path, folders):
    touch(tmp_path / "models" / "clip" / "old.safetensors")
    touch(tmp_path / "models" / "text_encoders" / "new.safetensors")
    touch(tmp_path / "models" / "unet" / "u.safetensors")
    touch(tmp_path / "models" / "t2i_adapter" / "t.pth")
    assert folders.list("text_encoders") == ["new.safetensors", "old.safetensors"]
    assert folders.list("clip") == ["new.safetensors", "old.safetensors"]
    assert folders.list("unet") == ["u.safetensors"]
    assert folders.list("controlnet") == ["t.pth"]


def test_list_strict_refuses_legacy_names(folders):
    assert folders.list_strict("text_encoders") == []
    for name in ["clip", "unet", "nope"]:
        with pytest.raises(UnknownFolderError) as err:
            folders.list_strict(name)
        assert err.value.status == 404
        assert isinstance(err.value, LookupError) and isinstance(err.value, InputFileError)


def test_unknown_kind_is_a_typed_error(folders):
    with pytest.raises(UnknownFolderError, match="nope"):
        folders.list("nope")
    with pytest.raises(UnknownFolderError):
        folders.full_path("nope", "x.safetensors")


def test_special_extension_sets(tmp_path, folders):
    touch(tmp_path / "models" / "configs" / "v1.yaml")
    touch(tmp_path / "models" / "configs" / "v1.safetensors")
    touch(tmp_path / "models" / "classifiers" / "noext")
    touch(tmp_path / "models" / "classifiers" / "has.pt")
    touch(tmp_path / "models" / "diffusers" / "model_index.json")
    assert folders.list("configs") == ["v1.yaml"]
    assert folders.list("classifiers") == ["noext"]
    assert folders.list("diffusers") == []


def test_cache_refreshes_when_a_file_appears(tmp_path, folders):
    vae = tmp_path / "models" / "vae"
    touch(vae / "a.safetensors")
    assert folders.list("vae") == ["a.safetensors"]
    touch(vae / "b.safetensors")
    assert folders.list("vae") == ["a.safetensors", "b.safetensors"]
    (vae / "sub").mkdir()
    assert folders.list("vae") == ["a.safetensors", "b.safetensors"]
    touch(vae / "sub" / "c.safetensors")  # only the subdir's mtime changes
    assert folders.list("vae") == ["a.safetensors", "b.safetensors", os.path.join("sub", "c.safetensors")]
    (vae / "a.safetensors").unlink()
    assert folders.list("vae") == ["b.safetensors", os.path.join("sub", "c.safetensors")]


def test_cache_sees_a_root_dir_created_later(tmp_path):
    f = ModelFolders(tmp_path / "models")
    assert f.list("loras") == []
    touch(tmp_path / "models" / "loras" / "l.safetensors")
    assert f.list("loras") == ["l.safetensors"]


def test_full_path_first_dir_wins(tmp_path, folders):
    touch(tmp_path / "models" / "text_encoders" / "x.safetensors")
    touch(tmp_path / "models" / "clip" / "x.safetensors")
    touch(tmp_path / "models" / "clip" / "only_clip.safetensors")
    assert folders.full_path("clip", "x.safetensors") == tmp_path / "models" / "text_encoders" / "x.safetensors"
    assert folders.full_path("text_encoders", "only_clip.safetensors") == (
        tmp_path / "models" / "clip" / "only_clip.safetensors")
    assert folders.full_path("clip", "missing.safetensors") is None


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "a/../../x", "a\x00b", "", "..\\x"])
def test_full_path_refuses_escapes(folders, name):
    with pytest.raises(InputFileError):
        folders.full_path("checkpoints", name)


def test_extra_paths_and_new_kinds(tmp_path):
    extra = tmp_path / "a1111" / "Stable-diffusion"
    touch(extra / "sd.safetensors")
    touch(tmp_path / "my_stuff" / "anything.bin2")
    touch(tmp_path / "ext_clip" / "c.safetensors")
    f = ModelFolders(tmp_path / "models", {"checkpoints": [str(extra)], "my_kind": [str(tmp_path / "my_stuff")],
                                           "clip": [str(tmp_path / "ext_clip")]})
    assert f.list("checkpoints") == ["sd.safetensors"]
    assert f.full_path("checkpoints", "sd.safetensors") == extra / "sd.safetensors"
    assert f.list("my_kind") == ["anything.bin2"]  # unknown kinds accept every extension
    assert "my_kind" in f.kinds() and "clip" not in f.kinds()
    assert f.list("text_encoders") == ["c.safetensors"]


def test_output_dir_search_paths(tmp_path):
    touch(tmp_path / "output" / "checkpoints" / "merged.safetensors")
    touch(tmp_path / "output" / "clip" / "te.safetensors")
    f = ModelFolders(tmp_path / "models", output_dir=tmp_path / "output")
    assert f.list("checkpoints") == ["merged.safetensors"]
    assert f.list("text_encoders") == ["te.safetensors"]


def test_custom_nodes_and_annotators_dirs(tmp_path):
    touch(tmp_path / "cn" / "pack" / "__init__.py")
    touch(tmp_path / "ann" / "ControlNetHED.pth")
    f = ModelFolders(tmp_path / "models", custom_nodes_dirs=[tmp_path / "cn"], annotators_dir=tmp_path / "ann")
    assert f.list("custom_nodes") == [os.path.join("pack", "__init__.py")]
    assert f.full_path("annotators", "ControlNetHED.pth") == tmp_path / "ann" / "ControlNetHED.pth"
