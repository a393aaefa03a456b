"""HED soft-edge annotator ("ControlNetHED.pth", lllyasviel's Apache-2.0 re-implementation used by ControlNet 1.1).

Xie & Tu 2015, "Holistically-Nested Edge Detection" (arXiv:1504.06375): a VGG16-style trunk whose five stages each emit
a one-channel side output; the edge map fuses them. This variant takes RGB in 0..255 minus a learned per-channel offset
(`norm`), has no batch norm, and fuses by a plain mean of the upsampled side outputs followed by a sigmoid.

File layout (plain state dict, no prefix): `norm` [1,3,1,1]; `block{1..5}.convs.{j}.{weight,bias}` (2,2,3,3,3 3x3
convs, widths 64,128,256,512,512 in the real file; read from shapes here) and `block{k}.projection.{weight,bias}`
(1x1 conv to one channel).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import preprocessors
from ..errors import ModelLoadError
from .state_dict import open_state_dict

log = logging.getLogger(__name__)

HED_FILENAME = "ControlNetHED.pth"
# where comfyui_controlnet_aux keeps it inside its checkpoint folder; accepted inside the annotators folder too
HED_SUBPATHS = (HED_FILENAME, "lllyasviel/Annotators/" + HED_FILENAME)
STAGE_CONVS = (2, 2, 3, 3, 3)


class Stage(nn.Module):
    """Optional 2x2 max-pool, n 3x3 conv+ReLU, and a 1x1 projection of the stage output to one channel."""

    def __init__(self, c_in: int, width: int, n: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c_in if j == 0 else width, width, 3, padding=1) for j in range(n))
        self.projection = nn.Conv2d(width, 1, 1)

    def forward(self, h: torch.Tensor, pool: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if pool:
            h = F.max_pool2d(h, kernel_size=2, stride=2)
        for conv in self.convs:
            h = F.relu(conv(h))
        return h, self.projection(h)


class HEDNetwork(nn.Module):
    """Five stages; forward([B,3,H,W] RGB 0..255) -> five side logits [B,1,H/2^k,W/2^k], k = 0..4."""

    def __init__(self, widths: tuple[int, ...] = (64, 128, 256, 512, 512)):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        c_in = 3
        for k, (width, n) in enumerate(zip(widths, STAGE_CONVS), start=1):
            self.add_module(f"block{k}", Stage(c_in, width, n))
            c_in = width

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = x - self.norm
        sides = []
        for k in range(1, 6):
            h, side = getattr(self, f"block{k}")(h, pool=k > 1)
            sides.append(side)
        return sides

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor]) -> "HEDNetwork":
        try:
            widths = tuple(sd[f"block{k}.projection.weight"].shape[1] for k in range(1, 6))
        except KeyError as e:
            raise ModelLoadError(f"not a HED (ControlNetHED) state dict: missing {e.args[0]!r}") from None
        with torch.device("meta"):
            net = cls(widths)
        expected = set(net.state_dict())
        missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
        if missing or unexpected:
            raise ModelLoadError(f"HED weights do not match the architecture: missing {missing[:4]}, "
                                 f"unexpected {unexpected[:4]}")
        net.load_state_dict({k: sd[k].float() for k in expected}, assign=True)
        return net.eval().requires_grad_(False)


def find_hed_file(folders, filename: str = HED_FILENAME) -> Path:
    """The HED weights in the annotators folder (`EngineConfig.annotators_dir` or <models_dir>/annotators)."""
    names = HED_SUBPATHS if filename == HED_FILENAME else (filename,)
    for name in names:
        path = folders.full_path("annotators", name)
        if path is not None:
            return path
    where = ", ".join(str(d) for d in folders.dirs("annotators")) or "(no annotators folder configured)"
    raise ModelLoadError(f"HED annotator weights {filename!r} not found; put {filename} (from lllyasviel/Annotators) "
                         f"in the annotators folder: {where}")


def load_hed(path: str | Path, device: torch.device | str = "cpu") -> HEDNetwork:
    """Load `ControlNetHED.pth` (torch pickle read with weights_only=True, or safetensors) as float32."""
    sd = open_state_dict(path)
    try:
        return HEDNetwork.from_state_dict(sd).to(device)
    except ModelLoadError as e:
        raise ModelLoadError(f"{path}: {e}") from None
    finally:
        sd.close()


def safe_step(edge: np.ndarray, step: int = 2) -> np.ndarray:
    """Quantise 0..1 to multiples of 1/step (floor((step+1) x) / step), computed in float32 like the pack."""
    y = edge.astype(np.float32) * np.float32(step + 1)
    return y.astype(np.int32).astype(np.float32) / np.float32(step)


@torch.no_grad()
def hed_edges(net: HEDNetwork, image: np.ndarray, safe: bool = False) -> np.ndarray:
    """uint8 HxWx3 RGB -> uint8 HxW soft edges: mean of the five side logits upsampled to HxW, then a sigmoid."""
    param = net.norm
    x = torch.from_numpy(np.ascontiguousarray(image)).to(param.device, torch.float32)
    x = x.permute(2, 0, 1)[None]  # [1, 3, H, W], values 0..255
    h, w = x.shape[2:]
    sides = [F.interpolate(s.float(), size=(h, w), mode="bilinear", align_corners=False) for s in net(x)]
    mean = torch.cat(sides, dim=1).mean(dim=1)[0].cpu().double().numpy()  # [H, W]
    edge = 1.0 / (1.0 + np.exp(-mean))
    if safe:
        edge = safe_step(edge)
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def hed_detect(net: HEDNetwork, image: np.ndarray, resolution: int = 512, safe: bool = False,
               scribble: bool = False) -> np.ndarray:
    """comfyui_controlnet_aux's HEDdetector on one uint8 HxWx3 image -> uint8 map H'xW'x3 at detection size."""

    def detect(padded: np.ndarray) -> np.ndarray:
        edge = hed_edges(net, padded, safe)
        return preprocessors.thicken_scribble(edge) if scribble else edge

    return preprocessors.run_padded(detect, image, resolution, upscale="cubic")
