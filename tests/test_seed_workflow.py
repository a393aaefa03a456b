"""The API document's seed workflow (tests/data/seed_workflow.json, a verbatim copy of the POST /prompt body) end to
end: SDXL txt2img guided by two images through CLIP vision + two unCLIPConditioning nodes and a control-LoRA fed by a
scribble map, two PreviewImages (HED, scribble) and a SaveImage; dpmpp_3m_sde_gpu/karras, 26 steps, cfg 5.

Every model is a tiny random-weight file in the real layout, written under the file name the workflow asks for:
SDXL checkpoint (`model.diffusion_model.*`, `first_stage_model.*`, `conditioner.embedders.*`), a HF-layout CLIP
vision tower whose `image_embeds` width equals the tiny SDXL's pooled width (so revision works), a control-LoRA
(`lora_controlnet` marker, `.up`/`.down` pairs for every UNet matrix, full hint block/zero convs/norms/biases) and the
HED annotator (`ControlNetHED.pth`, a torch.save'd state dict). The two input pictures are small PNG/WebP files under
the names the workflow loads, the first in the `clipspace/` subfolder of the input dir as ComfyUI's mask editor saves it.

Size override: the workflow runs verbatim except EmptyLatentImage (node 5) 1024x768 -> 128x96 (a 16x12 latent,
same 4:3 aspect). At 1024x768 (a 128x96 latent) the tiny models needed 20 s for just 2 steps on 2 cores; at 128x96
the whole workflow, all 26 steps, runs in ~3 s. Steps, sampler, scheduler, cfg, seed and every other input are
unchanged, and the HTTP test posts the file's body (client_id included) with only that override.
"""
from __future__ import annotations

import copy
import io
import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import fixtures_guidance as fg
import fixtures_models as fm
import numpy as np
import pytest
import torch
from comfy_core.asgi import create_app
from fixtures_asgi import running_server
from PIL import Image
from websockets.sync.client import connect

from comfy_core import Engine, EngineConfig
from comfy_core.errors import NodeExecutionError, PromptError
from comfy_core.models.controlnet import ControlNetModel

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data"
OVERRIDES = {"5": {"width": 128, "height": 96}}  # see the module docstring
SAMPLER, DECODE, SAVE, PREVIEWS = "3", "8", "9", ("45", "48")
OUTPUTS = (SAVE, *PREVIEWS)
DANGLING = "43"  # HEDPreprocessor without an image input, used by nothing: must be ignored
MASK_IMAGE = ("clipspace", "clipspace-mask-1645940.7000000002.png")


def seed_body() -> dict[str, Any]:
    """The POST /prompt body as the file has it (client_id included), with the size override applied."""
    body = json.loads((DATA / "seed_workflow.json").read_text())
    for node, inputs in OVERRIDES.items():
        body["prompt"][node]["inputs"].update(inputs)
    return body


# ------------------------------------------------------------------------------------------------ files


def control_lora_state_dict(seed: int = 9, rank: int = 4) -> dict[str, torch.Tensor]:
    """A control-LoRA for the tiny SDXL UNet in the real layout: `.up`/`.down` for every matrix the ControlNet
    shares with the UNet, full tensors for the rest (hint block, zero convs, middle_block_out, norms, biases)."""
    with torch.device("meta"):
        net = ControlNetModel(fm.TINY_UNETS["sdxl"], 3)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    own = ("input_hint_block.", "zero_convs.", "middle_block_out.")
    g = torch.Generator().manual_seed(seed)
    sd = {"lora_controlnet": torch.zeros(0)}
    for key in sorted(shapes):
        shape = shapes[key]
        if key.endswith(".weight") and len(shape) >= 2 and not key.startswith(own):
            r, fan_in = min(rank, shape[0], math.prod(shape[1:])), math.prod(shape[1:])
            sd[key[:-len("weight")] + "up"] = 0.1 * torch.randn((shape[0], r) + (1,) * (len(shape) - 2), generator=g)
            sd[key[:-len("weight")] + "down"] = torch.randn((r,) + shape[1:], generator=g) / math.sqrt(fan_in)
        else:
            sd[key] = fg.random_tensor(key, shape, g)
            if key.startswith(own) and key.endswith("bias"):  # non-zero so the residuals depend on every tensor
                sd[key] = 0.02 * torch.randn(shape, generator=g)
    return {k: v.half() if v.is_floating_point() and v.numel() else v for k, v in sd.items()}


def write_models(models: Path) -> None:
    fm.write_checkpoint(models / "checkpoints" / "sd_xl_base_1.0.safetensors", "sdxl")
    fm.write(models / "clip_vision" / "clip_vision_g.safetensors", fg.tiny_clip_vision(projection=fm.POOLED_G))
    fm.write(models / "controlnet" / "control-lora-depth-rank256.safetensors", control_lora_state_dict())
    (models / "annotators").mkdir(parents=True)
    torch.save(fg.tiny_hed(), models / "annotators" / "ControlNetHED.pth")


def write_inputs(inputs: Path) -> None:
    picture = fg.guidance_test_image()  # 90x120 RGB
    alpha = np.full(picture.shape[:2], 255, np.uint8)
    alpha[30:60, 40:80] = 0  # a painted mask, as the mask editor saves it (LoadImage's MASK; IMAGE ignores it)
    (inputs / MASK_IMAGE[0]).mkdir(parents=True)
    Image.fromarray(np.dstack([picture, alpha]), "RGBA").save(inputs / MASK_IMAGE[0] / MASK_IMAGE[1])
    Image.fromarray(np.ascontiguousarray(picture[::-1, ::-1])).resize((100, 72)).save(inputs / "beijing1 (2).webp",
                                                                                       lossless=True)


@pytest.fixture(scope="module")
def seed_dirs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seed")
    write_models(root / "models")
    write_inputs(root / "input")
    return root


def engine_config(seed_dirs: Path, run_dir: Path, **overrides: Any) -> EngineConfig:
    return EngineConfig(models_dir=str(seed_dirs / "models"), input_dir=str(seed_dirs / "input"),
                        output_dir=str(run_dir / "output"), temp_dir=str(run_dir / "temp"), **overrides)


# ------------------------------------------------------------------------------------------------ checks


def depends_on(prompt: dict[str, Any], node: str) -> set[str]:
    """Every node `node` needs (transitively)."""
    seen: set[str] = set()
    stack = [node]
    while stack:
        for value in prompt[stack.pop()]["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and value[0] not in seen:
                seen.add(value[0])
                stack.append(value[0])
    return seen


def check_run_messages(messages: list[tuple[str, dict]], prompt: dict[str, Any], prompt_id: str) -> None:
    """ComfyUI's message sequence for one uncached run of the seed workflow, as its client receives it."""
    types = [t for t, _ in messages]
    start = types.index("execution_start")
    assert types[start + 1] == "execution_cached" and messages[start + 1][1]["nodes"] == []
    assert types[-1] == "executing" and messages[-1][1] == {"node": None, "prompt_id": prompt_id}
    assert types[-3:-1] == ["execution_success", "status"]
    assert all(d.get("prompt_id", prompt_id) == prompt_id for _, d in messages[start:])
    ran = [d["node"] for t, d in messages[:-1] if t == "executing"]
    assert sorted(ran, key=int) == sorted(set(prompt) - {DANGLING}, key=int)  # each once; node 43 never
    for i, node in enumerate(ran):  # every node after everything it needs
        assert depends_on(prompt, node) <= set(ran[:i]), node
    by_node: dict[str, list[tuple[str, dict]]] = {}
    current = None
    for t, d in messages[start:-1]:
        if t == "executing":
            current = d["node"]
            assert d["display_node"] == current
        elif current is not None and t in ("progress", "executed"):
            assert d["node"] == current
            by_node.setdefault(current, []).append((t, d))
    steps = prompt[SAMPLER]["inputs"]["steps"]
    assert [(d["value"], d["max"]) for t, d in by_node[SAMPLER]] == [(i, steps) for i in range(1, steps + 1)]
    for preprocessor in ("44", "47"):  # controlnet_aux's annotator call: one progress update per image
        assert [(t, d["value"], d["max"]) for t, d in by_node[preprocessor]] == [("progress", 1, 1)]
    assert DECODE not in by_node  # ComfyUI's whole-image VAE decode reports no progress
    executed = {d["node"]: d["output"] for t, d in messages if t == "executed"}
    assert sorted(executed) == sorted(OUTPUTS)
    assert [e["type"] for e in executed[SAVE]["images"]] == ["output"]
    assert all([e["type"] for e in executed[p]["images"]] == ["temp"] for p in PREVIEWS)


def check_images(paths: dict[str, list[Path]], prompt: dict[str, Any]) -> np.ndarray:
    """SaveImage: one PNG of the latent size x8 carrying the prompt; previews: temp PNGs of the annotator maps."""
    latent = prompt["5"]["inputs"]
    (saved,) = paths[SAVE]
    with Image.open(saved) as im:
        assert im.format == "PNG" and im.size == (latent["width"], latent["height"]) and im.mode == "RGB"
        assert json.loads(im.info["prompt"]) == prompt
        pixels = np.asarray(im)
    assert pixels.std() > 0  # a real picture, not a constant
    for node, allowed in (("45", {0, 127, 255}), ("48", {0, 255})):  # HED safe-mode levels / binary scribble
        (preview,) = paths[node]
        assert preview.parent.name == "temp" and preview.name.startswith("ComfyUI_temp_")
        with Image.open(preview) as im:
            assert im.size == (683, 512)  # the 120x90 mask picture at the annotators' default resolution 512
            assert set(np.unique(np.asarray(im)).tolist()) <= allowed
    return pixels


# ------------------------------------------------------------------------------------------------ tests


def test_seed_workflow_in_the_engine(seed_dirs, tmp_path):
    body = seed_body()
    prompt = body["prompt"]
    messages: list[tuple[str, dict]] = []
    with Engine(engine_config(seed_dirs, tmp_path)) as engine:  # previews live in temp/, cleared on close
        engine.events.subscribe(lambda m: messages.append((m.type, m.event.to_builtins())), client_id=body["client_id"])
        result = engine.run(prompt, client_id=body["client_id"], timeout=300)
        pixels = check_images(result.images, prompt)
        history = engine.history_item(result.prompt_id)[result.prompt_id]
        # Each guide reaches the sampler: without the ControlNet (49) or the second image (37) the picture changes.
        for node in ("49", "37"):
            variant = copy.deepcopy(prompt)
            variant[node]["inputs"]["strength"] = 0.0  # both nodes pass the conditioning through unchanged at 0
            (saved,) = engine.run(variant, timeout=300).images[SAVE]
            with Image.open(saved) as im:
                assert np.abs(np.asarray(im).astype(int) - pixels).max() > 8, node
    first = next(i for i, (t, d) in enumerate(messages)  # the first run's messages end at its executing null
                 if t == "executing" and d == {"node": None, "prompt_id": result.prompt_id})
    check_run_messages(messages[:first + 1], prompt, result.prompt_id)
    assert sorted(result.outputs) == sorted(OUTPUTS) == sorted(history["outputs"])
    assert DANGLING not in history["outputs"]
    assert history["status"] == {"status_str": "success", "completed": True, "messages": history["status"]["messages"]}
    assert [t for t, _ in history["status"]["messages"]] == ["execution_start", "execution_cached",
                                                              "execution_success"]
    assert history["prompt"][2] == prompt and history["prompt"][3] == {"client_id": body["client_id"]}
    assert sorted(history["prompt"][4], key=int) == sorted(OUTPUTS, key=int)
    np.save(seed_dirs / "engine_pixels.npy", pixels)  # the HTTP run must reproduce it bit for bit


# -- HTTP + websocket -------------------------------------------------------------------------------------------


def http(base: str, path: str, body: Any = None) -> tuple[int, bytes, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


def read_until_done(ws, prompt_id: str, timeout: float = 120) -> list[tuple[str, dict]]:
    """ComfyUI's websockets_api_example.py loop: read until executing{node: null} for our prompt."""
    messages = []
    deadline = time.monotonic() + timeout
    while True:
        frame = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(frame, bytes):
            continue  # preview frames (none with the default preview method)
        message = json.loads(frame)
        messages.append((message["type"], message["data"]))
        if message["type"] == "executing" and message["data"]["node"] is None \
                and message["data"].get("prompt_id") == prompt_id:
            return messages


def test_seed_workflow_over_http_and_websocket(seed_dirs, tmp_path):
    body = seed_body()
    client_id, prompt = body["client_id"], body["prompt"]
    engine = Engine(engine_config(seed_dirs, tmp_path))
    with running_server(create_app(engine, owns_engine=True)) as base:
        ws_base = base.replace("http://", "ws://")
        with connect(f"{ws_base}/ws?clientId={urllib.parse.quote(client_id)}") as ws:
            hello = json.loads(ws.recv(timeout=10))
            assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                        "sid": client_id}}
            status, raw, _ = http(base, "/prompt", body)
            assert status == 200, raw
            queued = json.loads(raw)
            assert queued["node_errors"] == {} and queued["number"] == 0
            prompt_id = queued["prompt_id"]
            check_run_messages(read_until_done(ws, prompt_id), prompt, prompt_id)

            status, raw, _ = http(base, f"/history/{prompt_id}")
            assert status == 200
            entry = json.loads(raw)[prompt_id]
            assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
            assert sorted(entry["outputs"]) == sorted(OUTPUTS)
            assert entry["prompt"][2] == prompt and entry["prompt"][3] == {"client_id": client_id}
            images = fetch_images(base, entry["outputs"], tmp_path / "fetched")
            pixels = check_images(images, prompt)
            if (seed_dirs / "engine_pixels.npy").exists():  # same files, seed and sampler: the same picture
                assert np.array_equal(pixels, np.load(seed_dirs / "engine_pixels.npy"))

            # The same body again: everything is cached; output nodes still report their UI, nothing executes.
            status, raw, _ = http(base, "/prompt", body)
            again = read_until_done(ws, json.loads(raw)["prompt_id"])
            cached = next(d for t, d in again if t == "execution_cached")["nodes"]
            assert sorted(cached, key=int) == sorted(set(prompt) - {DANGLING}, key=int)
            assert [d["node"] for t, d in again if t == "executing"] == [None]
            assert not [t for t, _ in again if t == "progress"]
            executed = {d["node"]: d["output"] for t, d in again if t == "executed"}
            assert executed == entry["outputs"]


def fetch_images(base: str, outputs: dict[str, Any], into: Path) -> dict[str, list[Path]]:
    """GET /view for every image of the history outputs; the bytes are saved under `into/<type>/` for checking."""
    paths: dict[str, list[Path]] = {}
    for node, ui in outputs.items():
        for image in ui["images"]:
            query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image["subfolder"],
                                            "type": image["type"]})
            status, raw, content_type = http(base, f"/view?{query}")
            assert status == 200 and content_type == "image/png", (status, content_type)
            with Image.open(io.BytesIO(raw)) as im:
                assert im.format == "PNG"
            path = into / image["type"] / image["filename"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(raw)
            paths.setdefault(node, []).append(path)
    return paths


# -- without the HED weights ----------------------------------------------------------------------------------------


def test_missing_hed_weights(seed_dirs, tmp_path):
    body = seed_body()
    prompt = body["prompt"]
    empty = tmp_path / "no_annotators"
    messages: list[tuple[str, dict]] = []
    with Engine(engine_config(seed_dirs, tmp_path, annotators_dir=str(empty))) as engine:
        valid = engine.validate(prompt)  # the weights are a run-time matter: the workflow still validates
        assert sorted(valid.outputs, key=int) == sorted(OUTPUTS, key=int) and valid.node_errors == {}

        # node 43 wired to an output is validated like any other node: its missing image is an error. As in
        # ComfyUI the other outputs stay good (the prompt is accepted with node_errors); alone, it is refused.
        wired = copy.deepcopy(prompt)
        wired["50"] = {"class_type": "PreviewImage", "inputs": {"images": [DANGLING, 0]}}
        partial = engine.validate(wired)
        assert sorted(partial.outputs, key=int) == sorted(OUTPUTS, key=int)
        errors = partial.node_errors[DANGLING]
        assert errors["class_type"] == "HEDPreprocessor" and errors["dependent_outputs"] == ["50"]
        assert [(x["type"], x["extra_info"]["input_name"]) for x in errors["errors"]] == [
            ("required_input_missing", "image")]
        with pytest.raises(PromptError) as e:
            engine.validate({n: wired[n] for n in (DANGLING, "50")})
        assert e.value.error["type"] == "prompt_outputs_failed_validation"
        assert list(e.value.node_errors) == [DANGLING]

        # running the HED preview branch (44 -> 45) fails at node 44, naming the file and the folder
        engine.events.subscribe(lambda m: messages.append((m.type, m.event.to_builtins())), client_id="hed")
        with pytest.raises(NodeExecutionError) as failure:
            engine.run(prompt, client_id="hed", partial_execution_targets=["45"], timeout=120)
    errors = [d for t, d in messages if t == "execution_error"]
    assert len(errors) == 1 and failure.value.details == errors[0]
    error = errors[0]
    assert (error["node_id"], error["node_type"]) == ("44", "HEDPreprocessor")
    assert "ControlNetHED.pth" in error["exception_message"] and str(empty) in error["exception_message"]
    assert error["exception_type"].endswith("ModelLoadError")
    assert error["executed"] == ["34"]  # LoadImage ran, the preview never did
    assert not [d for t, d in messages if t == "executing" and d["node"] in ("45", SAMPLER, DANGLING)]
    assert [t for t, _ in messages][-1] == "executing"
