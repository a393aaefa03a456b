"""Parity with real ComfyUI on the random-weight SD1.5 checkpoint (tests/data/e2e_txt2img_euler_normal.*):
64×64, 4 steps, euler/normal, cfg 7, seed 42. Tolerances from the reference README: final latent ≤ 1e-3 relative,
image ≤ 1e-3, PNG ≥ 40 dB PSNR."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fixtures_ksampler import make_engine
from fixtures_sd15 import random_sd15_checkpoint

DATA = Path(__file__).parent / "data"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ref():
    return load_file(DATA / "e2e_txt2img_euler_normal.safetensors")


def relative(ours: torch.Tensor, expected: torch.Tensor) -> float:
    return float((ours - expected).abs().max() / expected.abs().max())


def test_ksampler_reproduces_comfyui_latent_from_its_conditioning(ref):
    """Sampler + guidance + UNet alone, fed ComfyUI's own conditioning."""
    from comfy_core.models.checkpoint import load_checkpoint_file
    from comfy_core.sampling.ksampler import sample_latent

    model, _, _ = load_checkpoint_file(random_sd15_checkpoint(), want_clip=False, want_vae=False)
    positive = [[ref["cond_positive"], {"pooled_output": ref["pooled_positive"]}]]
    negative = [[ref["cond_negative"], {"pooled_output": ref["pooled_negative"]}]]
    steps = []
    out = sample_latent(model, {"samples": torch.zeros(1, 4, 8, 8)}, positive, negative, seed=42, steps=4, cfg=7.0,
                        sampler_name="euler", scheduler="normal", on_step=lambda i, n, x0: steps.append((i, n)))
    assert steps == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert relative(out["samples"], ref["latent_out"]) < 1e-3


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_workflow_through_the_engine_matches_comfyui(ref, tmp_path):
    """ComfyUI's API prompt as is, through Engine.run, with the checkpoint under the workflow's file name; two
    output nodes added to hand back the KSampler latent and the VAEDecode image."""
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    os.symlink(random_sd15_checkpoint(), models / "checkpoints" / "rand_sd15.safetensors")
    prompt = json.loads((DATA / "e2e_txt2img_euler_normal.prompt.json").read_text())
    kept: dict = {}
    extra = {"90": {"class_type": "KeepLatent", "inputs": {"value": ["3", 0], "key": "latent"}},
             "91": {"class_type": "KeepImage", "inputs": {"value": ["8", 0], "key": "image"}}}
    engine = make_engine(tmp_path, models, kept)
    try:
        result = engine.run({**prompt, **extra}, timeout=600)
    finally:
        engine.free(unload_models=True)
        engine.close()
    assert relative(kept["latent"]["samples"], ref["latent_out"]) < 1e-3
    assert float((kept["image"] - ref["image"]).abs().max()) <= 1e-3
    (png,) = result.images["9"]
    assert png.name == "e2e_txt2img_euler_normal_00001_.png"
    with Image.open(png) as ours, Image.open(DATA / "e2e_txt2img_euler_normal.png") as theirs:
        assert ours.size == theirs.size == (64, 64) and ours.mode == theirs.mode == "RGB"
        assert psnr(np.asarray(ours), np.asarray(theirs)) >= 40
        ours_prompt = json.loads(ours.text["prompt"])
        assert {k: v for k, v in ours_prompt.items() if k not in extra} == json.loads(theirs.text["prompt"])
