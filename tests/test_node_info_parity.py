"""/object_info parity for the model-free built-in nodes: every field equals real ComfyUI 0.3.64's entry
(tests/data/object_info_model_free_nodes.json), except the prose of descriptions and tooltips (ours are our own words,
but present exactly where ComfyUI has them) and the file lists of LoadImage/LoadImageMask (they list this machine)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fixtures_nodes import without_prose

from comfy_core.nodes import conditioning, image, latent, mask, primitives
from comfy_core.nodes.registry import node_info

MODULES = (latent, image, mask, conditioning, primitives)
REFERENCE = json.loads((Path(__file__).parent / "data" / "object_info_model_free_nodes.json").read_text())
FILE_LIST_INPUTS = {("LoadImage", "image"), ("LoadImageMask", "image")}


def normalized(name: str, info: dict[str, Any]) -> dict[str, Any]:
    """Prose replaced by markers that keep where it exists; machine-specific file lists emptied."""
    info = without_prose(info)
    for node, field in FILE_LIST_INPUTS:
        if node == name:
            info["input"]["required"][field][0] = []
    return info


NODES = {name: (cls, module.NODE_DISPLAY_NAME_MAPPINGS.get(name)) for module in MODULES
         for name, cls in module.NODE_CLASS_MAPPINGS.items()}


def test_every_reference_node_is_implemented():
    assert sorted(NODES) == sorted(REFERENCE)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_node_info_matches_comfyui(name):
    cls, display = NODES[name]
    ours = node_info(name, cls, display)
    assert list(ours) == list(REFERENCE[name])  # same fields, same order
    assert normalized(name, ours) == normalized(name, REFERENCE[name])


def test_our_prose_is_our_own():
    for name, (cls, display) in NODES.items():
        ours, theirs = node_info(name, cls, display), REFERENCE[name]
        if theirs["description"]:
            assert ours["description"] and ours["description"] != theirs["description"], name
        for key, spec in theirs["input"].get("required", {}).items():
            if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict) and "tooltip" in spec[1]:
                assert ours["input"]["required"][key][1]["tooltip"] != spec[1]["tooltip"], (name, key)


def test_file_lists_come_from_the_engine(tmp_path):
    from PIL import Image

    from comfy_core import context
    from comfy_core.config import EngineConfig
    from comfy_core.context import NodeContext
    from comfy_core.folders import ModelFolders
    from comfy_core.storage import Storage

    storage = Storage(tmp_path / "in", tmp_path / "out", tmp_path / "tmp")
    Image.new("RGB", (1, 1)).save(storage.root("input") / "pic.png")
    (storage.root("input") / "data.bin").write_bytes(b"")
    ctx = NodeContext(config=EngineConfig(), storage=storage, folders=ModelFolders(tmp_path / "models"))
    with context.use(ctx):
        assert node_info("LoadImage", image.LoadImage)["input"]["required"]["image"][0] == ["pic.png"]
        assert node_info("LoadImageMask", image.LoadImageMask)["input"]["required"]["image"][0] == [
            "data.bin", "pic.png"]
