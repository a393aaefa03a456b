"""CLIPTextEncode / CLIPTextEncodeSDXL / CLIPTextEncodeSDXLRefiner / CLIPSetLastLayer: object_info and outputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures_text import tiny_refiner_text, tiny_sd1_text, tiny_sdxl_text

from comfy_core.models.text_encoders import load_clip_from_state_dict
from comfy_core.nodes import text
from comfy_core.nodes.registry import node_info

REFERENCE = json.loads((Path(__file__).parent / "data" / "text_nodes_object_info.json").read_text())


def _without_prose(info: dict) -> dict:
    info = json.loads(json.dumps(info))
    info.pop("description", None)
    info["output_tooltips"] = len(info.get("output_tooltips", []))  # ComfyUI's wording is not ours; count only
    for spec in info["input"]["required"].values():
        if len(spec) > 1:
            spec[1].pop("tooltip", None)
    return info


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_object_info_matches_comfyui(name):
    cls = text.NODE_CLASS_MAPPINGS[name]
    ours = node_info(name, cls, text.NODE_DISPLAY_NAME_MAPPINGS.get(name))
    assert _without_prose(ours) == _without_prose(REFERENCE[name])
    assert list(ours) == list(REFERENCE[name])  # same fields, same order
    assert ("tooltip" in str(ours["input"])) == ("tooltip" in str(REFERENCE[name]["input"]))


@pytest.fixture(scope="module")
def sd1():
    return load_clip_from_state_dict(tiny_sd1_text())


@pytest.fixture(scope="module")
def sdxl():
    return load_clip_from_state_dict(tiny_sdxl_text())


def test_clip_text_encode(sd1):
    (conditioning,) = text.CLIPTextEncode().encode(sd1, "a photo of a cat")
    assert len(conditioning) == 1
    cond, extras = conditioning[0]
    assert cond.shape == (1, 77, 32) and set(extras) == {"pooled_output"} and extras["pooled_output"].shape == (1, 32)
    torch.testing.assert_close(cond, sd1.encode("a photo of a cat"))
    with pytest.raises(RuntimeError, match="clip input is invalid"):
        text.CLIPTextEncode().encode(None, "x")


def test_set_last_layer_returns_a_modified_clone(sd1):
    (skipped,) = text.CLIPSetLastLayer().set_last_layer(sd1, -2)
    assert skipped is not sd1 and skipped.layer_idx == -2 and sd1.layer_idx is None
    a = text.CLIPTextEncode().encode(skipped, "cat")[0][0][0]
    b = text.CLIPTextEncode().encode(sd1, "cat")[0][0][0]
    assert not torch.allclose(a, b)


def test_sdxl_node_extras_and_separate_prompts(sdxl):
    node = text.CLIPTextEncodeSDXL()
    (conditioning,) = node.encode(sdxl, 1024, 768, 8, 16, 2048, 1536, "a cat", "a dog")
    cond, extras = conditioning[0]
    assert cond.shape == (1, 77, 80) and extras["pooled_output"].shape == (1, 48)
    assert {k: v for k, v in extras.items() if k != "pooled_output"} == {
        "width": 1024, "height": 768, "crop_w": 8, "crop_h": 16, "target_width": 2048, "target_height": 1536}
    both_dog = sdxl.encode("a dog")
    both_cat = sdxl.encode("a cat")
    torch.testing.assert_close(cond[..., :32], both_dog[..., :32])  # CLIP-L got text_l
    torch.testing.assert_close(cond[..., 32:], both_cat[..., 32:])  # bigG got text_g


def test_sdxl_node_pads_the_shorter_prompt(sdxl):
    (conditioning,) = text.CLIPTextEncodeSDXL().encode(sdxl, 1024, 1024, 0, 0, 1024, 1024, "cat " * 90, "dog")
    assert conditioning[0][0].shape == (1, 154, 80)


def test_sdxl_node_rejects_sd1_clip(sd1):
    with pytest.raises(ValueError, match="SDXL CLIP"):
        text.CLIPTextEncodeSDXL().encode(sd1, 1024, 1024, 0, 0, 1024, 1024, "a", "b")


def test_refiner_node():
    clip = load_clip_from_state_dict(tiny_refiner_text())
    (conditioning,) = text.CLIPTextEncodeSDXLRefiner().encode(clip, 2.5, 640, 512, "a cat")
    cond, extras = conditioning[0]
    assert cond.shape == (1, 77, 48)
    assert extras["aesthetic_score"] == 2.5 and extras["width"] == 640 and extras["height"] == 512
    assert extras["pooled_output"].shape == (1, 48)
