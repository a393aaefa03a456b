"""One SD1.5 UNet call on CPU, float32, batch 2 (cond + uncond), 77 text tokens: an 8×8 latent (64 px, the refs/e2e
workflow; real ComfyUI takes ~1.3 s per such call on this machine class) and a 64×64 latent (512 px).

Variants, same process and same weights:
- "gemm" (the default): small convolutions run as one GEMM (comfy_core/models/conv.py);
- "onednn": conv.GEMM_PIXEL_RATIO = inf, so every convolution goes through oneDNN, which re-lays out the weight on
  every call;
- "before": the UNet module of commit a43c1ad (read with `git show`, built on the meta device and given this model's
  weight tensors), i.e. the code before the CPU work: oneDNN everywhere plus channels-last activations after each
  SpatialTransformer, which made oneDNN copy every later conv weight as well. Skipped outside a git checkout.
Per variant: wall seconds with torch's default thread count (pytest-benchmark rounds), and the process CPU seconds of
one call with a single thread, which other jobs on this shared 2-core machine disturb far less than wall time.
Results: benches/results/unet_cpu.json, with the load average around each measurement.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))

from fixtures_sd15 import random_sd15_checkpoint

from comfy_core.models import conv
from comfy_core.models.cache import ModelCache

RESULTS: dict = {
    "config": {"model": "random-weight SD1.5 (859.5M UNet params)", "dtype": "float32", "batch": 2, "tokens": 77,
               "threads": torch.get_num_threads(), "comfyui_seconds_8x8": 1.3, "before_commit": "a43c1ad"},
}
ROUNDS = {8: 5, 64: 3}
BEFORE_COMMIT = "a43c1ad"
VARIANTS = {"gemm": conv.GEMM_PIXEL_RATIO, "onednn": math.inf, "before": math.inf}


@pytest.fixture(scope="module", autouse=True)
def _save(write_results):
    yield
    if any(k.startswith("unet_") for k in RESULTS):  # nothing measured under --benchmark-disable
        write_results("unet_cpu", RESULTS)


@pytest.fixture(scope="module")
def model():
    return ModelCache().load_unet(random_sd15_checkpoint())


@pytest.fixture(scope="module")
def before_unet(model):
    """The UNet of BEFORE_COMMIT sharing `model`'s weight tensors (no second copy)."""
    try:
        source = subprocess.run(["git", "show", f"{BEFORE_COMMIT}:comfy_core/models/unet.py"], cwd=HERE.parent,
                                check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"needs the git history (commit {BEFORE_COMMIT})")
    module = types.ModuleType("unet_before")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{BEFORE_COMMIT}:unet.py", "exec"), module.__dict__)  # noqa: S102 - our own file from git
    cfg = module.UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in model.unet.config.to_dict().items()})
    with torch.device("meta"):
        unet = module.UNetModel(cfg)
    unet.load_state_dict(model.unet.state_dict(), assign=True)
    return unet.eval()


def _inputs(hw: int, context_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 4, hw, hw, generator=g), torch.tensor([1.0, 1.0]), torch.randn(2, 77, context_dim, generator=g)


def _cpu_seconds_one_thread(call, repeats: int) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = []
        for _ in range(repeats):
            start = time.process_time()
            call()
            times.append(time.process_time() - start)
        return min(times)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("hw", [8, 64])
def test_unet_call(benchmark, model, monkeypatch, request, hw, variant):
    monkeypatch.setattr(conv, "GEMM_PIXEL_RATIO", VARIANTS[variant])
    if variant == "before":
        monkeypatch.setattr(model, "unet", request.getfixturevalue("before_unet"))
    x, sigma, ctx = _inputs(hw, model.spec.unet.context_dim)
    call = lambda: model.apply_model(x, sigma, context=ctx)
    call()  # warm-up (first oneDNN primitives, allocator)
    load_before = os.getloadavg()[0]
    benchmark.pedantic(call, rounds=ROUNDS[hw], iterations=1)
    if not benchmark.stats:
        return
    stats = benchmark.stats.stats
    RESULTS[f"unet_{hw}x{hw}_{variant}"] = {
        "wall_seconds_min": stats.min, "wall_seconds_median": stats.median, "rounds_seconds": list(stats.data),
        "cpu_seconds_1_thread": _cpu_seconds_one_thread(call, 3 if hw == 8 else 1),
        "load_average_1min": [load_before, os.getloadavg()[0]], "latent": [hw, hw],
    }
