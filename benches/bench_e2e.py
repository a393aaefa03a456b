"""The reference workflow end to end on CPU (tests/data/e2e_txt2img_euler_normal.prompt.json: random SD1.5, 64×64,
4 euler steps, cfg 7) and one UNet call, against real ComfyUI v0.3.64 on the same machine class.

- cold: a fresh Engine per round (checkpoint load included; the file is in the OS page cache after the first round);
- warm: one engine, the seed changes every round, so KSampler → VAEDecode → SaveImage re-run (loader and text
  encoders are cached);
- unet_call: `model.apply_model` at an 8×8 latent, batch 2 (cond + uncond), 77 tokens.
ComfyUI's numbers (refs/README): 5–6 s for the cold workflow in-process, ~1.3 s per such UNet call.
The machine is shared with other engineers' test runs, so timings are noisy. Results: benches/results/e2e_cpu.json.
Run: pytest benches/bench_e2e.py
"""
from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))

from fixtures_ksampler import make_engine  # noqa: E402
from fixtures_sd15 import random_sd15_checkpoint  # noqa: E402

PROMPT = json.loads((HERE.parent / "tests" / "data" / "e2e_txt2img_euler_normal.prompt.json").read_text())
COMFYUI_SECONDS = {"workflow_cold": 5.5, "unet_call": 1.3}  # midpoint of 5–6 s; per call


@pytest.fixture(scope="module")
def table(write_results):
    rows: dict = {"config": {"workflow": "e2e_txt2img_euler_normal (64x64, 4 euler steps, cfg 7)",
                             "threads": torch.get_num_threads(), "dtype": "float32",
                             "comfyui_seconds": COMFYUI_SECONDS,
                             "note": "shared 2-core machine: other engineers' tests ran concurrently"}}
    yield rows
    if all(rows.get(k) is not None for k in ("workflow_cold", "workflow_warm", "unet_call")):
        write_results("e2e_cpu", rows)  # nothing is written under --benchmark-disable


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench_e2e_models")
    (root / "checkpoints").mkdir()
    os.symlink(random_sd15_checkpoint(), root / "checkpoints" / "rand_sd15.safetensors")
    return root


def _row(benchmark, key: str | None = None) -> dict | None:
    if not benchmark.stats:
        return None
    stats = benchmark.stats.stats
    row = {"seconds_median": stats.median, "seconds_min": stats.min, "rounds_seconds": list(stats.data)}
    if key is not None:
        row["comfyui_seconds"] = COMFYUI_SECONDS[key]
        row["ours_over_comfyui"] = stats.median / COMFYUI_SECONDS[key]
        row["ours_best_over_comfyui"] = stats.min / COMFYUI_SECONDS[key]
    return row


def test_workflow_cold(benchmark, tmp_path, models_dir, table):
    engines = []

    def release() -> None:  # the previous round's models go before the next load (RAM: one SD1.5 at a time)
        while engines:
            engine = engines.pop()
            engine.free(unload_models=True)
            engine.close()

    def cold_run() -> None:
        engine = make_engine(tmp_path / f"round{len(engines)}", models_dir)
        engines.append(engine)
        engine.run(PROMPT, timeout=600)

    try:  # round 1 also pays this process's one-time costs (first CLIP/UNet calls, fresh memory)
        benchmark.pedantic(cold_run, setup=release, rounds=3, iterations=1)
    finally:
        release()
    table["workflow_cold"] = _row(benchmark, "workflow_cold")


def test_workflow_warm(benchmark, tmp_path, models_dir, table):
    engine = make_engine(tmp_path, models_dir)
    seeds = itertools.count(1000)

    def new_seed() -> None:
        prompt = json.loads(json.dumps(PROMPT))
        prompt["3"]["inputs"]["seed"] = next(seeds)
        engine.run(prompt, timeout=600)

    try:
        new_seed()  # load + first run outside the timing
        benchmark.pedantic(new_seed, rounds=5, iterations=1)
    finally:
        engine.free(unload_models=True)
        engine.close()
    row = _row(benchmark)
    if row is not None:
        row["what"] = "seed changed each round: KSampler (4 steps, 4 UNet calls at batch 2) + VAEDecode + SaveImage"
    table["workflow_warm"] = row


def test_unet_call(benchmark, table):
    from comfy_core.models.cache import ModelCache

    model = ModelCache().load_unet(random_sd15_checkpoint())
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(2, 77, 768, generator=g)
    sigma = torch.tensor([14.6146, 14.6146])
    model.apply_model(x, sigma, context=context)  # warm-up (first-call allocations)
    benchmark.pedantic(lambda: model.apply_model(x, sigma, context=context), rounds=5, iterations=1)
    row = _row(benchmark, "unet_call")
    if row is not None:
        row["shape"] = [2, 4, 8, 8]
    table["unet_call"] = row
