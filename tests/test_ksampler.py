"""KSampler / KSamplerAdvanced end to end through a real Engine on a tiny SD1 checkpoint (64×64 images = 8×8
latents): txt2img determinism and caching, progress and interrupts, img2img schedules against ComfyUI's sigma table,
KSamplerAdvanced step semantics, inpainting (noise mask and 9-channel model), batches and batch_index noise, the model
call count of CFG, latent previews (event bus and websocket), and every sampler through the node."""
from __future__ import annotations

import io
import json
import struct
import threading
import time
import urllib.request
from pathlib import Path

import fixtures_models as fm
import numpy as np
import pytest
import torch
from fixtures_ksampler import (DECODE, KEEP_LATENT, LATENT, LOADER, SAMPLER, SAVE, base_graph, ksampler,
                               ksampler_advanced, make_engine, structured_png, txt2img)
from PIL import Image
from safetensors.torch import load_file

from comfy_core import Interrupted
from comfy_core.models.diffusion import DiffusionModel
from comfy_core.sampling import ksampler as ksampler_module
from comfy_core.sampling.ksampler import step_sigmas
from comfy_core.sampling.samplers import KSAMPLER_NAMES
from comfy_core.sampling.schedulers import SCHEDULER_NAMES

DATA = Path(__file__).parent / "data"
SIGMAS = json.loads((DATA / "sigmas_ref.json").read_text())["table"]  # ComfyUI's KSampler.sigmas, SD1.5 sampling
CKPT, INPAINT_CKPT = "tiny.safetensors", "tiny_inpaint.safetensors"
HOLE = (16, 48, 0, 32)  # pixel rows/cols of the inpaint hole = latent rows 2..5, cols 0..3


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ksampler_models")
    fm.write_checkpoint(root / "checkpoints" / CKPT, "sd1")
    fm.write_checkpoint(root / "checkpoints" / INPAINT_CKPT, "sd1_inpaint")
    return root


@pytest.fixture(scope="module")
def kept() -> dict:
    return {}


@pytest.fixture(scope="module")
def engine(tmp_path_factory, models_dir, kept):
    root = tmp_path_factory.mktemp("ksampler_engine")
    (root / "input").mkdir()
    (root / "input" / "picture.png").write_bytes(structured_png())
    (root / "input" / "hole.png").write_bytes(structured_png(hole=HOLE))
    eng = make_engine(root, models_dir, kept)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def model(models_dir):
    """The tiny MODEL (its SD1.5 model sampling is what step_sigmas reads)."""
    from comfy_core.models.checkpoint import load_checkpoint_file

    return load_checkpoint_file(models_dir / "checkpoints" / CKPT, want_clip=False, want_vae=False)[0]


class Events:
    """Records every bus message while open."""

    def __init__(self, engine):
        self.messages = []
        self.sub = engine.events.subscribe(self.messages.append)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sub.close()

    def of(self, kind: str) -> list:
        return [m.event for m in self.messages if m.type == kind]


@pytest.fixture
def model_calls(monkeypatch):
    """Every DiffusionModel.apply_model call: (x shape, sigma values, c_concat shape or None)."""
    calls = []
    original = DiffusionModel.apply_model

    def counting(self, x, sigma, **kw):
        c_concat = kw.get("c_concat")
        calls.append((tuple(x.shape), torch.as_tensor(sigma).flatten().tolist(),
                      None if c_concat is None else tuple(c_concat.shape)))
        return original(self, x, sigma, **kw)

    monkeypatch.setattr(DiffusionModel, "apply_model", counting)
    return calls


def png_pixels(path: Path) -> torch.Tensor:
    with Image.open(path) as img:
        return torch.from_numpy(np.asarray(img, dtype=np.float32))


def img2img(denoise: float, *, key: str, seed: int = 5, steps: int = 4, **sampler) -> dict:
    prompt = base_graph(CKPT)
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": "picture.png"}}
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": [LOADER, 2]}}
    prompt[SAMPLER] = ksampler(["11", 0], seed=seed, steps=steps, denoise=denoise, **sampler)
    prompt[KEEP_LATENT] = {"class_type": "KeepLatent", "inputs": {"value": [SAMPLER, 0], "key": key}}
    prompt["22"] = {"class_type": "KeepLatent", "inputs": {"value": ["11", 0], "key": key + "_source"}}
    return prompt


# -- txt2img ---------------------------------------------------------------------------------------------------------


def test_txt2img_shapes_determinism_and_seed_only_reruns_the_sampler(engine, kept):
    engine.free(free_memory=True)  # nothing cached from other tests
    first = engine.run(txt2img(CKPT, seed=11, keep="a"))
    latent_a = kept["a"]["samples"]
    assert kept["a"]["samples"].shape == (1, 4, 8, 8) and kept["a_image"].shape == (1, 64, 64, 3)
    assert kept["a_image"].min() >= 0 and kept["a_image"].max() <= 1
    (png_a,) = first.images[SAVE]
    with Image.open(png_a) as img:
        assert img.size == (64, 64) and img.mode == "RGB"

    engine.free(free_memory=True)  # drop cached outputs and models: the second run recomputes everything
    again = engine.run(txt2img(CKPT, seed=11, keep="a"))  # the same prompt, so the same PNG text chunk too
    (png_b,) = again.images[SAVE]
    assert png_b != png_a and png_b.read_bytes() == png_a.read_bytes()
    assert kept["a"]["samples"] is not latent_a and torch.equal(kept["a"]["samples"], latent_a)

    with Events(engine) as events:
        other = engine.run(txt2img(CKPT, seed=12, keep="c"))
    (png_c,) = other.images[SAVE]
    assert not torch.equal(png_pixels(png_c), png_pixels(png_a))
    assert not torch.equal(kept["c"]["samples"], latent_a)
    (cached,) = events.of("execution_cached")
    assert sorted(cached.nodes) == sorted([LOADER, "6", "7", LATENT])
    ran = [e.node for e in events.of("executing") if e.node is not None]
    assert sorted(ran) == sorted([SAMPLER, DECODE, SAVE, "20", "21"])


def test_progress_events_for_every_step(engine):
    with Events(engine) as events:
        result = engine.run(txt2img(CKPT, seed=21, steps=5, keep=None))
    progress = [(e.value, e.max, e.prompt_id) for e in events.of("progress") if e.node == SAMPLER]
    assert progress == [(i, 5, result.prompt_id) for i in range(1, 6)]


def test_interrupt_stops_the_sampler_within_a_step_and_the_engine_goes_on(engine, kept):
    first_step, stop_sent = threading.Event(), threading.Event()
    after_interrupt = []

    def on_message(message):
        if message.type == "progress" and message.event.node == SAMPLER:
            first_step.set()
            if stop_sent.is_set():
                after_interrupt.append(message.event.value)

    steps = 1000
    with Events(engine) as events, engine.events.subscribe(on_message):
        submitted = engine.submit(txt2img(CKPT, seed=31, steps=steps, keep=None))
        assert first_step.wait(60)
        engine.interrupt()
        stop_sent.set()
        entry = engine.wait(submitted.prompt_id, 60)
    assert entry is not None and entry["status"]["status_str"] == "error"
    (interrupted,) = events.of("execution_interrupted")
    assert interrupted.node_id == SAMPLER and interrupted.node_type == "KSampler"
    done = [e.value for e in events.of("progress") if e.node == SAMPLER]
    assert len(after_interrupt) <= 1  # the step in flight may still report; the next progress call raises
    assert len(done) < 100 < steps
    with pytest.raises(Interrupted):  # run() turns the history status into the typed error
        engine._raise_for_status(submitted.prompt_id, entry)
    result = engine.run(txt2img(CKPT, seed=32, steps=2, keep="after"))
    assert engine.history_item(result.prompt_id)[result.prompt_id]["status"]["status_str"] == "success"
    assert torch.isfinite(kept["after"]["samples"]).all()


# -- img2img / denoise -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 4, 20])
@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_denoise_schedule_equals_comfyui(model, scheduler, steps):
    for denoise in (1.0, 0.6):
        ref = SIGMAS[f"{scheduler}|{steps}|{denoise}"]
        ours = step_sigmas(model, "euler", scheduler, steps, denoise, None, None, False)
        torch.testing.assert_close(ours, torch.tensor(ref["default"]), atol=1e-5, rtol=1e-5,
                                   equal_nan=True)  # kl_optimal at 1 step is 0/0 in ComfyUI too
        ours = step_sigmas(model, "uni_pc", scheduler, steps, denoise, None, None, False)
        torch.testing.assert_close(ours, torch.tensor(ref["discard_penultimate"]), atol=1e-5, rtol=1e-5)


def test_img2img_uses_the_denoise_schedule_differs_from_txt2img_and_keeps_structure(engine, kept, model_calls):
    with Events(engine) as events:
        engine.run(img2img(0.6, key="i2i_06", cfg=1.0))
    ref = SIGMAS["normal|4|0.6"]["default"]
    assert [sigmas[0] for _, sigmas, _ in model_calls] == pytest.approx(ref[:-1], rel=1e-5)
    assert [e.max for e in events.of("progress") if e.node == SAMPLER] == [4] * 4

    engine.run(txt2img(CKPT, seed=5, steps=4, cfg=1.0, keep="t2i_ref"))
    engine.run(img2img(0.3, key="i2i_03", cfg=1.0))
    source = kept["i2i_06_source"]["samples"]
    distance = {k: float((kept[k]["samples"] - source).abs().mean()) for k in ("i2i_03", "i2i_06", "t2i_ref")}
    # less denoise stays closer to the encoded picture; even 0.6 is far closer to it than txt2img
    assert 0 < distance["i2i_03"] < distance["i2i_06"] < distance["t2i_ref"] / 3

    def correlation(key: str) -> float:
        return float(torch.corrcoef(torch.stack([kept[key]["samples"].flatten(), source.flatten()]))[0, 1])

    assert correlation("i2i_03") > correlation("t2i_ref") + 0.1


def test_denoise_zero_returns_the_input_latent(engine, kept, model_calls):
    engine.run(img2img(0.0, key="d0"))
    assert model_calls == []
    assert torch.equal(kept["d0"]["samples"], kept["d0_source"]["samples"])


# -- KSamplerAdvanced ------------------------------------------------------------------------------------------------


def test_advanced_step_window_by_hand(model):
    full = step_sigmas(model, "euler", "normal", 4, 1.0, None, None, False)
    torch.testing.assert_close(full, torch.tensor(SIGMAS["normal|4|1.0"]["default"]), atol=1e-5, rtol=1e-5)
    assert torch.equal(step_sigmas(model, "euler", "normal", 4, 1.0, 0, 10000, True), full)
    leftover = step_sigmas(model, "euler", "normal", 4, 1.0, 0, 2, False)  # return_with_leftover_noise: enable
    assert torch.equal(leftover, full[:3]) and leftover[-1] > 0
    finished = step_sigmas(model, "euler", "normal", 4, 1.0, 0, 2, True)  # ... disable: last sigma forced to 0
    assert torch.equal(finished[:2], full[:2]) and finished[2] == 0 and full[2] > 0
    assert torch.equal(step_sigmas(model, "euler", "normal", 4, 1.0, 2, 10000, True), full[2:])
    assert torch.equal(step_sigmas(model, "euler", "normal", 4, 1.0, 3, 10000, True), full[3:])
    assert len(step_sigmas(model, "euler", "normal", 4, 1.0, 4, 10000, True)) == 0
    assert torch.equal(step_sigmas(model, "euler", "normal", 4, 1.0, 1, 3, False), full[1:4])


@pytest.mark.parametrize("sampler_name", ["euler", "heun"])
@pytest.mark.parametrize("split", [1, 2, 3])
def test_two_chained_advanced_samplers_equal_one_ksampler(engine, kept, sampler_name, split):
    prompt = base_graph(CKPT)
    prompt["30"] = ksampler_advanced([LATENT, 0], add_noise=True, seed=9, steps=4, start=0, end=split,
                                     leftover_noise=True, sampler_name=sampler_name)
    prompt["31"] = ksampler_advanced(["30", 0], add_noise=False, seed=9, steps=4, start=split, end=10000,
                                     leftover_noise=False, sampler_name=sampler_name)
    prompt[SAMPLER] = ksampler([LATENT, 0], seed=9, steps=4, sampler_name=sampler_name)
    prompt["40"] = {"class_type": "KeepLatent", "inputs": {"value": ["30", 0], "key": "first_half"}}
    prompt["41"] = {"class_type": "KeepLatent", "inputs": {"value": ["31", 0], "key": "chained"}}
    prompt["42"] = {"class_type": "KeepLatent", "inputs": {"value": [SAMPLER, 0], "key": "single"}}
    engine.run(prompt)
    chained, single = kept["chained"]["samples"], kept["single"]["samples"]
    # equal up to float32 rounding (the hand-over divides by and multiplies with the latent scale factor)
    tolerance = 1e-5 * float(single.abs().max())
    assert float((chained - single).abs().max()) <= tolerance
    assert float((kept["first_half"]["samples"] - single).abs().max()) > 10 * tolerance  # the second half mattered


def test_advanced_start_past_the_end_returns_the_latent(engine, kept, model_calls):
    prompt = base_graph(CKPT)
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": "picture.png"}}
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": [LOADER, 2]}}
    prompt["30"] = ksampler_advanced(["11", 0], add_noise=True, seed=9, steps=4, start=4, end=10000,
                                     leftover_noise=False)
    prompt["40"] = {"class_type": "KeepLatent", "inputs": {"value": ["30", 0], "key": "past_end"}}
    prompt["41"] = {"class_type": "KeepLatent", "inputs": {"value": ["11", 0], "key": "past_end_source"}}
    engine.run(prompt)
    assert model_calls == []
    assert torch.equal(kept["past_end"]["samples"], kept["past_end_source"]["samples"])


def test_advanced_leftover_noise_keeps_the_last_sigma(engine, kept, model_calls):
    prompt = base_graph(CKPT)
    prompt["30"] = ksampler_advanced([LATENT, 0], add_noise=True, seed=9, steps=4, start=0, end=2,
                                     leftover_noise=True, cfg=1.0)
    prompt["40"] = {"class_type": "KeepLatent", "inputs": {"value": ["30", 0], "key": "noisy"}}
    engine.run(prompt)
    full = SIGMAS["normal|4|1.0"]["default"]
    assert [s[0] for _, s, _ in model_calls] == pytest.approx(full[:2], rel=1e-5)
    # two euler steps stop at sigma_2 ≈ 1.9: the latent still carries that much noise (std ≈ sigma / 0.18215)
    assert float(kept["noisy"]["samples"].std()) > 0.5 * full[2] / 0.18215


# -- inpainting ------------------------------------------------------------------------------------------------------


def _hole_masks() -> torch.Tensor:
    hole = torch.zeros(8, 8, dtype=torch.bool)
    hole[HOLE[0] // 8:HOLE[1] // 8, HOLE[2] // 8:HOLE[3] // 8] = True
    return hole


@pytest.mark.parametrize("sampler_name", ["euler", "dpmpp_2m", "ddim", "euler_ancestral"])
def test_set_latent_noise_mask_keeps_the_unmasked_region(engine, kept, sampler_name):
    prompt = base_graph(CKPT)
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": "hole.png"}}  # MASK = 1 inside the hole
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": [LOADER, 2]}}
    prompt["12"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": ["10", 1]}}
    prompt[SAMPLER] = ksampler(["12", 0], seed=5, steps=4, sampler_name=sampler_name)
    prompt["40"] = {"class_type": "KeepLatent", "inputs": {"value": [SAMPLER, 0], "key": "inpainted"}}
    prompt["41"] = {"class_type": "KeepLatent", "inputs": {"value": ["11", 0], "key": "inpaint_source"}}
    engine.run(prompt)
    out, source = kept["inpainted"]["samples"], kept["inpaint_source"]["samples"]
    hole = _hole_masks()
    # Outside the mask every model output is replaced by the source latent, so the last step lands on it; like
    # ComfyUI there is no final paste, so "equal" means up to the float32 rounding of the last update and of the
    # latent scaling (measured: ≤ 6e-8 on values ~0.5).
    assert float((out - source)[..., ~hole].abs().max()) <= 1e-6
    assert float((out - source)[..., hole].abs().mean()) > 0.1


def test_inpaint_model_with_vae_encode_for_inpaint(engine, kept, model_calls):
    prompt = base_graph(INPAINT_CKPT)
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": "hole.png"}}
    prompt["11"] = {"class_type": "VAEEncodeForInpaint",
                    "inputs": {"pixels": ["10", 0], "vae": [LOADER, 2], "mask": ["10", 1], "grow_mask_by": 0}}
    prompt[SAMPLER] = ksampler(["11", 0], seed=5, steps=3)
    prompt[DECODE] = {"class_type": "VAEDecode", "inputs": {"samples": [SAMPLER, 0], "vae": [LOADER, 2]}}
    prompt["40"] = {"class_type": "KeepLatent", "inputs": {"value": [SAMPLER, 0], "key": "inpaint_model"}}
    prompt["41"] = {"class_type": "KeepLatent", "inputs": {"value": ["11", 0], "key": "inpaint_model_source"}}
    prompt["42"] = {"class_type": "KeepImage", "inputs": {"value": [DECODE, 0], "key": "inpaint_model_image"}}
    engine.run(prompt)
    # one batched call per step, each with the 5 extra channels (mask + masked-image latent) of a 9-channel UNet
    assert [(x, c) for x, _, c in model_calls] == [((2, 4, 8, 8), (2, 5, 8, 8))] * 3
    out, source = kept["inpaint_model"]["samples"], kept["inpaint_model_source"]["samples"]
    hole = _hole_masks()
    assert torch.isfinite(out).all() and kept["inpaint_model_image"].shape == (1, 64, 64, 3)
    assert float((out - source)[..., ~hole].abs().max()) <= 1e-6
    assert float((out - source)[..., hole].abs().mean()) > 0.1


# -- batches ---------------------------------------------------------------------------------------------------------


def test_batch_of_three_decodes_and_saves_three_images(engine, kept):
    result = engine.run(txt2img(CKPT, seed=41, steps=2, batch=3, keep="batch3"))
    samples = kept["batch3"]["samples"]
    assert samples.shape == (3, 4, 8, 8) and kept["batch3_image"].shape == (3, 64, 64, 3)
    assert len(result.images[SAVE]) == 3
    assert not torch.equal(samples[0], samples[1]) and not torch.equal(samples[1], samples[2])


def test_latent_from_batch_gets_the_noise_of_its_index(engine, kept, monkeypatch):
    noises = []
    original = ksampler_module.prepare_noise

    def recording(latent, seed, batch_index=None):
        noise = original(latent, seed, batch_index)
        noises.append((batch_index, noise))
        return noise

    monkeypatch.setattr(ksampler_module, "prepare_noise", recording)
    prompt = base_graph(CKPT, batch=4)
    prompt[SAMPLER] = ksampler([LATENT, 0], seed=42, steps=2)
    prompt["12"] = {"class_type": "LatentFromBatch", "inputs": {"samples": [LATENT, 0], "batch_index": 3, "length": 1}}
    prompt["30"] = ksampler(["12", 0], seed=42, steps=2)
    prompt["40"] = {"class_type": "KeepLatent", "inputs": {"value": [SAMPLER, 0], "key": "whole_batch"}}
    prompt["41"] = {"class_type": "KeepLatent", "inputs": {"value": ["30", 0], "key": "item3"}}
    engine.run(prompt)
    refs = load_file(DATA / "noise_ref.safetensors")  # ComfyUI's prepare_noise
    by_index = {None if bi is None else tuple(bi): noise for bi, noise in noises}
    assert torch.equal(by_index[(3,)], refs["seed42_1x4x8x8_bi3"])
    assert torch.equal(by_index[None][3:4], by_index[(3,)]) and by_index[None].shape == (4, 4, 8, 8)
    assert kept["item3"]["batch_index"] == [3]
    whole, item = kept["whole_batch"]["samples"], kept["item3"]["samples"]
    torch.testing.assert_close(item, whole[3:4], atol=1e-4 * float(whole.abs().max()), rtol=0)


# -- CFG model calls -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg, rows", [(1.0, 1), (7.0, 2)])
@pytest.mark.parametrize("batch", [1, 2])
def test_one_model_call_per_euler_step(engine, model_calls, cfg, rows, batch):
    engine.run(txt2img(CKPT, seed=51, steps=4, cfg=cfg, batch=batch, save=False, keep="cfg_calls"))
    # cfg 1 skips the negative prompt; otherwise cond and uncond go through the UNet as one batch
    assert [x for x, _, _ in model_calls] == [(rows * batch, 4, 8, 8)] * 4


# -- previews --------------------------------------------------------------------------------------------------------


def test_latent_previews_on_the_event_bus(tmp_path, models_dir, engine):
    preview_engine = make_engine(tmp_path, models_dir, preview_method="latent2rgb", preview_size=96)
    try:
        with Events(preview_engine) as events:
            preview_engine.run(txt2img(CKPT, seed=61, steps=3, keep=None))
    finally:
        preview_engine.close()
    frames = events.of("preview")
    assert len(frames) == 3 and all(f.node_id == SAMPLER and f.image_type == "image/jpeg" for f in frames)
    for frame in frames:
        assert frame.image[:2] == b"\xff\xd8"
        with Image.open(io.BytesIO(frame.image)) as img:
            # latent2rgb gives one pixel per latent pixel; ComfyUI's server then fits it to preview_size both ways
            assert img.format == "JPEG" and img.size == (96, 96)
    assert len({f.image for f in frames}) > 1  # the denoised estimate changes from step to step
    with Events(engine) as quiet:  # the default preview_method is "none"
        engine.run(txt2img(CKPT, seed=62, steps=3, keep=None))
    assert quiet.of("preview") == [] and len(quiet.of("progress")) >= 3


def test_latent_previews_as_websocket_binary_frames(tmp_path, models_dir):
    from fixtures_asgi import running_server
    from websockets.sync.client import connect

    from comfy_core.asgi import create_app

    preview_engine = make_engine(tmp_path, models_dir, preview_method="latent2rgb")
    app = create_app(preview_engine, owns_engine=True)
    with running_server(app) as base, connect(base.replace("http://", "ws://") + "/ws?clientId=ks") as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "status"
        body = json.dumps({"prompt": txt2img(CKPT, seed=63, steps=3, keep=None), "client_id": "ks"}).encode()
        request = urllib.request.Request(base + "/prompt", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            prompt_id = json.loads(response.read())["prompt_id"]
        frames, progress = [], []
        deadline = time.monotonic() + 120
        while True:
            frame = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            if isinstance(frame, bytes):
                frames.append(frame)
                continue
            message = json.loads(frame)
            if message["type"] == "progress" and message["data"]["node"] == SAMPLER:
                progress.append(message["data"]["value"])
            if message["type"] == "executing" and message["data"]["node"] is None \
                    and message["data"]["prompt_id"] == prompt_id:
                break
    assert progress == [1, 2, 3] and len(frames) == 3
    for frame in frames:  # type 1 PREVIEW_IMAGE, format 1 JPEG
        assert struct.unpack(">II", frame[:8]) == (1, 1) and frame[8:10] == b"\xff\xd8"
        with Image.open(io.BytesIO(frame[8:])) as img:
            assert img.size == (512, 512)  # the default preview_size


# -- every sampler ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler_name", KSAMPLER_NAMES)
def test_every_sampler_runs_through_the_node(engine, kept, sampler_name):
    schedulers = ("normal", "karras", "exponential")
    prompt = base_graph(CKPT)
    for i, scheduler in enumerate(schedulers):
        prompt[f"3{i}"] = ksampler([LATENT, 0], seed=71, steps=2, sampler_name=sampler_name, scheduler=scheduler)
        prompt[f"4{i}"] = {"class_type": "KeepLatent",
                           "inputs": {"value": [f"3{i}", 0], "key": f"{sampler_name}|{scheduler}"}}
    engine.run(prompt)
    for scheduler in schedulers:
        samples = kept[f"{sampler_name}|{scheduler}"]["samples"]
        assert samples.shape == (1, 4, 8, 8) and torch.isfinite(samples).all()
        assert float(samples.abs().max()) > 0
