"""Mask nodes: SolidMask, InvertMask, MaskToImage, ImageToMask (ComfyUI's comfy_extras/nodes_mask.py)."""
from __future__ import annotations

import pytest
import torch

from comfy_core.nodes.mask import ImageToMask, InvertMask, MaskToImage, SolidMask


def test_solid_mask():
    (mask,) = SolidMask().solid(0.25, width=3, height=2)
    assert mask.shape == (1, 2, 3) and mask.dtype == torch.float32
    assert torch.equal(mask, torch.full((1, 2, 3), 0.25))


def test_invert_mask():
    (out,) = InvertMask().invert(torch.tensor([[[0.0, 0.25], [1.0, 0.5]]]))
    assert out.tolist() == [[[1.0, 0.75], [0.0, 0.5]]]


def test_mask_to_image():
    mask = torch.tensor([[[0.0, 0.5]], [[1.0, 0.25]]])  # [2,1,2]
    (image,) = MaskToImage().mask_to_image(mask)
    assert image.shape == (2, 1, 2, 3)
    assert image[1, 0, 1].tolist() == [0.25, 0.25, 0.25]
    assert MaskToImage().mask_to_image(torch.zeros(4, 5))[0].shape == (1, 4, 5, 3)  # a 2-D mask is one image


def test_image_to_mask_channels():
    image = torch.tensor([[[[0.1, 0.2, 0.3, 0.4]]]]).expand(2, 2, 2, 4)
    for index, channel in enumerate(["red", "green", "blue", "alpha"]):
        (mask,) = ImageToMask().image_to_mask(image, channel)
        assert mask.shape == (2, 2, 2)
        assert mask[1, 1, 1].item() == pytest.approx(0.1 * (index + 1))
    with pytest.raises(ValueError, match="no alpha channel"):
        ImageToMask().image_to_mask(torch.zeros(1, 2, 2, 3), "alpha")


def test_mask_image_roundtrip():
    mask = torch.rand(3, 4, 5)
    (image,) = MaskToImage().mask_to_image(mask)
    assert torch.equal(ImageToMask().image_to_mask(image, "green")[0], mask)
