"""UI-format workflows -> API prompts. Ground truth: pairs made by ComfyUI's real frontend 1.28.9 in Chromium
(tests/tools/make_ui_workflows.py: each workflow loaded with `app.loadGraphData`, then `app.graphToPrompt()`);
plus hand-computed cases for the rules, malformed workflows, and a CLI run of a UI workflow on the demo checkpoint.
"""
import copy
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from comfy_core import Engine, EngineConfig
from comfy_core.demo import ensure_demo_checkpoint
from comfy_core.errors import PromptError
from comfy_core.workflow_format import (
    dynamic_prompt,
    is_ui_workflow,
    widget_values,
    workflow_to_prompt,
)

DATA = Path(__file__).parent / "data" / "ui_workflows"
CASES = sorted(p.stem for p in DATA.glob("*.json"))


def make_engine(root: Path) -> Engine:
    return Engine(EngineConfig(models_dir=str(root / "models"), input_dir=str(root / "input"),
                               output_dir=str(root / "output"), temp_dir=str(root / "temp"),
                               user_dir=str(root / "user")))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    return make_engine(tmp_path_factory.mktemp("wf"))


@pytest.fixture(scope="module")
def object_info(engine):
    return engine.object_info()


def widget_signature(spec: dict) -> list:
    """The parts of a node's schema the conversion depends on: its inputs in order, which are widgets, which have a
    control value, which are socket-only or prompt text."""
    rows = []
    for section in ("required", "optional"):
        entries = (spec.get("input") or {}).get(section) or {}
        for name in (spec.get("input_order") or {}).get(section) or list(entries):
            kind, options = entries[name][0], (entries[name][1:2] or [{}])[0] or {}
            rows.append([section, name, "COMBO" if isinstance(kind, list) else kind,
                         *(bool(options.get(k)) for k in ("control_after_generate", "forceInput", "dynamicPrompts"))])
    return [spec.get("display_name"), rows]


def test_engine_object_info_matches_what_the_browser_got(object_info):
    """The fixtures were made against the server's /object_info; the engine must still describe those nodes alike."""
    served = json.loads((DATA.parent / "ui_workflows_widgets.json").read_text())
    assert {"KSampler", "KSamplerAdvanced", "LoadImage", "CLIPTextEncode", "RegexReplace"} <= set(served)
    assert {name: widget_signature(object_info[name]) for name in served} == served


def load(case: str) -> dict:
    return json.loads((DATA / f"{case}.json").read_text())


def test_the_fixtures_cover_the_brief():
    assert {"default_txt2img", "reroute_nodes", "primitive_node_seed", "muted_and_bypassed", "converted_widget_linked",
            "load_image_upload", "ksampler_advanced", "optional_inputs_unset", "subgraph",
            "nested_subgraph_bypass_inside", "subgraph_widget_input", "dynamic_prompt_comments",
            "legacy_converted_widgets"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_matches_the_frontends_graph_to_prompt(case, engine):
    pair = load(case)
    assert is_ui_workflow(pair["workflow"]) and not is_ui_workflow(pair["prompt"])
    assert engine.prompt_from_workflow(pair["workflow"]) == pair["prompt"]


def test_fixture_facts_the_rules_rely_on():
    """Spot checks of what the browser produced, so a regenerated fixture that changed meaning is noticed."""
    muted = load("muted_and_bypassed")["prompt"]
    assert muted["3"]["inputs"]["latent_image"] == ["5", 0]  # bypassed LatentUpscaleBy passes its LATENT on
    assert "negative" not in muted["3"]["inputs"]  # fed by a muted node: dropped
    assert set(muted) == {"3", "4", "5", "6", "7", "8", "9"}
    assert load("primitive_node_seed")["prompt"]["3"]["inputs"]["seed"] == 1234
    assert load("subgraph_widget_input")["prompt"]["12:3"]["inputs"]["cfg"] == 4.5  # promoted widget's value
    nested = load("nested_subgraph_bypass_inside")["prompt"]
    assert any(key.count(":") == 2 for key in nested)  # outer:inner:node ids
    assert load("dynamic_prompt_comments")["prompt"]["6"]["inputs"]["text"] == "a cat \n on a {red} mat, only"


def test_seed_control_values_are_skipped(object_info):
    values = widget_values(object_info["KSamplerAdvanced"],
                           ["disable", 5, "randomize", 20, 7.5, "euler", "karras", 0, 20, "disable"])
    assert values == {"add_noise": "disable", "noise_seed": 5, "steps": 20, "cfg": 7.5, "sampler_name": "euler",
                      "scheduler": "karras", "start_at_step": 0, "end_at_step": 20,
                      "return_with_leftover_noise": "disable"}
    # the frontend gives inputs named seed/noise_seed a control widget even without the spec flag
    spec = {"input": {"required": {"seed": ["INT", {}], "x": ["FLOAT", {}]}}}
    assert widget_values(spec, [9, "fixed", 0.5]) == {"seed": 9, "x": 0.5}
    assert widget_values(spec, {"x": 1.5, "other": 2}) == {"x": 1.5}  # a dict: by name
    assert widget_values(spec, [3]) == {"seed": 3}  # short list: the rest stay unset


def test_legacy_force_input_values_are_dropped():
    spec = {"input": {"required": {"a": ["INT", {"forceInput": True}], "b": ["STRING", {}], "c": ["MODEL"]}}}
    assert widget_values(spec, [4, "kept"]) == {"b": "kept"}  # old format: one value per forceInput too
    assert widget_values(spec, ["kept"]) == {"b": "kept"}


def test_dynamic_prompt():
    rng = random.Random(0)
    picks = {dynamic_prompt("a {red|green|blue} {cat|dog}", rng) for _ in range(200)}
    assert picks == {f"a {c} {a}" for c in ("red", "green", "blue") for a in ("cat", "dog")}
    assert dynamic_prompt("x {a|{b|b}} y", rng) in ("x a y", "x b y")
    assert dynamic_prompt("keep \\{this\\} // gone", rng) == "keep {this} "
    assert dynamic_prompt("a /* multi\nline */b", rng) == "a b"


def test_bypass_picks_an_input_of_the_wanted_type(object_info):
    """A bypassed node whose first input is of another type: the first input of the consumer's type is used."""
    workflow = {"nodes": [
        {"id": 1, "type": "EmptyLatentImage", "mode": 0, "inputs": [], "outputs": [{"type": "LATENT"}],
         "widgets_values": [64, 64, 1]},
        {"id": 2, "type": "SetLatentNoiseMask", "mode": 4, "outputs": [{"type": "LATENT"}],
         "inputs": [{"name": "mask", "type": "MASK", "link": None}, {"name": "samples", "type": "LATENT", "link": 1}]},
        {"id": 3, "type": "LatentUpscaleBy", "mode": 0, "outputs": [{"type": "LATENT"}],
         "inputs": [{"name": "samples", "type": "LATENT", "link": 2}], "widgets_values": ["bilinear", 2.0],
         "title": "Up"}],
        "links": [[1, 1, 0, 2, 1, "LATENT"], [2, 2, 0, 3, 0, "LATENT"]]}
    prompt = workflow_to_prompt(workflow, object_info)
    assert prompt == {
        "1": {"inputs": {"width": 64, "height": 64, "batch_size": 1}, "class_type": "EmptyLatentImage",
              "_meta": {"title": "Empty Latent Image"}},
        "3": {"inputs": {"upscale_method": "bilinear", "scale_by": 2.0, "samples": ["1", 0]},
              "class_type": "LatentUpscaleBy", "_meta": {"title": "Up"}}}


def _error_type(workflow, object_info) -> tuple[str, str]:
    with pytest.raises(PromptError) as caught:
        workflow_to_prompt(workflow, object_info)
    return caught.value.error["type"], caught.value.error["message"]


def test_errors_are_prompt_errors(object_info):
    workflow = copy.deepcopy(load("default_txt2img")["workflow"])
    workflow["nodes"][0]["type"] = "NoSuchNode"
    kind, message = _error_type(workflow, object_info)
    assert kind == "invalid_workflow" and "NoSuchNode" in message
    assert _error_type({"3": {"class_type": "KSampler", "inputs": {}}}, object_info)[0] == "invalid_workflow"

    dangling = copy.deepcopy(load("default_txt2img")["workflow"])
    dangling["links"] = dangling["links"][1:]  # an input still names the removed link
    assert "link" in _error_type(dangling, object_info)[1]

    group = {"nodes": [{"id": 1, "type": "workflow>My group", "mode": 0}], "links": []}
    assert "group nodes" in _error_type(group, object_info)[1]

    reroute = {"id": 0, "type": "Reroute", "mode": 0, "outputs": [{"type": "*"}]}
    loop = {"nodes": [{**reroute, "id": 1, "inputs": [{"name": "", "type": "*", "link": 2}]},
                      {**reroute, "id": 2, "inputs": [{"name": "", "type": "*", "link": 1}]},
                      {"id": 3, "type": "PreviewImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE",
                                                                               "link": 3}]}],
            "links": [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 1, 0, "*"], [3, 1, 0, 3, 0, "IMAGE"]]}
    assert "Circular" in _error_type(loop, object_info)[1]

    broken = {"nodes": [{"id": 1, "type": "PreviewImage", "mode": 0, "inputs": "nonsense"}], "links": []}
    assert "Malformed" in _error_type(broken, object_info)[1]


def test_cli_runs_a_ui_workflow_and_the_png_it_saved(tmp_path):
    engine = make_engine(tmp_path)
    ensure_demo_checkpoint(engine.folders)
    workflow = load("default_txt2img")["workflow"]
    path = tmp_path / "workflow.json"
    path.write_text(json.dumps(workflow))

    def run(target: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "comfy_core.cli", "run", str(target), "--set", "3.steps=1"],
                              check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    out = run(path)
    assert out.returncode == 0, out.stderr
    (png,) = out.stdout.split()
    assert Path(png) == tmp_path / "output" / "ComfyUI_00001_.png"
    with Image.open(png) as image:  # the frontend sends the workflow along; SaveImage embeds it
        assert json.loads(image.info["workflow"]) == workflow
        assert json.loads(image.info["prompt"])["3"]["inputs"]["steps"] == 1
    again = run(Path(png))  # a PNG that ComfyUI saved runs as its prompt
    assert again.returncode == 0, again.stderr
    assert Path(again.stdout.split()[0]).name == "ComfyUI_00002_.png"

    bad = dict(workflow, nodes=[dict(workflow["nodes"][0], type="NoSuchNode"), *workflow["nodes"][1:]])
    path.write_text(json.dumps(bad))
    failed = run(path)
    assert failed.returncode == 1 and "NoSuchNode" in failed.stderr and "Traceback" not in failed.stderr
