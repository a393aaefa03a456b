"""OpenCV-equivalent image operations and the scribble annotators, checked against OpenCV outputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from comfy_core import preprocessors as P
from fixtures_guidance import guidance_test_image

REFS = Path(__file__).parent / "data" / "guidance_refs.safetensors"


@pytest.fixture(scope="module")
def refs() -> dict[str, torch.Tensor]:
    return load_file(str(REFS))


def _mismatch(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    d = np.abs(a.astype(int) - b.astype(int))
    return int(d.max()), float((d > 0).mean())


def test_resize_matches_opencv(refs):
    img = guidance_test_image()
    big, frac = _mismatch(P.resize(img, 53, 37, "area"), refs["cv/area_down"].numpy())
    assert big <= 1 and frac < 0.001  # float rounding ties only
    big, frac = _mismatch(P.resize(img, 200, 150, "area"), refs["cv/area_up"].numpy())
    assert big <= 1 and frac < 0.1  # OpenCV's 11-bit fixed-point coefficients: at most one level
    big, frac = _mismatch(P.resize(img, 171, 128, "cubic"), refs["cv/cubic_up"].numpy())
    assert big <= 1 and frac < 0.01


def test_uint8_gaussian_blur_is_bit_exact(refs):
    assert _mismatch(P.gaussian_blur(guidance_test_image(), 3.0), refs["cv/blur3"].numpy()) == (0, 0.0)


def test_gaussian_kernel_sizes():
    assert len(P.gaussian_kernel(3.0, uint8=True)) == 19 and len(P.gaussian_kernel(3.0, uint8=False)) == 25
    assert int(P._fixed_point_kernel(P.gaussian_kernel(3.0, True)).sum()) == 256


def test_nms_keeps_ridge_of_a_line():
    x = np.zeros((32, 32), np.uint8)
    x[:, 14:18] = 255  # a 4-pixel vertical bar
    thin = P.nms(x, 127, 1.0)
    assert set(np.unique(thin)) == {0, 255}
    assert thin[:, :12].max() == 0 and thin[:, 20:].max() == 0
    assert (thin[5:-5, 14:18] == 255).any(axis=1).all()  # the ridge survives on every row


@pytest.mark.parametrize("res", [64, 128])
def test_scribble_detector_matches_pack(refs, res):
    out = P.scribble_detector(guidance_test_image(), res)
    ref = refs[f"scribble/{res}"].numpy()
    assert out.shape == ref.shape and out.shape[0] == res
    assert set(np.unique(out)) <= {0, 255}
    big, frac = _mismatch(out, ref)
    assert frac < 0.002  # only grey values right at 126/127 can flip after a one-level resize difference


def test_scribble_on_synthetic_strokes():
    img = np.full((64, 96, 3), 240, np.uint8)
    img[30:34, 10:80] = 20  # a dark stroke
    out = P.scribble_detector(img, 64)
    assert out.shape == (64, 96, 3)
    assert (out[30:34, 10:80] == 0).all() and (out[:20] == 255).all()


def test_resize_with_pad_pads_to_64_and_reports_crop():
    padded, (h, w) = P.resize_image_with_pad(np.zeros((90, 120, 3), np.uint8), 100, "cubic")
    assert (h, w) == (100, 133) and padded.shape == (128, 192, 3)
    grey, _ = P.resize_image_with_pad(np.zeros((10, 10), np.uint8), 64, "cubic")
    assert grey.shape == (64, 64, 3)


def test_common_annotator_call_batches_and_truncates():
    images = torch.full((2, 10, 20, 3), 0.999)  # 254.7 truncates to 254
    seen = []

    def annotate(pixels: np.ndarray, res: int) -> np.ndarray:
        seen.append((pixels.dtype, int(pixels.max()), res))
        return np.full((res, 2 * res, 3), 255, np.uint8)

    out = P.common_annotator_call(annotate, images, resolution=64)
    assert out.shape == (2, 64, 128, 3) and out.dtype == torch.float32 and float(out.max()) == 1.0
    assert seen == [(np.uint8, 254, 64)] * 2
    P.common_annotator_call(annotate, images[:1], resolution=32)  # below 64 means the default 512
    assert seen[-1][2] == 512
