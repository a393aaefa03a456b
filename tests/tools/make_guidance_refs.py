"""Build tests/data/guidance_refs.safetensors: reference outputs of the real libraries our re-implementations follow.

Not run by the tests. Needs `transformers` (CLIPVisionModelWithProjection) and `opencv-python-headless` (cv2), which
are not dependencies of comfy-core:  pip install --target /tmp/refsite transformers opencv-python-headless
then  PYTHONPATH=tests:/tmp/refsite python tests/tools/make_guidance_refs.py

- CLIP vision: HF transformers on the tiny towers of fixtures_guidance (3-layer gelu and 24-layer quick_gelu).
- OpenCV: resize (INTER_AREA down/up, INTER_CUBIC), GaussianBlur on uint8, and the comfyui_controlnet_aux HED and
  scribble pipelines written with cv2 calls as the pack makes them, on the tiny HED network.
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

sys.path.insert(0, str(Path(__file__).parents[1]))
from fixtures_guidance import guidance_test_image, tiny_clip_vision, tiny_hed  # noqa: E402

from comfy_core.models.clip_vision import clip_preprocess  # noqa: E402
from comfy_core.models.hed import HEDNetwork  # noqa: E402

OUT = Path(__file__).parents[1] / "data" / "guidance_refs.safetensors"
LINES = [np.array(a, dtype=np.uint8) for a in (
    [[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
    [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]])]


def clip_refs(out: dict) -> None:
    image = torch.rand(2, 40, 50, 3, generator=torch.Generator().manual_seed(3))
    for name, layers, act in (("tiny3", 3, "gelu"), ("tiny24", 24, "quick_gelu")):
        sd = tiny_clip_vision(layers=layers)
        cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=16,
                               image_size=28, patch_size=7, projection_dim=24, hidden_act=act)
        model = CLIPVisionModelWithProjection(cfg).eval()
        model.load_state_dict(sd, strict=False)
        with torch.no_grad():
            r = model(pixel_values=clip_preprocess(image, 28), output_hidden_states=True)
        out[f"clip/{name}/image_embeds"] = r.image_embeds
        out[f"clip/{name}/last_hidden_state"] = r.last_hidden_state
        out[f"clip/{name}/penultimate_hidden_states"] = r.hidden_states[-2]
    out["clip/image"] = image


def resize_with_pad(img: np.ndarray, res: int, up: int) -> tuple[np.ndarray, int, int]:
    h, w = img.shape[:2]
    k = res / min(h, w)
    ht, wt = int(np.round(h * k)), int(np.round(w * k))
    img = cv2.resize(img, (wt, ht), interpolation=up if k > 1 else cv2.INTER_AREA)
    return np.pad(img, [[0, -ht % 64], [0, -wt % 64], [0, 0]], mode="edge"), ht, wt


def hed_ref(net: HEDNetwork, img: np.ndarray, res: int, safe: bool, scribble: bool) -> np.ndarray:
    padded, ht, wt = resize_with_pad(img, res, cv2.INTER_CUBIC)
    h, w = padded.shape[:2]
    with torch.no_grad():
        sides = net(torch.from_numpy(padded).float().permute(2, 0, 1)[None])
    sides = [cv2.resize(s.numpy().astype(np.float32)[0, 0], (w, h), interpolation=cv2.INTER_LINEAR) for s in sides]
    edge = 1 / (1 + np.exp(-np.mean(np.stack(sides, 2), axis=2).astype(np.float64)))
    if safe:
        edge = (edge.astype(np.float32) * 3.0).astype(np.int32).astype(np.float32) / 2.0
    m = (edge * 255.0).clip(0, 255).astype(np.uint8)
    if scribble:
        x = cv2.GaussianBlur(m.astype(np.float32), (0, 0), 3.0)
        y = np.zeros_like(x)
        for f in LINES:
            np.putmask(y, cv2.dilate(x, kernel=f) == x, x)
        z = np.zeros_like(y, dtype=np.uint8)
        z[y > 127] = 255
        m = cv2.GaussianBlur(z, (0, 0), 3.0)
        m[m > 4] = 255
        m[m < 255] = 0
    return np.ascontiguousarray(m[:ht, :wt])


def scribble_ref(img: np.ndarray, res: int) -> np.ndarray:
    padded, ht, wt = resize_with_pad(img, res, cv2.INTER_AREA)
    m = np.zeros_like(padded)
    m[np.min(padded, axis=2) < 127] = 255
    return np.ascontiguousarray((255 - m)[:ht, :wt])


def cv_refs(out: dict) -> None:
    img = guidance_test_image()
    out["cv/image"] = torch.from_numpy(img)
    out["cv/area_down"] = torch.from_numpy(cv2.resize(img, (53, 37), interpolation=cv2.INTER_AREA))
    out["cv/area_up"] = torch.from_numpy(cv2.resize(img, (200, 150), interpolation=cv2.INTER_AREA))
    out["cv/cubic_up"] = torch.from_numpy(cv2.resize(img, (171, 128), interpolation=cv2.INTER_CUBIC))
    out["cv/blur3"] = torch.from_numpy(cv2.GaussianBlur(img, (0, 0), 3.0))
    net = HEDNetwork.from_state_dict(tiny_hed())
    for res, safe, scribble in ((128, False, False), (128, True, False), (192, False, True), (64, True, True)):
        out[f"hed/{res}_{int(safe)}_{int(scribble)}"] = torch.from_numpy(hed_ref(net, img, res, safe, scribble))
    for res in (64, 128):
        out[f"scribble/{res}"] = torch.from_numpy(scribble_ref(img, res))


def main() -> None:
    out: dict[str, torch.Tensor] = {}
    clip_refs(out)
    cv_refs(out)
    save_file({k: v.contiguous() for k, v in out.items()}, str(OUT))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(out)} tensors)")


if __name__ == "__main__":
    main()
