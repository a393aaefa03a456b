"""Parity with real ComfyUI on the random-weight SD1.5 checkpoint (tests/data/e2e_txt2img_euler_normal.*):
64×64, 4 steps, euler/normal, cfg 7, seed 42. Tolerances from the reference README: final latent ≤ 1e-3 relative,
image ≤ 1e-3, PNG ≥ 40 dB PSNR."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

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
