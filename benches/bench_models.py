"""Model loading and UNet speed on CPU.

- checkpoint load, cold (a fresh ModelCache each round; the file is in the OS page cache after the first round) and
  cached (second request of the same checkpoint), in seconds and GB/s of file read;
- peak RSS of a fresh process loading the 2.1 GB random SD1.5 checkpoint, against the float32 size of its UNet + VAE
  + CLIP (target < 1.3x);
- UNet forward (one apply_model call), batch 2, 64x64 image = 8x8 latent, 77 text tokens: the tiny test UNet and the
  full SD1.5 UNet.
Results: benches/results/models_cpu.json.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))

from fixtures_sd15 import random_sd15_checkpoint

from comfy_core.models.cache import ModelCache
from comfy_core.models.checkpoint import build_diffusion_model
from comfy_core.models.state_dict import TensorDict

RESULTS: dict = {}


@pytest.fixture(scope="module", autouse=True)
def _save(write_results):
    yield
    write_results("models_cpu", RESULTS)


@pytest.fixture(scope="module")
def ckpt() -> Path:
    return random_sd15_checkpoint()


def test_checkpoint_load_cold(benchmark, ckpt):
    size = os.path.getsize(ckpt)
    benchmark.pedantic(lambda: ModelCache().load_checkpoint(ckpt), rounds=3, iterations=1)
    secs = benchmark.stats.stats.median
    RESULTS["load_cold"] = {"seconds_median": secs, "file_gb": size / 1e9, "gb_per_s": size / 1e9 / secs}


def test_checkpoint_load_cached(benchmark, ckpt):
    cache = ModelCache()
    cache.load_checkpoint(ckpt)
    benchmark(lambda: cache.load_checkpoint(ckpt))
    assert cache.stats.loads == {"unet": 1, "clip": 1, "vae": 1}
    RESULTS["load_cached"] = {"seconds_median": benchmark.stats.stats.median}


def test_peak_rss_while_loading(benchmark, ckpt):
    script = textwrap.dedent(f"""
        import json, torch
        from comfy_core.models.checkpoint import load_checkpoint_file

        def hwm():  # peak RSS of this process image (ru_maxrss would carry the parent's peak across exec)
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

        base = hwm()
        model, clip, vae = load_checkpoint_file({str(ckpt)!r})
        peak = hwm()
        mods = [model.unet, vae.model] + list(clip.modules().values())
        params = sum(p.numel() for m in mods for p in m.parameters())
        held = sum(p.numel() * p.element_size() for m in mods for p in m.parameters())
        print(json.dumps({{"peak": peak, "base": base, "params": params, "held": held}}))
    """)

    def run() -> dict:
        out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    r = benchmark.pedantic(run, rounds=1, iterations=1)
    fp32 = r["params"] * 4
    RESULTS["peak_rss_loading"] = {
        "peak_rss_gb": r["peak"] / 1e9, "rss_before_load_gb": r["base"] / 1e9, "fp32_model_gb": fp32 / 1e9,
        "loaded_weights_gb": r["held"] / 1e9, "peak_over_fp32": r["peak"] / fp32,
        "note": "UNet/VAE float32; CLIP weights stay float16 as in ComfyUI",
    }
    assert r["peak"] < 1.3 * fp32


def _forward_bench(benchmark, model, name: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ctx = torch.randn(2, 77, model.spec.unet.context_dim, generator=g)
    sigma = torch.tensor([1.0, 1.0])
    model.apply_model(x, sigma, context=ctx)  # warm-up
    benchmark.pedantic(lambda: model.apply_model(x, sigma, context=ctx), rounds=3, iterations=1)
    RESULTS[name] = {"seconds_median": benchmark.stats.stats.median, "batch": 2, "latent": [8, 8],
                     "params": sum(p.numel() for p in model.unet.parameters())}


def test_unet_forward_tiny(benchmark):
    import fixtures_models as fm

    sd = TensorDict(fm.checkpoint_state_dict("sd1", text=False, vae=False, dtype=torch.float32))
    model = build_diffusion_model(sd, device="cpu", dtype=torch.float32, source="tiny")
    _forward_bench(benchmark, model, "unet_forward_tiny")


def test_unet_forward_sd15(benchmark, ckpt):
    model = ModelCache().load_unet(ckpt)
    _forward_bench(benchmark, model, "unet_forward_sd15")
