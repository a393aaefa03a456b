"""Custom node packs written against ComfyUI's V3 API (`from comfy_api.latest import ComfyExtension, io, ui`) load
through `comfy_entrypoint()`, report V3-shaped `/object_info` entries and run through `Engine.run`."""
from __future__ import annotations

import logging
import sys
from typing import Any

import pytest
import torch
from PIL import Image
from test_comfy_compat import make_engine

from comfy_core.errors import NodeExecutionError, PromptError

# The field order of a real V3 entry in ComfyUI 0.3.64's /object_info (LatentCut, comfy_extras.nodes_latent).
REAL_V3_KEYS = ["input", "input_order", "output", "output_is_list", "output_name", "output_tooltips", "name",
                "display_name", "description", "python_module", "category", "output_node", "deprecated",
                "experimental", "api_node"]

KINDS_PACK = '''
from enum import Enum

from comfy_api.latest import ComfyExtension, io, ui


class Mode(str, Enum):
    ADD = "add"
    MUL = "mul"


class V3AllInputs(io.ComfyNode):
    """Scales an image by a factor made of two numbers."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="V3AllInputs", display_name="All Inputs (V3)", category="v3pack",
            description="Scales the image by count and scale.",
            inputs=[
                io.Image.Input("image", tooltip="Source image."),
                io.Int.Input("count", default=2, min=0, max=10, step=1, control_after_generate=True),
                io.Float.Input("scale", default=0.5, min=0.0, max=2.0, step=0.01, round=0.001,
                               display_mode=io.NumberDisplay.slider),
                io.String.Input("label", default="hi", multiline=True, placeholder="text"),
                io.Boolean.Input("flip", default=False, label_on="yes", label_off="no"),
                io.Combo.Input("mode", options=Mode, default=Mode.ADD),
                io.MultiCombo.Input("tags", options=["a", "b", "c"], default=["a"]),
                io.Mask.Input("mask", optional=True),
            ],
            outputs=[io.Image.Output(display_name="scaled", tooltip="The scaled image."), io.Int.Output(),
                     io.String.Output()],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, image, count, scale, label, flip, mode, tags, mask=None):
        factor = scale * count if mode == "mul" else scale + count
        out = image * factor
        if flip:
            out = out.flip(2)
        return io.NodeOutput(out, count, f"{label}|{cls.hidden.unique_id}|{tags}|{cls.hidden.prompt}")


class V3ShowText(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3ShowText", category="v3pack", is_output_node=True,
                         inputs=[io.String.Input("text", force_input=True)], outputs=[])

    @classmethod
    def execute(cls, text):
        return io.NodeOutput(ui=ui.PreviewText(text))


class V3Preview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Preview", display_name="Preview (V3)", category="v3pack", is_output_node=True,
                         inputs=[io.Image.Input("images")])

    @classmethod
    def execute(cls, images):
        return io.NodeOutput(ui=ui.PreviewImage(images, cls=cls))


class V3Extension(ComfyExtension):
    async def get_node_list(self):
        return [V3AllInputs, V3ShowText, V3Preview]


async def comfy_entrypoint():
    return V3Extension()
'''

FLOW_PACK = '''
import asyncio
import uuid

from comfy_api.latest import ComfyExtension, io, ui
from comfy_execution.graph_utils import GraphBuilder

LOADED = []


class V3LazySwitch(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3LazySwitch", category="v3flow",
                         inputs=[io.Boolean.Input("use_a", default=True),
                                 io.String.Input("a", lazy=True, force_input=True),
                                 io.String.Input("b", lazy=True, force_input=True)],
                         outputs=[io.String.Output()])

    @classmethod
    def check_lazy_status(cls, use_a, a=None, b=None):
        return ["a"] if use_a else ["b"]

    @classmethod
    async def execute(cls, use_a, a=None, b=None):
        await asyncio.sleep(0)
        return io.NodeOutput(a if use_a else b)


class V3Text(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Text", category="v3flow", inputs=[io.String.Input("value")],
                         outputs=[io.String.Output()])

    @classmethod
    def execute(cls, value):
        if value == "boom":
            raise RuntimeError("this branch must not run")
        return (value,)  # a plain tuple is accepted as well


class V3Stamp(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Stamp", category="v3flow", is_output_node=True,
                         inputs=[io.Int.Input("value", default=0, min=-100, max=100),
                                 io.String.Input("salt", default="")])

    @classmethod
    def fingerprint_inputs(cls, value, salt):
        return float("nan") if salt == "always" else salt

    @classmethod
    def validate_inputs(cls, value):
        return True if value >= 0 else "value must not be negative"

    @classmethod
    def execute(cls, value, salt):
        return io.NodeOutput(ui=ui.PreviewText(f"{value}:{uuid.uuid4().hex}"))


class V3Expand(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Expand", category="v3flow", enable_expand=True,
                         inputs=[io.String.Input("value")], outputs=[io.String.Output()])

    @classmethod
    def execute(cls, value):
        graph = GraphBuilder()
        inner = graph.node("V3Text", value=value + "!")
        return io.NodeOutput(inner.out(0), expand=graph.finalize())


class V3BadExpand(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3BadExpand", category="v3flow", inputs=[io.String.Input("value")],
                         outputs=[io.String.Output()])

    @classmethod
    def execute(cls, value):
        return io.NodeOutput(value, expand={})


class V3Blocker(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Blocker", category="v3flow", inputs=[io.String.Input("value")],
                         outputs=[io.String.Output()])

    @classmethod
    def execute(cls, value):
        return io.NodeOutput(block_execution="blocked on purpose")


class V3Broken(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3Broken", inputs=[io.Int.Input("x")], outputs=[io.Int.Output(id="x")])

    @classmethod
    def execute(cls, x):
        return io.NodeOutput(x)


class V3Extension(ComfyExtension):
    async def on_load(self):
        LOADED.append(True)

    async def get_node_list(self):
        return [V3LazySwitch, V3Text, V3Stamp, V3Expand, V3BadExpand, V3Blocker, V3Broken]


def comfy_entrypoint():  # a sync entrypoint is accepted too
    return V3Extension()
'''

MIXED_PACK = '''
from comfy_api.v0_0_2 import io


class V3InMappings(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(node_id="V3InMappings", category="mixed", is_deprecated=True, is_experimental=True,
                         inputs=[io.Custom("WIDGET_BOX").Input("box", optional=True),
                                 io.AnyType.Input("anything"),
                                 io.MultiType.Input("either", types=[io.Image, io.Mask])],
                         outputs=[io.Custom("WIDGET_BOX").Output(is_output_list=True)])

    @classmethod
    def execute(cls, anything, either, box=None):
        return io.NodeOutput([anything, anything])


NODE_CLASS_MAPPINGS = {"V3InMappings": V3InMappings}
'''


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("v3")
    with make_engine(root, {"v3_kinds": KINDS_PACK, "v3_flow": FLOW_PACK, "v3_mixed": MIXED_PACK}) as eng:
        eng.root = root
        yield eng


def _image(width: int = 4, height: int = 3, color: int = 0x336699) -> dict[str, Any]:
    return {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1, "color": color}}


def _all_inputs(**overrides: Any) -> dict[str, Any]:
    # a multi-select value goes in as one choice: the prompt format reads every list as a link (so does ComfyUI's)
    inputs = {"image": ["1", 0], "count": 2, "scale": 0.5, "label": "hi", "flip": False, "mode": "add", "tags": "c"}
    return {"class_type": "V3AllInputs", "inputs": {**inputs, **overrides}}


def test_object_info_has_the_v3_shape(engine):
    info = engine.object_info("V3AllInputs")["V3AllInputs"]
    assert list(info) == REAL_V3_KEYS
    assert info == {
        "input": {
            "required": {
                "image": ["IMAGE", {"tooltip": "Source image."}],
                "count": ["INT", {"default": 2, "min": 0, "max": 10, "step": 1, "control_after_generate": True}],
                "scale": ["FLOAT", {"default": 0.5, "min": 0.0, "max": 2.0, "step": 0.01, "round": 0.001,
                                    "display": "slider"}],
                "label": ["STRING", {"default": "hi", "multiline": True, "placeholder": "text"}],
                "flip": ["BOOLEAN", {"default": False, "label_on": "yes", "label_off": "no"}],
                "mode": ["COMBO", {"default": "add", "multiselect": False, "options": ["add", "mul"]}],
                "tags": ["COMBO", {"default": ["a"], "multiselect": True, "options": ["a", "b", "c"],
                                   "multi_select": True}],
            },
            "optional": {"mask": ["MASK", {}]},
            "hidden": {"unique_id": ["UNIQUE_ID"]},
        },
        "input_order": {"required": ["image", "count", "scale", "label", "flip", "mode", "tags"],
                        "optional": ["mask"], "hidden": ["unique_id"]},
        "output": ["IMAGE", "INT", "STRING"], "output_is_list": [False, False, False],
        "output_name": ["scaled", "INT", "STRING"], "output_tooltips": ["The scaled image.", None, None],
        "name": "V3AllInputs", "display_name": "All Inputs (V3)", "description": "Scales the image by count and scale.",
        "python_module": "custom_nodes.v3_kinds", "category": "v3pack", "output_node": False, "deprecated": False,
        "experimental": False, "api_node": False,
    }


def test_output_node_gets_prompt_hidden_inputs_like_comfyui(engine):
    # As ComfyUI's LoraSave (a V3 output node): no outputs, prompt + extra_pnginfo hidden, display_name null if unset
    info = engine.object_info("V3ShowText")["V3ShowText"]
    assert info["input"] == {"required": {"text": ["STRING", {"forceInput": True, "multiline": False}]},
                             "hidden": {"prompt": ["PROMPT"], "extra_pnginfo": ["EXTRA_PNGINFO"]}}
    assert info["input_order"] == {"required": ["text"], "hidden": ["prompt", "extra_pnginfo"]}
    assert (info["output"], info["output_tooltips"], info["output_node"]) == ([], [], True)
    assert info["display_name"] is None and info["python_module"] == "custom_nodes.v3_kinds"


def test_v3_classes_in_node_class_mappings_and_custom_types(engine):
    info = engine.object_info("V3InMappings")["V3InMappings"]
    assert info["input"] == {"required": {"anything": ["*", {}], "either": ["IMAGE,MASK", {}]},
                             "optional": {"box": ["WIDGET_BOX", {}]}}
    assert (info["output"], info["output_is_list"], info["deprecated"], info["experimental"]) == (
        ["WIDGET_BOX"], [True], True, True)
    assert info["python_module"] == "custom_nodes.v3_mixed"


def test_run_passes_every_input_kind_and_hidden_unique_id(engine):
    prompt = {"1": _image(), "2": _all_inputs(count=3, scale=0.25, mode="mul", flip=True),
              "3": {"class_type": "V3ShowText", "inputs": {"text": ["2", 2]}}}
    result = engine.run(prompt, timeout=60)
    # the hidden prompt was not requested by V3AllInputs: it reads None
    assert result.outputs["3"] == {"text": ["hi|2|c|None"]}


def test_preview_image_writes_temp_png_with_prompt_metadata(engine):
    prompt = {"1": _image(color=0x808080), "2": _all_inputs(count=1, scale=0.5, mode="mul"),
              "3": {"class_type": "V3Preview", "inputs": {"images": ["2", 0]}}}
    result = engine.run(prompt, timeout=60)
    ui = result.outputs["3"]
    assert ui["animated"] == [False]
    (saved,) = ui["images"]
    assert saved["type"] == "temp" and saved["subfolder"] == ""
    assert saved["filename"].startswith("ComfyUI_temp_") and saved["filename"].endswith("_00001_.png")
    with Image.open(engine.root / "temp" / saved["filename"]) as png:
        assert png.size == (4, 3)
        # 0x80 = 128/255, halved by scale 0.5 * count 1 -> 64/255 -> PNG value 64 (truncating as ComfyUI)
        assert png.getpixel((0, 0)) == (64, 64, 64)
        assert '"V3Preview"' in png.text["prompt"]


def test_image_math(engine):
    # EmptyImage color 0x336699, scale + count = 0.5 + 2 -> 2.5x, clamped to 1 on save; check values via the text
    prompt = {"1": _image(width=2, height=1, color=0x010203), "2": _all_inputs(),
              "3": {"class_type": "V3Preview", "inputs": {"images": ["2", 0]}}}
    saved = engine.run(prompt, timeout=60).outputs["3"]["images"][0]
    with Image.open(engine.root / "temp" / saved["filename"]) as png:
        expected = tuple(int(v / 255 * 2.5 * 255) for v in (1, 2, 3))  # 2.5x each channel, truncated
        assert png.getpixel((0, 0)) == expected == png.getpixel((1, 0))


def test_lazy_inputs_only_evaluate_the_needed_branch(engine):
    def prompt(use_a: bool) -> dict[str, Any]:
        return {"1": {"class_type": "V3Text", "inputs": {"value": "left"}},
                "2": {"class_type": "V3Text", "inputs": {"value": "boom"}},
                "3": {"class_type": "V3LazySwitch", "inputs": {"use_a": use_a, "a": ["1", 0], "b": ["2", 0]}},
                "4": {"class_type": "V3ShowText", "inputs": {"text": ["3", 0]}}}
    assert engine.run(prompt(True), timeout=60).outputs["4"] == {"text": ["left"]}  # async execute, "b" never ran
    with pytest.raises(NodeExecutionError, match="this branch must not run"):
        engine.run(prompt(False), timeout=60)


def test_fingerprint_inputs_controls_the_cache(engine):
    def stamp(salt: str) -> str:
        prompt = {"1": {"class_type": "V3Stamp", "inputs": {"value": 7, "salt": salt}}}
        return engine.run(prompt, timeout=60).outputs["1"]["text"][0]
    first = stamp("x")
    assert first.startswith("7:") and stamp("x") == first  # same fingerprint: cached
    always = stamp("always")
    assert always != first and stamp("always") != always  # NaN fingerprint: runs every time


def test_validate_inputs_and_multiselect_errors(engine):
    with pytest.raises(PromptError) as bad_value:
        engine.run({"1": {"class_type": "V3Stamp", "inputs": {"value": -1, "salt": ""}}}, timeout=60)
    (error,) = bad_value.value.node_errors["1"]["errors"]
    assert error["type"] == "custom_validation_failed"
    assert error["details"] == "value - value must not be negative"
    with pytest.raises(PromptError) as bad_tag:
        engine.run({"1": _image(), "2": _all_inputs(tags="zzz"),
                    "3": {"class_type": "V3ShowText", "inputs": {"text": ["2", 2]}}}, timeout=60)
    assert "['zzz'] not in ['a', 'b', 'c']" in str(bad_tag.value.node_errors["2"])
    with pytest.raises(PromptError) as bad_combo:  # a single-choice combo keeps the built-in check
        engine.run({"1": _image(), "2": _all_inputs(mode="pow"),
                    "3": {"class_type": "V3ShowText", "inputs": {"text": ["2", 2]}}}, timeout=60)
    assert bad_combo.value.node_errors["2"]["errors"][0]["type"] == "value_not_in_list"


def test_expand_blocker_and_schema_rules(engine):
    expanded = engine.run({"1": {"class_type": "V3Expand", "inputs": {"value": "x"}},
                           "2": {"class_type": "V3ShowText", "inputs": {"text": ["1", 0]}}}, timeout=60)
    assert expanded.outputs["2"] == {"text": ["x!"]}
    with pytest.raises(NodeExecutionError, match="enable_expand"):
        engine.run({"1": {"class_type": "V3BadExpand", "inputs": {"value": "x"}},
                    "2": {"class_type": "V3ShowText", "inputs": {"text": ["1", 0]}}}, timeout=60)
    blocked = engine.run({"1": {"class_type": "V3Blocker", "inputs": {"value": "x"}},
                          "2": {"class_type": "V3ShowText", "inputs": {"text": ["1", 0]}}}, timeout=60)
    assert "2" not in blocked.outputs


def test_entrypoint_runs_on_load_and_skips_only_the_broken_node(engine):
    assert {"V3LazySwitch", "V3Text", "V3Stamp", "V3Expand"} <= set(engine.registry.classes)
    assert "V3Broken" not in engine.registry  # an input and an output share the id "x"
    flows = [m for name, m in sys.modules.items() if name.endswith(".v3_flow")]
    assert flows and all(flow.LOADED == [True] for flow in flows)  # on_load ran once per engine that loaded it


def test_broken_node_is_logged(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="comfy_core.compat.comfy_api.v1_adapter"):
        engine = make_engine(tmp_path, {"v3_flow": FLOW_PACK})
    with engine:
        assert "V3Stamp" in engine.registry
    assert "V3 node 'V3Broken' skipped" in caplog.text
    assert "ids must be unique between inputs and outputs, but ['x'] are not" in caplog.text


def test_schema_helpers_without_an_engine():
    from comfy_core import compat

    compat.install()
    from comfy_api.latest import io
    from comfy_api.latest import ui as ui_module

    assert io.Combo.Input("c", options=["a"], upload=io.UploadType.image).as_dict() == {
        "multiselect": False, "options": ["a"], "image_upload": True}
    assert ui_module.PreviewText("t").as_dict() == {"text": ("t",)}
    saved = ui_module.SavedResult("a.png", "sub", io.FolderType.output)
    assert saved == {"filename": "a.png", "subfolder": "sub", "type": "output"} and saved.type is io.FolderType.output
    assert ui_module.SavedImages([saved], is_animated=True).as_dict() == {"images": [saved], "animated": (True,)}
    holder = io.HiddenHolder.from_kinds({"UNIQUE_ID": "5"})
    assert (holder.unique_id, holder.prompt) == ("5", None)
    assert torch.equal(io.NodeOutput(1, 2)[1] * torch.ones(1), torch.full((1,), 2.0))


def test_run_sync_inside_a_running_loop():
    """An async entrypoint still loads when the engine is built inside a running event loop (an ASGI startup)."""
    import asyncio

    from comfy_core.compat.comfy_api.v1_adapter import run_sync

    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def main() -> int:
        return run_sync(answer())

    assert run_sync(answer()) == 42 and asyncio.run(main()) == 42 and run_sync(7) == 7
