"""ComfyUI custom node packs that import ComfyUI's own modules (folder_paths, comfy.*, nodes, server,
comfy_execution) load through `EngineConfig.custom_nodes_dirs` and run, each engine seeing its own folders."""
from __future__ import annotations

import json
import logging
import sys
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import fixtures_models as fm
import pytest
import torch
from comfy_core.asgi import create_app
from fixtures_asgi import running_server
from fixtures_ksampler import base_graph, capture_nodes
from websockets.sync.client import connect

from comfy_core import Engine, EngineConfig, compat
from comfy_core.context import NoContextError
from comfy_core.errors import Interrupted, NodeExecutionError
from comfy_core.events import Progress

ALIAS_NAMES = [alias for alias, _ in compat.ALIASES]

LOADER_PACK = '''
import os
import folder_paths

# module-level setup, as model-loader packs do at import time
folder_paths.add_model_folder_path("detectors", os.path.join(folder_paths.models_dir, "detectors"))
if "onnx_models" not in folder_paths.folder_names_and_paths:
    folder_paths.folder_names_and_paths["onnx_models"] = (
        [os.path.join(folder_paths.models_dir, "onnx")], {".onnx"})
SEEN_MODELS_DIR = folder_paths.models_dir


class PackCheckpointPath:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (folder_paths.get_filename_list("checkpoints"),),
                             "onnx_name": (folder_paths.get_filename_list("onnx_models"),)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "pack"

    def run(self, ckpt_name, onnx_name):
        return {"ui": {"path": [folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)],
                       "onnx": [folder_paths.get_full_path("onnx_models", onnx_name)],
                       "seen": [SEEN_MODELS_DIR],
                       "detectors": folder_paths.get_folder_paths("detectors")}}


NODE_CLASS_MAPPINGS = {"PackCheckpointPath": PackCheckpointPath}
NODE_DISPLAY_NAME_MAPPINGS = {"PackCheckpointPath": "Checkpoint Path (pack)"}
'''

PROGRESS_PACK = '''
import threading
import comfy.utils
import comfy.model_management


class PackSlowCounter:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 5}), "self_interrupt_at": ("INT", {"default": -1})}}

    RETURN_TYPES = ()
    FUNCTION = "count"
    OUTPUT_NODE = True
    CATEGORY = "pack"

    def count(self, steps, self_interrupt_at):
        pbar = comfy.utils.ProgressBar(steps)
        done = 0
        for i in range(steps):
            if i == self_interrupt_at:
                comfy.model_management.interrupt_current_processing()
                comfy.model_management.throw_exception_if_processing_interrupted()
            if i == 0:  # packs also update bars from their own threads
                worker = threading.Thread(target=pbar.update, args=(1,))
                worker.start()
                worker.join()
            else:
                pbar.update(1)  # an interrupt point
            done += 1
        return {"ui": {"done": [done], "device": [str(comfy.model_management.get_torch_device())]}}


NODE_CLASS_MAPPINGS = {"PackSlowCounter": PackSlowCounter}
'''

SERVER_PACK = '''
from server import PromptServer

ROUTES = PromptServer.instance.routes


@ROUTES.get("/pack/hello")
async def hello(request):
    return None


class PackNotify:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": "hi"})}, "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ()
    FUNCTION = "notify"
    OUTPUT_NODE = True
    CATEGORY = "pack"

    def notify(self, text, unique_id):
        server = PromptServer.instance
        server.send_sync("pack.feedback", {"node_id": unique_id, "text": text}, server.client_id)
        server.send_sync("pack.broadcast", {"text": text.upper()})
        return {"ui": {"sent": [server.client_id]}}


NODE_CLASS_MAPPINGS = {"PackNotify": PackNotify}
'''

SAMPLER_PACK = '''
import comfy.samplers
import nodes

BUILTINS_AT_IMPORT = "KSampler" in nodes.NODE_CLASS_MAPPINGS


class PackKSampler(nodes.KSampler):
    """A subclass as sampler packs write them: same sampling, own inputs."""

    @classmethod
    def INPUT_TYPES(cls):
        spec = super().INPUT_TYPES()
        spec["required"]["sampler_name"] = (comfy.samplers.KSampler.SAMPLERS,)
        spec["required"]["scheduler"] = (comfy.samplers.KSampler.SCHEDULERS,)
        spec["required"]["size_hint"] = ("INT", {"default": 512, "max": nodes.MAX_RESOLUTION})
        return spec

    def sample(self, size_hint, **kwargs):
        return super().sample(**kwargs)


class PackCommonSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
                             "latent": ("LATENT",), "seed": ("INT", {"default": 0}),
                             "sampler_name": (comfy.samplers.SAMPLER_NAMES,)}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "go"
    CATEGORY = "pack"

    def go(self, model, positive, negative, latent, seed, sampler_name):
        assert BUILTINS_AT_IMPORT
        return nodes.common_ksampler(model, seed, 2, 7.0, sampler_name, "normal", positive, negative, latent)


NODE_CLASS_MAPPINGS = {"PackKSampler": PackKSampler, "PackCommonSampler": PackCommonSampler,
                       "PackSameKSampler": nodes.KSampler}
'''

GRAPH_PACK = '''
from comfy_execution.graph import ExecutionBlocker
from comfy_execution.graph_utils import GraphBuilder, is_link


class PackAddOne:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "add"
    CATEGORY = "pack"

    def add(self, value):
        return (value + 1,)


class PackRepeatAdd:
    """Expands into `times` chained PackAddOne nodes (ComfyUI node expansion)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0}), "times": ("INT", {"default": 3})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "expand"
    CATEGORY = "pack"

    def expand(self, value, times):
        graph = GraphBuilder()
        current = value
        for _ in range(times):
            current = graph.node("PackAddOne", value=current).out(0)
        assert is_link(current)
        return {"result": (current,), "expand": graph.finalize()}


class PackGate:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0}), "open": ("BOOLEAN", {"default": True})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "gate"
    CATEGORY = "pack"

    def gate(self, value, open):
        return (value if open else ExecutionBlocker(None),)


class PackShowInt:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0})}}

    RETURN_TYPES = ()
    FUNCTION = "show"
    OUTPUT_NODE = True
    CATEGORY = "pack"

    def show(self, value):
        return {"ui": {"value": [value]}}


NODE_CLASS_MAPPINGS = {"PackAddOne": PackAddOne, "PackRepeatAdd": PackRepeatAdd, "PackGate": PackGate,
                       "PackShowInt": PackShowInt}
'''

SAVE_PACK = '''
import os
import numpy as np
from PIL import Image
import folder_paths
import nodes


class PackTempPreview(nodes.SaveImage):
    """The usual preview node of packs: ComfyUI's PreviewImage pattern on SaveImage."""

    def __init__(self):
        self.output_dir = folder_paths.get_temp_directory()
        self.type = "temp"
        self.prefix_append = "_temp_pack"
        self.compress_level = 1


class PackSaveImage:
    """Saves like ComfyUI's SaveImage, through folder_paths.get_save_image_path."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "pack"}),
                             "elsewhere": ("BOOLEAN", {"default": False})}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "pack"

    def save(self, images, filename_prefix, elsewhere):
        target = "/tmp" if elsewhere else folder_paths.get_output_directory()
        full_folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, target, images[0].shape[1], images[0].shape[0])
        results = []
        for image in images:
            pixels = (255.0 * image.cpu().numpy()).clip(0, 255).astype(np.uint8)
            file = f"{filename}_{counter:05}_.png"
            Image.fromarray(pixels).save(os.path.join(full_folder, file))
            results.append({"filename": file, "subfolder": subfolder, "type": "output"})
            counter += 1
        return {"ui": {"images": results}}


NODE_CLASS_MAPPINGS = {"PackSaveImage": PackSaveImage, "PackTempPreview": PackTempPreview}
'''

SHADOW_PACK = '''
import nodes

WHICH = getattr(nodes, "MARKER", "compat")


class PackWhichNodes:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ()
    FUNCTION = "which"
    OUTPUT_NODE = True
    CATEGORY = "pack"

    def which(self):
        return {"ui": {"which": [WHICH]}}


NODE_CLASS_MAPPINGS = {"PackWhichNodes": PackWhichNodes}
'''


def write_pack(root: Path, name: str, source: str, *, package: bool = True) -> Path:
    """A custom node pack as ComfyUI users install them: a package folder (or a single .py file)."""
    root.mkdir(parents=True, exist_ok=True)
    if package:
        (root / name).mkdir()
        (root / name / "__init__.py").write_text(textwrap.dedent(source))
    else:
        (root / f"{name}.py").write_text(textwrap.dedent(source))
    return root


def make_engine(root: Path, packs: dict[str, str], **config: Any) -> Engine:
    nodes_dir = root / "custom_nodes"
    for name, source in packs.items():
        write_pack(nodes_dir, name, source)
    config.setdefault("models_dir", str(root / "models"))
    return Engine(EngineConfig(input_dir=str(root / "input"), output_dir=str(root / "output"),
                               temp_dir=str(root / "temp"), user_dir=str(root / "user"),
                               custom_nodes_dirs=[str(nodes_dir)], **config))


@pytest.fixture
def compat_removed(monkeypatch):
    """sys.modules without the compat aliases for one test (restored afterwards, as they stay once installed)."""
    compat.install()
    for name in ALIAS_NAMES:
        monkeypatch.delitem(sys.modules, name, raising=False)
    return monkeypatch


def test_loader_pack_two_engines_see_their_own_folders(tmp_path):
    engines = []
    for name in ("one", "two"):
        models = tmp_path / name / "models"
        (models / "checkpoints" / "sub").mkdir(parents=True)
        (models / "checkpoints" / "sub" / f"{name}.safetensors").write_bytes(b"x")
        (models / "checkpoints" / "notes.txt").write_text("not a model")
        (models / "onnx").mkdir()
        (models / "onnx" / f"det_{name}.onnx").write_bytes(b"x")
        (models / "onnx" / "readme.md").write_text("not listed: the pack asked for .onnx only")
        engines.append(make_engine(tmp_path / name, {"loader_pack": LOADER_PACK}))
    try:
        for name, engine in zip(("one", "two"), engines):
            info = engine.object_info("PackCheckpointPath")["PackCheckpointPath"]
            assert info["input"]["required"]["ckpt_name"] == [[f"sub/{name}.safetensors"]]
            assert info["input"]["required"]["onnx_name"] == [[f"det_{name}.onnx"]]
            assert info["python_module"] == "custom_nodes.loader_pack"
            assert info["display_name"] == "Checkpoint Path (pack)"
            ui = engine.run({"1": {"class_type": "PackCheckpointPath", "inputs": {
                "ckpt_name": f"sub/{name}.safetensors", "onnx_name": f"det_{name}.onnx"}}}).outputs["1"]
            models = tmp_path / name / "models"
            assert ui["path"] == [str(models / "checkpoints" / "sub" / f"{name}.safetensors")]
            assert ui["onnx"] == [str(models / "onnx" / f"det_{name}.onnx")]
            assert ui["seen"] == [str(models)]  # folder_paths.models_dir at import time: this engine's
            assert ui["detectors"] == [str(models / "detectors")]
            assert engine.folders.dirs("detectors") == [models / "detectors"]
    finally:
        for engine in engines:
            engine.close()


def test_progress_bar_reports_and_interrupts(tmp_path):
    engine = make_engine(tmp_path, {"progress_pack": PROGRESS_PACK})
    progress: list[tuple[int, int]] = []

    def on_message(message):
        if isinstance(message.event, Progress):
            progress.append((message.event.value, message.event.max))
            if message.event.max == 6 and message.event.value == 2:
                engine.interrupt()  # the user presses "cancel" during the third step

    engine.events.subscribe(on_message)
    with engine:
        ui = engine.run({"1": {"class_type": "PackSlowCounter", "inputs": {"steps": 4, "self_interrupt_at": -1}}},
                        timeout=30).outputs["1"]
        assert ui == {"done": [4], "device": [str(engine.device)]}
        assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]
        with pytest.raises(Interrupted):
            engine.run({"1": {"class_type": "PackSlowCounter", "inputs": {"steps": 6, "self_interrupt_at": -1}}},
                       timeout=30)
        assert progress[4:] == [(1, 6), (2, 6)]  # the bar's third update raised
        with pytest.raises(Interrupted):  # the pack's own interrupt: InterruptProcessingException
            engine.run({"1": {"class_type": "PackSlowCounter", "inputs": {"steps": 5, "self_interrupt_at": 3}}},
                       timeout=30)
        entry = engine.history(max_items=1)
        (status,) = [e["status"] for e in entry.values()]
        assert [m[0] for m in status["messages"]][-1] == "execution_interrupted"
        assert progress[-1] == (3, 5)
        # the engine is usable afterwards
        assert engine.run({"1": {"class_type": "PackSlowCounter", "inputs": {"steps": 1, "self_interrupt_at": -1}}},
                          timeout=30).outputs["1"]["done"] == [1]


def _read_until_done(ws, prompt_id: str) -> list[dict[str, Any]]:
    messages = []
    while True:
        raw = ws.recv(timeout=20)
        if isinstance(raw, bytes):
            continue
        message = json.loads(raw)
        messages.append(message)
        data = message.get("data") or {}
        if message["type"] == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
            return messages


def test_send_sync_reaches_websocket_clients(tmp_path):
    engine = make_engine(tmp_path, {"server_pack": SERVER_PACK})
    app = create_app(engine, owns_engine=True)
    with running_server(app) as base:
        ws_base = base.replace("http://", "ws://") + "/ws?clientId="
        with connect(ws_base + "me") as me, connect(ws_base + "other") as other:
            body = json.dumps({"prompt": {"5": {"class_type": "PackNotify", "inputs": {"text": "done"}}},
                               "client_id": "me"}).encode()
            request = urllib.request.Request(base + "/prompt", data=body,
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as response:
                prompt_id = json.loads(response.read())["prompt_id"]
            mine = _read_until_done(me, prompt_id)
            assert {"type": "pack.feedback", "data": {"node_id": "5", "text": "done"}} in mine
            assert {"type": "pack.broadcast", "data": {"text": "DONE"}} in mine
            theirs = []
            while not theirs or theirs[-1]["type"] != "pack.broadcast":
                theirs.append(json.loads(other.recv(timeout=20)))
            assert theirs[-1] == {"type": "pack.broadcast", "data": {"text": "DONE"}}
            assert all(m["type"] != "pack.feedback" for m in theirs)  # sent to client "me" only
            executed = [m for m in mine if m["type"] == "executed"]
            assert executed[0]["data"]["output"] == {"sent": ["me"]}
    routes = [(r.method, r.path, r.handler.__name__) for r in engine.registry.custom_routes]
    assert routes == [("GET", "/pack/hello", "hello")]


@pytest.fixture(scope="module")
def ckpt_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compat_models")
    fm.write_checkpoint(root / "checkpoints" / "tiny.safetensors", "sd1")
    return root


def test_ksampler_subclass_and_common_ksampler_match_builtin(tmp_path, ckpt_models):
    store: dict[str, Any] = {}
    engine = make_engine(tmp_path, {"sampler_pack": SAMPLER_PACK}, models_dir=str(ckpt_models))
    engine.register_nodes(capture_nodes(store))
    with engine:
        builtin = engine.object_info("KSampler")["KSampler"]["input"]["required"]
        pack = engine.object_info("PackKSampler")["PackKSampler"]["input"]["required"]
        assert pack["sampler_name"] == [builtin["sampler_name"][0]]
        assert pack["scheduler"] == [builtin["scheduler"][0]]
        assert pack["size_hint"] == ["INT", {"default": 512, "max": 16384}]
        modules = {n: engine.object_info(n)[n]["python_module"] for n in ("KSampler", "PackKSampler",
                                                                           "PackSameKSampler")}
        assert modules == {"KSampler": "nodes", "PackKSampler": "custom_nodes.sampler_pack",
                           "PackSameKSampler": "nodes"}  # the built-in class itself is left untouched
        sampler = {"seed": 7, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
                   "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                   "latent_image": ["5", 0]}
        prompt = base_graph("tiny.safetensors", 32, 32)
        prompt["10"] = {"class_type": "KSampler", "inputs": sampler}
        prompt["11"] = {"class_type": "PackKSampler", "inputs": {**sampler, "size_hint": 64}}
        prompt["12"] = {"class_type": "PackCommonSampler", "inputs": {
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent": ["5", 0], "seed": 7,
            "sampler_name": "euler"}}
        for node, key in (("10", "builtin"), ("11", "subclass"), ("12", "common")):
            prompt["2" + node] = {"class_type": "KeepLatent", "inputs": {"value": [node, 0], "key": key}}
        engine.run(prompt, timeout=120)
    reference = store["builtin"]["samples"]
    assert reference.shape == (1, 4, 4, 4) and torch.isfinite(reference).all()
    assert torch.equal(store["subclass"]["samples"], reference)
    assert torch.equal(store["common"]["samples"], reference)


def test_graph_builder_expansion_and_blocker(tmp_path):
    engine = make_engine(tmp_path, {"graph_pack": GRAPH_PACK})
    with engine:
        prompt = {"1": {"class_type": "PackRepeatAdd", "inputs": {"value": 10, "times": 4}},
                  "2": {"class_type": "PackShowInt", "inputs": {"value": ["1", 0]}},
                  "3": {"class_type": "PackGate", "inputs": {"value": ["1", 0], "open": False}},
                  "4": {"class_type": "PackShowInt", "inputs": {"value": ["3", 0]}}}
        outputs = engine.run(prompt, timeout=30).outputs
        assert outputs["2"] == {"value": [14]}
        assert "4" not in outputs  # blocked
        prompt["3"]["inputs"]["open"] = True
        outputs = engine.run(prompt, timeout=30).outputs
        assert outputs["4"] == {"value": [14]}


def _solid_image() -> dict[str, Any]:
    return {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 6, "batch_size": 2, "color": 0xFF8000}}


def test_get_save_image_path_counters_and_refusal(tmp_path):
    engine = make_engine(tmp_path, {"save_pack": SAVE_PACK})
    with engine:
        prompt = {"1": _solid_image(),
                  "2": {"class_type": "PackSaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "run/pic",
                                                                 "elsewhere": False}}}
        first = engine.run(prompt, timeout=30)
        assert [i["filename"] for i in first.outputs["2"]["images"]] == ["pic_00001_.png", "pic_00002_.png"]
        assert first.outputs["2"]["images"][0]["subfolder"] == "run"
        prompt["1"]["inputs"]["color"] = 0x0080FF
        second = engine.run(prompt, timeout=30)
        assert [i["filename"] for i in second.outputs["2"]["images"]] == ["pic_00003_.png", "pic_00004_.png"]
        saved = second.images["2"][0]
        assert saved == (tmp_path / "output" / "run" / "pic_00003_.png").resolve() and saved.is_file()
        from PIL import Image

        assert Image.open(saved).getpixel((0, 0)) == (0, 0x80, 0xFF)
        prompt["2"]["inputs"]["elsewhere"] = True
        with pytest.raises(NodeExecutionError, match="output, temp or input folder"):
            engine.run(prompt, timeout=30)
        preview = engine.run({"1": _solid_image(), "3": {"class_type": "PackTempPreview", "inputs": {
            "images": ["1", 0], "filename_prefix": "pv"}}}, timeout=30)
        assert preview.outputs["3"]["images"][0] == {"filename": "pv_temp_pack_00001_.png", "subfolder": "",
                                                     "type": "temp"}
        assert preview.images["3"][0] == (tmp_path / "temp" / "pv_temp_pack_00001_.png").resolve()
        assert preview.images["3"][0].is_file()


def test_existing_nodes_module_is_not_shadowed(tmp_path, compat_removed, caplog):
    theirs = tmp_path / "elsewhere"
    theirs.mkdir()
    (theirs / "nodes.py").write_text("MARKER = 'theirs'\n")
    compat_removed.syspath_prepend(str(theirs))
    with caplog.at_level(logging.INFO, logger="comfy_core.compat"):
        engine = make_engine(tmp_path, {"shadow_pack": SHADOW_PACK, "graph_pack": GRAPH_PACK})
    with engine:
        assert engine.run({"1": {"class_type": "PackWhichNodes", "inputs": {}}}).outputs["1"] == {"which": ["theirs"]}
        assert "PackRepeatAdd" in engine.registry  # the other aliases were provided
    assert sys.modules["nodes"].__file__ == str(theirs / "nodes.py")
    assert sys.modules["folder_paths"] is compat.folder_paths
    assert "'nodes' is provided by" in caplog.text


def test_compat_off_skips_packs_with_a_clear_log_line(tmp_path, compat_removed, caplog):
    write_pack(tmp_path / "custom_nodes", "plain_pack", "NODE_CLASS_MAPPINGS = {}\n", package=False)
    with caplog.at_level(logging.INFO, logger="comfy_core.nodes.registry"):
        engine = make_engine(tmp_path, {"loader_pack": LOADER_PACK}, comfy_compat=False)
    assert "PackCheckpointPath" not in engine.registry
    assert "folder_paths" not in sys.modules
    assert ("custom node package %s skipped: it imports ComfyUI's 'folder_paths' and EngineConfig.comfy_compat is off"
            % (tmp_path / "custom_nodes" / "loader_pack")) in caplog.text
    assert "Traceback" not in caplog.text
    engine.close()


def test_compat_functions_need_an_engine_and_install_is_idempotent():
    compat.install()
    assert compat.install() == []
    import folder_paths  # provided by compat.install()

    assert sys.modules["comfy.utils"].ProgressBar is compat.comfy.utils.ProgressBar
    with pytest.raises(NoContextError):
        folder_paths.get_filename_list("checkpoints")
    with pytest.raises(NoContextError):
        folder_paths.models_dir  # noqa: B018 - the attribute lookup is what is tested
    bar = compat.comfy.utils.ProgressBar(3)  # outside an engine: counts only
    bar.update(5)
    assert bar.current == 3


def test_unknown_folder_is_a_key_error(tmp_path):
    engine = make_engine(tmp_path, {})
    from comfy_core import context

    with context.use(engine.context()):
        with pytest.raises(KeyError):
            compat.folder_paths.get_filename_list("no_such_kind")
        assert compat.folder_paths.get_full_path("no_such_kind", "x.bin") is None
        assert compat.folder_paths.get_full_path("checkpoints", "../escape.bin") is None
        with pytest.raises(FileNotFoundError, match="Model in folder 'checkpoints' with filename 'x.bin' not found"):
            compat.folder_paths.get_full_path_or_raise("checkpoints", "x.bin")
        assert compat.folder_paths.get_folder_paths("clip") == [  # legacy name; ComfyUI's output/clip search dir
            str(tmp_path / "models" / "text_encoders"), str(tmp_path / "models" / "clip"),
            str(tmp_path / "output" / "clip")]
    engine.close()


def test_utils_and_model_management_use_the_engine(tmp_path):
    import safetensors.torch

    engine = make_engine(tmp_path, {})
    weights = tmp_path / "w.safetensors"
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.float16)}
    safetensors.torch.save_file(tensors, str(weights), metadata={"format": "pt", "note": "x"})
    torch.save({"state_dict": {"c": torch.full((2,), 3.0)}}, tmp_path / "w.ckpt")
    from comfy_core import context
    from comfy_core.upscale import common_upscale

    utils, mm = compat.comfy.utils, compat.comfy.model_management
    with context.use(engine.context()):
        sd, metadata = utils.load_torch_file(str(weights), return_metadata=True)
        assert metadata == {"format": "pt", "note": "x"}
        assert torch.equal(sd["a"], tensors["a"]) and sd["b"].dtype == torch.float16
        assert torch.equal(utils.load_torch_file(str(tmp_path / "w.ckpt"))["c"], torch.full((2,), 3.0))
        image = torch.rand(1, 3, 6, 8)
        assert torch.equal(utils.common_upscale(image, 4, 4, "bilinear", "center"),
                           common_upscale(image, 4, 4, "bilinear", "center"))
        assert utils.common_upscale(image, 4, 4, "nearest-exact", "center").shape == (1, 3, 4, 4)
        assert mm.get_torch_device() == engine.device and mm.intermediate_device() == torch.device("cpu")
        assert mm.vae_dtype() == engine.dtype
        assert not mm.processing_interrupted()
        mm.interrupt_current_processing()
        assert mm.processing_interrupted()
        with pytest.raises(Interrupted):
            mm.throw_exception_if_processing_interrupted()
        mm.interrupt_current_processing(False)
        mm.throw_exception_if_processing_interrupted()
    engine.close()
