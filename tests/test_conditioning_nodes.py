"""Conditioning data nodes: the exact extras keys and values ComfyUI's sampler reads, and no mutation of inputs."""
from __future__ import annotations

import pytest
import torch

from comfy_core.nodes.conditioning import (ConditioningAverage, ConditioningCombine, ConditioningConcat,
                                           ConditioningSetArea, ConditioningSetAreaPercentage,
                                           ConditioningSetAreaStrength, ConditioningSetMask,
                                           ConditioningSetTimestepRange, ConditioningZeroOut)


def cond(value: float, tokens: int = 3, dim: int = 2, pooled: float | None = None, **extras):
    d = dict(extras)
    if pooled is not None:
        d["pooled_output"] = torch.full((1, dim), pooled)
    return [torch.full((1, tokens, dim), value), d]


def test_combine_concatenates_lists():
    a, b = [cond(1.0)], [cond(2.0), cond(3.0)]
    (out,) = ConditioningCombine().combine(a, b)
    assert [c[0][0, 0, 0].item() for c in out] == [1.0, 2.0, 3.0]


def test_average_tokens_and_pooled():
    to = [cond(1.0, tokens=3, pooled=10.0, keep="me")]
    frm = [cond(3.0, tokens=5, pooled=20.0)]
    (out,) = ConditioningAverage().addWeighted(to, frm, 0.25)
    tensor, extras = out[0]
    assert tensor.shape == (1, 3, 2)  # conditioning_from is cut to the length of conditioning_to
    assert torch.allclose(tensor, torch.full((1, 3, 2), 1.0 * 0.25 + 3.0 * 0.75))
    assert torch.allclose(extras["pooled_output"], torch.full((1, 2), 10 * 0.25 + 20 * 0.75))
    assert extras["keep"] == "me"
    assert to[0][1]["pooled_output"][0, 0] == 10.0  # input untouched


def test_average_pads_short_from_with_zeros():
    (out,) = ConditioningAverage().addWeighted([cond(1.0, tokens=4)], [cond(2.0, tokens=2)], 0.5)
    assert out[0][0][0, :, 0].tolist() == [1.5, 1.5, 0.5, 0.5]


def test_average_pooled_edge_cases():
    (out,) = ConditioningAverage().addWeighted([cond(1.0)], [cond(2.0, pooled=7.0)], 0.5)
    # `to` has no pooled output: it counts as the `from` one, so the mix is the `from` value
    assert out[0][1]["pooled_output"][0, 0].item() == 7.0
    (out,) = ConditioningAverage().addWeighted([cond(1.0, pooled=3.0)], [cond(2.0)], 0.5)
    assert out[0][1]["pooled_output"][0, 0].item() == 3.0  # `from` has none: `to` keeps its own


def test_concat():
    (out,) = ConditioningConcat().concat([cond(1.0, tokens=2, a=1), cond(5.0, tokens=3)], [cond(2.0, tokens=4)])
    assert out[0][0].shape == (1, 6, 2) and out[0][0][0, :, 0].tolist() == [1, 1, 2, 2, 2, 2]
    assert out[1][0].shape == (1, 7, 2) and out[0][1] == {"a": 1}


def test_set_area_in_latent_units():
    src = [cond(1.0, x=1)]
    (out,) = ConditioningSetArea().append(src, width=200, height=96, x=17, y=64, strength=0.7)
    assert out[0][1] == {"x": 1, "area": (12, 25, 8, 2), "strength": 0.7, "set_area_to_bounds": False}
    assert out[0][0] is src[0][0] and src[0][1] == {"x": 1}


def test_set_area_percentage():
    (out,) = ConditioningSetAreaPercentage().append([cond(1.0)], 0.5, 0.25, 0.1, 0.2, 1.5)
    assert out[0][1] == {"area": ("percentage", 0.25, 0.5, 0.2, 0.1), "strength": 1.5, "set_area_to_bounds": False}


def test_set_area_strength():
    (out,) = ConditioningSetAreaStrength().append([cond(1.0, area=(1, 1, 0, 0))], 2.5)
    assert out[0][1] == {"area": (1, 1, 0, 0), "strength": 2.5}


def test_set_mask():
    mask = torch.ones(8, 8)
    (out,) = ConditioningSetMask().append([cond(1.0)], mask, "default", 0.8)
    extras = out[0][1]
    assert extras["mask"].shape == (1, 8, 8)
    assert extras["set_area_to_bounds"] is False and extras["mask_strength"] == 0.8
    (out,) = ConditioningSetMask().append([cond(1.0)], torch.ones(2, 8, 8), "mask bounds", 1.0)
    assert out[0][1]["set_area_to_bounds"] is True and out[0][1]["mask"].shape == (2, 8, 8)


def test_zero_out():
    src = [cond(3.0, pooled=4.0, conditioning_lyrics=torch.ones(2), other=5)]
    (out,) = ConditioningZeroOut().zero_out(src)
    tensor, extras = out[0]
    assert tensor.shape == (1, 3, 2) and tensor.abs().sum() == 0
    assert extras["pooled_output"].abs().sum() == 0 and extras["conditioning_lyrics"].abs().sum() == 0
    assert extras["other"] == 5
    assert src[0][0].sum() == 18 and src[0][1]["pooled_output"].sum() == 8
    (out,) = ConditioningZeroOut().zero_out([cond(1.0, pooled_output=None)])
    assert out[0][1]["pooled_output"] is None


@pytest.mark.parametrize("start, end", [(0.0, 1.0), (0.2, 0.6)])
def test_timestep_range(start, end):
    (out,) = ConditioningSetTimestepRange().set_range([cond(1.0, k=1)], start, end)
    assert out[0][1] == {"k": 1, "start_percent": start, "end_percent": end}
