"""Every core node ComfyUI reports in /object_info exists here with the same structure and values.

Prose (descriptions, tooltips) is our own, and file-name choice lists depend on the folders, so both are left out of
the comparison. The one deliberate difference (CLIPVisionEncode's `crop` is optional) is spelled out below.
"""
import json
from pathlib import Path

import pytest

from comfy_core import Engine, EngineConfig

REFERENCE = json.loads((Path(__file__).parent / "data" / "comfyui_object_info.json").read_text())
FILE_INPUTS = {"ckpt_name", "config_name", "vae_name", "lora_name", "clip_name", "clip_name1", "clip_name2",
               "unet_name", "control_net_name", "image"}


def normalise(info: dict) -> dict:
    info = json.loads(json.dumps(info))
    info.pop("description", None)
    info.pop("output_tooltips", None)
    for section, inputs in info["input"].items():
        for name, spec in inputs.items():
            if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict):
                spec[1].pop("tooltip", None)
            if name in FILE_INPUTS and isinstance(spec, list) and isinstance(spec[0], list):
                spec[0] = "<files>"
    return info


@pytest.fixture(scope="module")
def object_info(tmp_path_factory):
    root = tmp_path_factory.mktemp("object_info")
    engine = Engine(EngineConfig(models_dir=str(root / "m"), input_dir=str(root / "i"), output_dir=str(root / "o"),
                                 temp_dir=str(root / "t")))
    return engine.object_info()


def test_all_core_nodes_present(object_info):
    assert sorted(set(REFERENCE) - set(object_info)) == []


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_node_matches_comfyui(object_info, name):
    if name not in object_info:
        pytest.fail(f"{name} is not implemented")
    expected, ours = normalise(REFERENCE[name]), normalise(object_info[name])
    if name == "CLIPVisionEncode":  # documented difference: crop is optional with default "center"
        crop = expected["input"]["required"].pop("crop")
        expected["input"]["optional"] = {"crop": [crop[0], {"default": "center"}]}
        expected["input_order"] = {"required": ["clip_vision", "image"], "optional": ["crop"]}
    assert ours == expected
    assert ("output_tooltips" in object_info[name]) == ("output_tooltips" in REFERENCE[name])
