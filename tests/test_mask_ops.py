"""The comfy_extras mask nodes (comfy_core.nodes.mask_ops): exact values on small hand-made masks."""
from __future__ import annotations

import pytest
import torch
from fixtures_nodes import node_context
from PIL import Image

from comfy_core import context
from comfy_core.nodes import mask_ops as ops


def _m(values) -> torch.Tensor:
    """Nested list [H][W] -> MASK [1,H,W]."""
    return torch.tensor(values, dtype=torch.float32)[None]


# --- mask ----------------------------------------------------------------------------------------------------------


def test_image_color_to_mask_rounds_to_8_bit():
    image = torch.tensor([[[1.0, 0.5, 0.0], [1.0, 0.502, 0.0], [0.0, 0.0, 1.0]]])[None]  # [1,1,3,3]
    (mask,) = ops.ImageColorToMask().image_to_mask(image, 0xFF8000)  # 0.5·255 = 127.5 -> 128 = 0x80
    assert mask.tolist() == [[[1.0, 1.0, 0.0]]]
    (mask,) = ops.ImageColorToMask().image_to_mask(image, 0x0000FF)
    assert mask.tolist() == [[[0.0, 0.0, 1.0]]]


def test_crop_mask_accepts_2d_and_cuts_at_edges():
    mask = torch.arange(12.0).reshape(3, 4)
    (out,) = ops.CropMask().crop(mask, 1, 1, 2, 5)
    assert out.tolist() == [[[5.0, 6.0], [9.0, 10.0]]]
    (empty,) = ops.CropMask().crop(mask, 10, 0, 3, 3)
    assert empty.shape == (1, 3, 0)  # a crop outside the mask is empty, not an error


@pytest.mark.parametrize(("operation", "expected"), [
    ("multiply", [[0.0, 0.25, 1.0], [0.0, 0.25, 0.0]]),
    ("add", [[0.0, 1.0, 1.0], [0.0, 1.0, 0.0]]),
    ("subtract", [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
    # the logic operations round first, half to even: 0.5 counts as 0
    ("and", [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]),
    ("or", [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]),
    ("xor", [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),
])
def test_mask_composite_operations_with_offset_and_clipping(operation, expected):
    destination = _m([[0.0, 0.5, 1.0], [0.0, 0.5, 0.0]])
    source = _m([[0.5, 1.0, 9.0], [0.5, 0.0, 9.0]])  # placed at x=1: its last column falls outside
    (out,) = ops.MaskComposite().combine(destination, source, 1, 0, operation)
    assert out.tolist() == [expected]
    assert destination[0, 0, 1] == 0.5  # input untouched


def test_mask_composite_source_beyond_destination_changes_nothing():
    destination = _m([[0.25, 0.75]])
    (out,) = ops.MaskComposite().combine(destination, _m([[1.0]]), 5, 5, "add")
    assert out.tolist() == [[[0.25, 0.75]]]


def test_mask_composite_batches():
    destination = torch.zeros((2, 1, 2))
    (out,) = ops.MaskComposite().combine(destination, torch.ones((1, 1, 1)), 1, 0, "add")
    assert out.tolist() == [[[0.0, 1.0]], [[0.0, 1.0]]]  # one source mask applies to every destination
    with pytest.raises(ValueError, match="batch"):
        ops.MaskComposite().combine(torch.zeros((2, 1, 2)), torch.ones((3, 1, 1)), 0, 0, "add")


def test_feather_mask_ramps_each_side():
    mask = torch.ones((1, 4, 5))
    (out,) = ops.FeatherMask().feather(mask, 2, 0, 1, 0)
    assert out[0, 0].tolist() == [0.5, 1.0, 1.0, 1.0, 1.0]  # right = 1: (0 + 1) / 1 leaves the last column
    (out,) = ops.FeatherMask().feather(mask, 0, 4, 0, 2)
    assert out[0, :, 0].tolist() == [0.25, 0.5, 0.75, 0.5]  # top ramp 1/4..4/4, then the bottom's 2/2, 1/2
    (out,) = ops.FeatherMask().feather(torch.ones((2, 2)), 9, 0, 0, 0)  # clamped to the width; 2-D input
    assert out.tolist() == [[[0.5, 1.0], [0.5, 1.0]]]


SPOT = [[0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0]]


def test_grow_mask_tapered_and_square():
    (plus,) = ops.GrowMask().expand_mask(_m(SPOT), 1, True)
    assert plus[0].tolist() == [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    (diamond,) = ops.GrowMask().expand_mask(_m(SPOT), 2, True)
    assert diamond[0, 0].tolist() == [0, 0, 1, 0, 0] and diamond[0, 1].tolist() == [0, 1, 1, 1, 0]
    (square,) = ops.GrowMask().expand_mask(_m(SPOT), 1, False)
    assert square[0, 1:4, 1:4].sum() == 9 and square.sum() == 9


def test_grow_mask_shrinks_and_handles_borders():
    full = torch.ones((1, 3, 4))
    (out,) = ops.GrowMask().expand_mask(full, -1, True)
    assert torch.equal(out, full)  # pixels outside the mask do not erode the border
    block = _m([[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 0]])
    (out,) = ops.GrowMask().expand_mask(block, -1, False)
    assert out[0].tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    grey = _m([[0.25, 0.75]])
    assert ops.GrowMask().expand_mask(grey, 1, True)[0].tolist() == [[[0.75, 0.75]]]  # grey-level max
    assert ops.GrowMask().expand_mask(grey, -1, True)[0].tolist() == [[[0.25, 0.25]]]
    assert ops.GrowMask().expand_mask(grey, 0, True)[0].tolist() == grey.tolist()


def test_threshold_mask_is_strict():
    (out,) = ops.ThresholdMask().image_to_mask(_m([[0.2, 0.5, 0.7]]), 0.5)
    assert out.tolist() == [[[0.0, 0.0, 1.0]]]


def test_mask_preview_saves_grey_png(tmp_path):
    node_ctx = node_context(tmp_path)
    with context.use(node_ctx):
        result = ops.MaskPreview().execute(_m([[0.0, 1.0]]))
    (entry,) = result["ui"]["images"]
    assert entry["type"] == "temp" and entry["filename"].startswith("ComfyUI_temp_")
    with Image.open(node_ctx.storage.root("temp") / entry["filename"]) as img:
        assert img.mode == "RGB" and img.size == (2, 1)
        assert img.getpixel((0, 0)) == (0, 0, 0) and img.getpixel((1, 0)) == (255, 255, 255)


# --- mask/compositing ----------------------------------------------------------------------------------------------


def _pd(mode: str, src=0.6, src_mask=0.5, dst=0.2, dst_mask=0.75):
    """Composite 1x1 RGB pixels; masks are 1 - alpha."""
    image, mask = ops.PorterDuffImageComposite().composite(
        torch.full((1, 1, 1, 3), src), torch.full((1, 1, 1), src_mask),
        torch.full((1, 1, 1, 3), dst), torch.full((1, 1, 1), dst_mask), mode)
    return image[0, 0, 0, 0].item(), mask[0, 0, 0].item()


@pytest.mark.parametrize(("mode", "colour", "alpha"), [
    # source alpha 0.5 (premultiplied colour 0.3), destination alpha 0.25 (premultiplied 0.05)
    ("SRC", 0.6, 0.5),
    ("DST", 0.2, 0.25),
    ("CLEAR", 0.0, 0.0),
    ("SRC_OVER", (0.3 + 0.5 * 0.05) / 0.625, 0.625),
    ("DST_OVER", (0.05 + 0.75 * 0.3) / 0.625, 0.625),
    ("SRC_IN", 0.6, 0.125),
    ("DST_IN", 0.2, 0.125),
    ("SRC_OUT", 0.6, 0.375),
    ("DST_OUT", 0.2, 0.125),
    ("SRC_ATOP", (0.25 * 0.3 + 0.5 * 0.05) / 0.25, 0.25),
    ("DST_ATOP", (0.5 * 0.05 + 0.75 * 0.3) / 0.5, 0.5),
    ("XOR", (0.75 * 0.3 + 0.5 * 0.05) / 0.5, 0.5),
    ("ADD", 0.35 / 0.75, 0.75),
    ("MULTIPLY", 0.3 * 0.05 / 0.125, 0.125),
    ("SCREEN", (0.3 + 0.05 - 0.015) / 0.625, 0.625),
    ("DARKEN", (0.75 * 0.3 + 0.5 * 0.05 + 0.05) / 0.625, 0.625),
    ("LIGHTEN", min(1.0, (0.75 * 0.3 + 0.5 * 0.05 + 0.3) / 0.625), 0.625),
    ("OVERLAY", 2 * 0.3 * 0.05 / 0.625, 0.625),  # 2·0.05 < 0.25: the multiply branch
])
def test_porter_duff_modes(mode, colour, alpha):
    out_colour, out_mask = _pd(mode)
    assert out_colour == pytest.approx(colour, abs=1e-6)
    assert out_mask == pytest.approx(1 - alpha, abs=1e-6)


def test_porter_duff_overlay_screen_branch():
    # destination alpha 1 and colour 0.8: 2·0.8 >= 1, so sa·da - 2(da - s)(sa - d) with s = 0.3, sa = 0.5
    colour, mask = _pd("OVERLAY", dst=0.8, dst_mask=0.0)
    assert colour == pytest.approx((0.5 - 2 * (1 - 0.3) * (0.5 - 0.8)) / 1.0) and mask == pytest.approx(0.0)


def test_porter_duff_fully_transparent_result_is_black_and_bad_mode_errors():
    assert _pd("SRC", src_mask=1.0) == (0.0, 1.0)
    with pytest.raises(ValueError, match="mode"):
        _pd("PLUS")


def test_porter_duff_batch_is_the_shortest_and_sizes_follow_destination():
    source = torch.ones((3, 2, 2, 3))
    destination = torch.zeros((2, 4, 4, 3))
    image, mask = ops.PorterDuffImageComposite().composite(
        source, torch.zeros((3, 1, 1)), destination, torch.zeros((1, 4, 4)), "SRC_OVER")
    assert image.shape == (1, 4, 4, 3) and mask.shape == (1, 4, 4)  # destination_alpha has 1 entry
    assert torch.allclose(image, torch.ones((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="channel"):
        ops.PorterDuffImageComposite().composite(torch.ones((1, 2, 2, 4)), torch.zeros((1, 2, 2)),
                                                 torch.ones((1, 2, 2, 3)), torch.zeros((1, 2, 2)), "SRC")


def test_split_image_with_alpha():
    rgba = torch.tensor([[[[0.125, 0.5, 1.0, 0.25]]]])
    image, mask = ops.SplitImageWithAlpha().split_image_with_alpha(rgba)
    assert image.tolist() == [[[[0.125, 0.5, 1.0]]]] and mask.tolist() == [[[0.75]]]
    image, mask = ops.SplitImageWithAlpha().split_image_with_alpha(torch.rand((2, 1, 2, 3)))
    assert image.shape == (2, 1, 2, 3) and torch.equal(mask, torch.zeros((2, 1, 2)))  # RGB: opaque


def test_join_image_with_alpha_resizes_and_repeats():
    image = torch.full((2, 2, 2, 4), 0.5)  # an existing alpha is replaced
    (out,) = ops.JoinImageWithAlpha().join_image_with_alpha(image, torch.full((1, 1), 0.25))  # 2-D, 1x1 mask
    assert out.shape == (2, 2, 2, 4)
    assert torch.allclose(out[..., 3], torch.full((2, 2, 2), 0.75)) and torch.equal(out[..., :3], image[..., :3])
    (out,) = ops.JoinImageWithAlpha().join_image_with_alpha(torch.zeros((1, 1, 2, 3)), torch.zeros((3, 1, 2)))
    assert out.shape == (3, 1, 2, 4)  # the image repeats to the mask's batch


def test_split_then_join_round_trips():
    rgba = torch.rand((2, 3, 4, 4))
    image, mask = ops.SplitImageWithAlpha().split_image_with_alpha(rgba)
    (joined,) = ops.JoinImageWithAlpha().join_image_with_alpha(image, mask)
    assert torch.allclose(joined, rgba, atol=1e-6)


@pytest.mark.parametrize(("expand", "tapered"), [(3, True), (-2, True), (2, False), (-3, False)])
def test_grow_mask_matches_scipy_grey_morphology(expand, tapered):
    ndimage = pytest.importorskip("scipy.ndimage")  # what ComfyUI's GrowMask runs
    np = pytest.importorskip("numpy")
    masks = torch.rand((2, 9, 11), generator=torch.Generator().manual_seed(expand))
    c = 0 if tapered else 1
    footprint = np.array([[c, 1, c], [1, 1, 1], [c, 1, c]])
    step = ndimage.grey_dilation if expand > 0 else ndimage.grey_erosion
    expected = []
    for m in masks.numpy():
        for _ in range(abs(expand)):
            m = step(m, footprint=footprint)
        expected.append(torch.from_numpy(m))
    (out,) = ops.GrowMask().expand_mask(masks, expand, tapered)
    assert torch.equal(out, torch.stack(expected))
