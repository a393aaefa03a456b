"""Helpers for the KSampler tests: engines on temp folders that share one models folder, API-format prompt builders
(txt2img, img2img, inpaint) and output nodes that hand LATENT / IMAGE values back to the test."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from comfy_core import Engine, EngineConfig

# node ids of the graphs below (ComfyUI's default txt2img workflow numbering)
LOADER, POS, NEG, LATENT, SAMPLER, DECODE, SAVE = "4", "6", "7", "5", "3", "8", "9"
KEEP_LATENT, KEEP_IMAGE = "20", "21"


def capture_nodes(store: dict[str, Any]) -> dict[str, type]:
    """Output nodes `KeepLatent` / `KeepImage` that put their input into `store[key]` (they always re-run)."""

    class _Keep:
        RETURN_TYPES = ()
        FUNCTION = "keep"
        OUTPUT_NODE = True
        CATEGORY = "test"
        KIND = ""

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": (cls.KIND,), "key": ("STRING", {"default": "out"})}}

        @classmethod
        def IS_CHANGED(cls, value, key):
            return float("nan")

        def keep(self, value, key):
            store[key] = value
            return {"ui": {"kept": [key]}}

    class KeepLatent(_Keep):
        KIND = "LATENT"

    class KeepImage(_Keep):
        KIND = "IMAGE"

    return {"KeepLatent": KeepLatent, "KeepImage": KeepImage}


def make_engine(root: Path, models_dir: Path, store: dict[str, Any] | None = None, **config: Any) -> Engine:
    """A started engine with its own input/output/temp under `root`, models from `models_dir`, capture nodes."""
    engine = Engine(EngineConfig(models_dir=str(models_dir), input_dir=str(root / "input"),
                                 output_dir=str(root / "output"), temp_dir=str(root / "temp"), **config))
    engine.register_nodes(capture_nodes(store if store is not None else {}))
    return engine.start()


def ksampler(latent: list, *, seed: int = 1, steps: int = 3, cfg: float = 7.0, sampler_name: str = "euler",
             scheduler: str = "normal", denoise: float = 1.0) -> dict[str, Any]:
    return {"class_type": "KSampler", "inputs": {
        "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler_name, "scheduler": scheduler,
        "denoise": denoise, "model": [LOADER, 0], "positive": [POS, 0], "negative": [NEG, 0], "latent_image": latent}}


def ksampler_advanced(latent: list, *, add_noise: bool, seed: int, steps: int, start: int, end: int,
                      leftover_noise: bool, cfg: float = 7.0, sampler_name: str = "euler",
                      scheduler: str = "normal") -> dict[str, Any]:
    return {"class_type": "KSamplerAdvanced", "inputs": {
        "add_noise": "enable" if add_noise else "disable", "noise_seed": seed, "steps": steps, "cfg": cfg,
        "sampler_name": sampler_name, "scheduler": scheduler, "model": [LOADER, 0], "positive": [POS, 0],
        "negative": [NEG, 0], "latent_image": latent, "start_at_step": start, "end_at_step": end,
        "return_with_leftover_noise": "enable" if leftover_noise else "disable"}}


def base_graph(ckpt: str, width: int = 64, height: int = 64, batch: int = 1) -> dict[str, Any]:
    """Loader, the two prompts and an empty latent: what every KSampler graph here starts from."""
    return {
        LOADER: {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        POS: {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a cat", "clip": [LOADER, 1]}},
        NEG: {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": [LOADER, 1]}},
        LATENT: {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
    }


def txt2img(ckpt: str, *, save: bool = True, keep: str | None = "out", width: int = 64, height: int = 64,
            batch: int = 1, **sampler: Any) -> dict[str, Any]:
    """CheckpointLoaderSimple → CLIPTextEncode ×2 → EmptyLatentImage → KSampler → VAEDecode → SaveImage, plus
    (with `keep`) KeepLatent/KeepImage on the sampler and decoder outputs."""
    prompt = base_graph(ckpt, width, height, batch)
    prompt[SAMPLER] = ksampler([LATENT, 0], **sampler)
    prompt[DECODE] = {"class_type": "VAEDecode", "inputs": {"samples": [SAMPLER, 0], "vae": [LOADER, 2]}}
    if save:
        prompt[SAVE] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "ks", "images": [DECODE, 0]}}
    if keep is not None:
        prompt[KEEP_LATENT] = {"class_type": "KeepLatent", "inputs": {"value": [SAMPLER, 0], "key": keep}}
        prompt[KEEP_IMAGE] = {"class_type": "KeepImage", "inputs": {"value": [DECODE, 0], "key": keep + "_image"}}
    return prompt


def structured_png(size: int = 64, hole: tuple[int, int, int, int] | None = None) -> bytes:
    """A smooth gradient with a bright disc (structure to keep). With `hole` = (y0, y1, x0, x1) the PNG is RGBA with
    alpha 0 there, which LoadImage turns into a MASK of 1 over the hole."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    disc = ((yy - 0.4) ** 2 + (xx - 0.6) ** 2 < 0.06).astype(np.float64)
    rgb = np.stack([xx, yy, 0.5 * (1 - xx) + 0.5 * disc], axis=-1)
    pixels = (np.clip(rgb, 0, 1) * 255).astype(np.uint8)
    if hole is not None:
        alpha = np.full((size, size, 1), 255, dtype=np.uint8)
        y0, y1, x0, x1 = hole
        alpha[y0:y1, x0:x1] = 0
        pixels = np.concatenate([pixels, alpha], axis=-1)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()
