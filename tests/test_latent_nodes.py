"""Latent nodes: shapes and hand-computed values, following ComfyUI's nodes.py semantics."""
from __future__ import annotations

import math

import pytest
import torch

from comfy_core.nodes.latent import (LATENT_UPSCALE_METHODS, EmptyLatentImage, LatentComposite,
                                     LatentCompositeMasked, LatentFromBatch, LatentUpscale, LatentUpscaleBy,
                                     RepeatLatentBatch, SetLatentNoiseMask)
from comfy_core.upscale import bislerp, common_upscale, repeat_to_batch_size


def batch_of_indices(n: int, c: int = 4, h: int = 2, w: int = 2) -> torch.Tensor:
    """[n,c,h,w] where item k is filled with k."""
    return torch.arange(n, dtype=torch.float32).reshape(n, 1, 1, 1).expand(n, c, h, w).clone()


def test_empty_latent_image():
    (out,) = EmptyLatentImage().generate(width=70, height=40, batch_size=3)
    assert set(out) == {"samples"}
    assert out["samples"].shape == (3, 4, 5, 8) and out["samples"].dtype == torch.float32
    assert out["samples"].abs().sum() == 0


def test_latent_upscale_zero_size_is_identity():
    lat = {"samples": torch.rand(1, 4, 8, 8)}
    assert LatentUpscale().upscale(lat, "bilinear", 0, 0, "disabled")[0] is lat


def test_latent_upscale_sizes():
    lat = {"samples": torch.rand(1, 4, 8, 6), "batch_index": [3]}
    up = LatentUpscale().upscale
    assert up(lat, "nearest-exact", 128, 0, "disabled")[0]["samples"].shape == (1, 4, 21, 16)  # 8*128/6 = 170.7 -> 171
    assert up(lat, "nearest-exact", 0, 96, "disabled")[0]["samples"].shape == (1, 4, 12, 9)  # max(64, 72) = 72
    assert up(lat, "nearest-exact", 32, 32, "disabled")[0]["samples"].shape == (1, 4, 8, 8)  # raised to 64
    out = up(lat, "bilinear", 256, 128, "disabled")[0]
    assert out["samples"].shape == (1, 4, 16, 32)
    assert out["batch_index"] == [3] and lat["samples"].shape == (1, 4, 8, 6)  # input untouched


def test_latent_upscale_center_crop_values():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0] = torch.arange(8).reshape(8, 1) * 10 + torch.arange(8)  # value = 10*row + col
    (out,) = LatentUpscale().upscale({"samples": x}, "nearest-exact", 128, 64, "center")
    s = out["samples"][0, 0]
    assert s.shape == (8, 16)
    # aspect 1 -> 2: rows 2..5 are kept, then each row/col doubled by nearest-exact
    expected = torch.tensor([[(2 + r // 2) * 10 + c // 2 for c in range(16)] for r in range(8)], dtype=torch.float32)
    assert torch.equal(s, expected)


def test_latent_upscale_by_uses_pythons_round():
    lat = {"samples": torch.rand(2, 4, 3, 5)}
    (out,) = LatentUpscaleBy().upscale(lat, "bilinear", 1.5)
    assert out["samples"].shape == (2, 4, 4, 8)  # round(4.5) = 4, round(7.5) = 8


@pytest.mark.parametrize("method", LATENT_UPSCALE_METHODS)
def test_every_latent_method_keeps_a_constant(method):
    lat = {"samples": torch.full((2, 4, 6, 5), 0.75)}
    (out,) = LatentUpscaleBy().upscale(lat, method, 2.0)
    assert out["samples"].shape == (2, 4, 12, 10)
    assert torch.allclose(out["samples"], torch.full_like(out["samples"], 0.75), atol=1e-6)


def test_area_downscale_is_block_mean():
    x = torch.tensor([[1.0, 3.0, 5.0, 7.0], [1.0, 3.0, 5.0, 7.0]]).reshape(1, 1, 2, 4)
    out = common_upscale(x, 2, 1, "area", "disabled")
    assert out.flatten().tolist() == [2.0, 6.0]


def test_bislerp_hand_values():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)  # two columns: (1,0) and (0,1)
    out = bislerp(x, 4, 1)[0, :, 0, :].T  # [4 columns, 2 channels]
    s, c = math.sin(math.pi / 8), math.cos(math.pi / 8)
    expected = torch.tensor([[1.0, 0.0], [c, s], [s, c], [0.0, 1.0]])
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out.norm(dim=1), torch.ones(4), atol=1e-6)  # slerp keeps unit norms


def test_bislerp_lerps_norms_and_handles_zero_vectors():
    x = torch.tensor([[2.0, 0.0], [0.0, 0.0]]).T.reshape(1, 2, 1, 2)
    out = bislerp(x, 4, 1)[0, :, 0, :].T
    assert torch.isfinite(out).all()
    # a zero vector has no direction (dot = 0, omega = pi/2): sin(0.75 * pi/2) * (2*0.75 + 0*0.25)
    assert out[1].tolist() == pytest.approx([1.5 * math.sin(3 * math.pi / 8), 0.0])


def test_five_dim_latents_fold_frames():
    x = torch.rand(1, 4, 3, 2, 2)
    out = common_upscale(x, 4, 4, "nearest-exact", "disabled")
    assert out.shape == (1, 4, 3, 4, 4)
    assert torch.equal(out[0, :, 1, ::2, ::2], x[0, :, 1])


def test_repeat_to_batch_size():
    t = torch.arange(3).reshape(3, 1)
    assert repeat_to_batch_size(t, 2).flatten().tolist() == [0, 1]
    assert repeat_to_batch_size(t, 7).flatten().tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_latent_from_batch():
    lat = {"samples": batch_of_indices(4)}
    (out,) = LatentFromBatch().frombatch(lat, 1, 2)
    assert out["samples"][:, 0, 0, 0].tolist() == [1.0, 2.0] and out["batch_index"] == [1, 2]
    (out,) = LatentFromBatch().frombatch(lat, 10, 5)  # index clamped to the last item
    assert out["samples"].shape[0] == 1 and out["batch_index"] == [3]
    (out,) = LatentFromBatch().frombatch({**lat, "batch_index": [5, 6, 7, 8]}, 1, 2)
    assert out["batch_index"] == [6, 7]


def test_latent_from_batch_noise_masks():
    masks = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])  # [2,1,2,2], fewer than the 4 latents
    (out,) = LatentFromBatch().frombatch({"samples": batch_of_indices(4), "noise_mask": masks}, 1, 2)
    assert out["noise_mask"][:, 0, 0, 0].tolist() == [1.0, 0.0]  # tiled 0,1,0,1 then items 1..2
    single = torch.full((1, 1, 2, 2), 0.5)
    (out,) = LatentFromBatch().frombatch({"samples": batch_of_indices(4), "noise_mask": single}, 2, 1)
    assert torch.equal(out["noise_mask"], single) and out["noise_mask"] is not single


def test_repeat_latent_batch():
    lat = {"samples": batch_of_indices(2), "batch_index": [3, 4], "noise_mask": torch.rand(2, 1, 2, 2)}
    (out,) = RepeatLatentBatch().repeat(lat, 3)
    assert out["samples"][:, 0, 0, 0].tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert out["batch_index"] == [3, 4, 5, 6, 7, 8]
    assert out["noise_mask"].shape == (6, 1, 2, 2)
    single = {"samples": batch_of_indices(2), "noise_mask": torch.rand(1, 1, 2, 2)}
    assert RepeatLatentBatch().repeat(single, 3)[0]["noise_mask"].shape == (1, 1, 2, 2)


def test_latent_composite_places_and_clips():
    to = {"samples": torch.zeros(1, 1, 4, 4)}
    src = {"samples": torch.ones(1, 1, 2, 2)}
    (out,) = LatentComposite().composite(to, src, x=16, y=8, feather=0)
    expected = torch.zeros(4, 4)
    expected[1:3, 2:4] = 1
    assert torch.equal(out["samples"][0, 0], expected)
    (out,) = LatentComposite().composite(to, src, x=24, y=0, feather=0)  # only one column fits
    assert out["samples"][0, 0].sum() == 2 and out["samples"][0, 0, :2, 3].tolist() == [1.0, 1.0]
    assert to["samples"].sum() == 0


def test_latent_composite_feather():
    to = {"samples": torch.zeros(1, 1, 8, 8)}
    src = {"samples": torch.ones(1, 1, 4, 4)}
    (out,) = LatentComposite().composite(to, src, x=16, y=16, feather=16)  # 2 latent pixels of ramp
    s = out["samples"][0, 0]
    ramp = torch.tensor([0.5, 1.0, 1.0, 0.5])
    assert torch.allclose(s[2:6, 2:6], ramp[:, None] * ramp[None, :])
    assert s.sum() == pytest.approx(float(ramp.sum() ** 2))
    (out,) = LatentComposite().composite(to, src, x=0, y=0, feather=16)  # edges on the border stay sharp
    assert out["samples"][0, 0, 0, 0] == 1.0 and out["samples"][0, 0, 3, 3] == 0.25


def test_latent_composite_masked():
    dest = {"samples": torch.zeros(2, 1, 4, 4), "batch_index": [0, 1]}
    src = {"samples": torch.ones(1, 1, 2, 2)}
    mask = torch.tensor([[[1.0, 0.0], [0.5, 1.0]]])
    (out,) = LatentCompositeMasked().composite(dest, src, 8, 8, False, mask)
    assert out["batch_index"] == [0, 1]
    for b in range(2):  # the source is repeated to the destination's batch
        assert out["samples"][b, 0, 1:3, 1:3].tolist() == [[1.0, 0.0], [0.5, 1.0]]
    assert out["samples"].sum() == 2 * 2.5
    (out,) = LatentCompositeMasked().composite(dest, src, 24, 0, False)
    assert out["samples"][0, 0].sum() == 2 and out["samples"][0, 0, 0, 3] == 1
    (out,) = LatentCompositeMasked().composite(dest, src, 0, 0, True)
    assert torch.equal(out["samples"], torch.ones(2, 1, 4, 4))
    assert dest["samples"].sum() == 0


def test_set_latent_noise_mask():
    lat = {"samples": torch.zeros(2, 4, 8, 8)}
    (out,) = SetLatentNoiseMask().set_mask(lat, torch.rand(2, 64, 64))
    assert out["noise_mask"].shape == (2, 1, 64, 64) and "noise_mask" not in lat
    (out,) = SetLatentNoiseMask().set_mask(lat, torch.rand(64, 64))
    assert out["noise_mask"].shape == (1, 1, 64, 64)
