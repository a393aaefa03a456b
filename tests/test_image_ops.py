"""The comfy_extras image nodes (comfy_core.nodes.image_ops): exact values on small hand-made tensors."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_nodes import node_context
from PIL import Image, ImageSequence

from comfy_core import context
from comfy_core.image_filters import grid_gaussian, rgb_to_ycbcr
from comfy_core.nodes import image_ops as ops

KORNIA = json.loads((Path(__file__).parent / "data" / "kornia_refs.json").read_text())


def _img(values, channels: int = 1) -> torch.Tensor:
    """[H,W] nested list -> IMAGE [1,H,W,channels] (the same value in every channel)."""
    t = torch.tensor(values, dtype=torch.float32)
    return t[None, :, :, None].repeat(1, 1, 1, channels)


@pytest.fixture
def ctx(tmp_path):
    node_ctx = node_context(tmp_path)
    with context.use(node_ctx):
        yield node_ctx


# --- image -------------------------------------------------------------------------------------------------------


def test_composite_masked_offsets_clip_to_destination():
    dst = torch.zeros((1, 4, 4, 3))
    src = torch.ones((1, 2, 2, 3))
    (out,) = ops.ImageCompositeMasked().composite(dst, src, 3, 1, False)
    expected = torch.zeros((4, 4))
    expected[1:3, 3] = 1.0  # only the source's first column fits
    assert torch.equal(out[0, ..., 0], expected)
    assert torch.equal(dst, torch.zeros((1, 4, 4, 3)))  # the input is not modified


def test_composite_masked_negative_offset_shows_the_far_part_of_the_source():
    dst = torch.zeros((1, 3, 3, 3))
    src = _img([[1, 2], [3, 4]], 3)
    (out,) = ops.ImageCompositeMasked().composite(dst, src, -1, -1, False)
    expected = torch.zeros((3, 3))
    expected[0, 0] = 4.0  # source pixel (1,1) lands on (0,0)
    assert torch.equal(out[0, ..., 0], expected)


def test_composite_masked_small_mask_is_stretched_and_blends():
    dst = torch.zeros((1, 2, 2, 3))
    src = torch.ones((1, 2, 2, 3))
    mask = torch.full((1, 1, 1), 0.25)  # one pixel, bilinearly stretched over the 2x2 source
    (out,) = ops.ImageCompositeMasked().composite(dst, src, 0, 0, False, mask)
    assert torch.allclose(out, torch.full((1, 2, 2, 3), 0.25))


def test_composite_masked_batch_and_resize_rules():
    dst = torch.zeros((3, 4, 4, 3))
    src = torch.stack([torch.full((2, 2, 3), 0.5), torch.full((2, 2, 3), 1.0)])  # 2 -> tiled to 3
    (out,) = ops.ImageCompositeMasked().composite(dst, src, 0, 0, True)
    assert out.shape == (3, 4, 4, 3)
    assert out[:, 0, 0, 0].tolist() == [0.5, 1.0, 0.5]
    assert torch.equal(out[1], torch.ones((4, 4, 3)))  # resize_source fills the whole canvas


def test_composite_masked_rgb_over_rgba_is_opaque():
    dst = torch.zeros((1, 2, 2, 4))
    (out,) = ops.ImageCompositeMasked().composite(dst, torch.ones((1, 1, 1, 3)), 1, 1, False)
    assert out.shape == (1, 2, 2, 4)
    assert out[0, 1, 1].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert out[0, 0, 0].tolist() == [0.0, 0.0, 0.0, 0.0]


def test_add_noise_is_seeded_and_clipped():
    image = torch.full((1, 3, 3, 3), 0.5)
    (a,) = ops.ImageAddNoise().add_noise(image, 7, 0.5)
    (b,) = ops.ImageAddNoise().add_noise(image, 7, 0.5)
    (c,) = ops.ImageAddNoise().add_noise(image, 8, 0.5)
    noise = torch.randn((1, 3, 3, 3), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a, torch.clamp(0.5 + 0.5 * noise, 0, 1))
    assert a.min() >= 0 and a.max() <= 1
    (same,) = ops.ImageAddNoise().add_noise(image, 7, 0.0)
    assert torch.equal(same, image)


def test_get_image_size():
    assert ops.GetImageSize().get_size(torch.zeros((2, 5, 7, 3)), "4") == (7, 5, 2)


def test_load_image_output_reads_annotated_output_files(ctx):
    Image.new("RGB", (3, 2), (255, 0, 0)).save(ctx.storage.root("output") / "done.png")
    image, mask = ops.LoadImageOutput().load_image("done.png [output]")
    assert image.shape == (1, 2, 3, 3) and image[0, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert mask.shape == (1, 64, 64)
    assert ops.LoadImageOutput.VALIDATE_INPUTS("missing.png [output]") is not True


# --- image/batch -------------------------------------------------------------------------------------------------


def test_rebatch_images_regroups_across_input_batches():
    batches = [torch.full((3, 2, 2, 3), float(i)) for i in range(2)]  # 6 images in all
    (out,) = ops.RebatchImages().rebatch(batches, [4])
    assert [b.shape[0] for b in out] == [4, 2]
    assert out[0][:, 0, 0, 0].tolist() == [0, 0, 0, 1]
    assert ops.RebatchImages.OUTPUT_IS_LIST == (True,) and ops.RebatchImages.INPUT_IS_LIST


def test_repeat_image_batch():
    image = torch.arange(2.0).reshape(2, 1, 1, 1)
    (out,) = ops.RepeatImageBatch().repeat(image, 3)
    assert out[:, 0, 0, 0].tolist() == [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize(("index", "length", "expected"), [
    (1, 2, [1, 2]), (3, 5, [3]), (9, 2, [3]), (0, 9, [0, 1, 2, 3]),
])
def test_image_from_batch_clamps_index_and_length(index, length, expected):
    image = torch.arange(4.0).reshape(4, 1, 1, 1)
    (out,) = ops.ImageFromBatch().frombatch(image, index, length)
    assert out[:, 0, 0, 0].tolist() == expected


def test_rgb_to_yuv_and_back():
    image = torch.tensor([[[[1.0, 0.0, 0.0], [0.2, 0.4, 0.6]]]])  # [1,1,2,3]
    y, u, v = ops.ImageRGBToYUV().execute(image)
    assert y.shape == image.shape and torch.equal(y[..., 0], y[..., 2])  # grey planes
    # red: Y = 0.299, Cb = (0 - 0.299)·0.564 + 0.5, Cr = (1 - 0.299)·0.713 + 0.5
    assert y[0, 0, 0, 0].item() == pytest.approx(0.299)
    assert u[0, 0, 0, 0].item() == pytest.approx(0.5 - 0.299 * 0.564)
    assert v[0, 0, 0, 0].item() == pytest.approx(0.5 + 0.701 * 0.713)
    (rgb,) = ops.ImageYUVToRGB().execute(y, u, v)
    assert torch.allclose(rgb, image, atol=2e-3)  # the rounded BT.601 constants are not exact inverses


# --- image/postprocessing ----------------------------------------------------------------------------------------


def test_grid_gaussian_matches_formula():
    k = grid_gaussian(3, 1.0)
    # grid points -1, 0, 1 on each axis: weights exp(-d²/2) normalised
    w = torch.tensor([math.exp(-0.5), 1.0, math.exp(-0.5)])
    assert torch.allclose(k, torch.outer(w, w) / torch.outer(w, w).sum())


def test_blur_keeps_flat_images_and_spreads_an_impulse():
    flat = torch.full((1, 4, 5, 3), 0.3)
    (out,) = ops.ImageBlur().blur(flat, 2, 1.0)
    assert torch.allclose(out, flat)
    impulse = torch.zeros((1, 5, 5, 1))
    impulse[0, 2, 2, 0] = 1.0
    (out,) = ops.ImageBlur().blur(impulse, 1, 1.0)
    expected = torch.zeros((5, 5))
    expected[1:4, 1:4] = grid_gaussian(3, 1.0)  # away from borders the blur of an impulse is the kernel
    assert torch.allclose(out[0, ..., 0], expected)


def test_blur_reflects_at_the_border():
    image = _img([[1, 0, 0]])  # one row: reflect padding mirrors around the edge pixel
    image = image.repeat(1, 3, 1, 1)  # 3 identical rows
    (out,) = ops.ImageBlur().blur(image, 1, 1.0)
    k = grid_gaussian(3, 1.0).sum(0)  # rows are identical, so the vertical part sums out
    # column 0 sees [x(1)=0, 1, 0] after reflecting, column 1 sees [1, 0, 0]
    assert out[0, 1, 0, 0].item() == pytest.approx(k[1].item())
    assert out[0, 1, 1, 0].item() == pytest.approx(k[0].item())


def test_blur_radius_larger_than_image_is_a_clear_error():
    with pytest.raises(ValueError, match="radius"):
        ops.ImageBlur().blur(torch.zeros((1, 2, 2, 3)), 5, 1.0)


def test_sharpen_kernel_sums_to_one_and_boosts_edges():
    flat = torch.full((1, 4, 4, 3), 0.4)
    (out,) = ops.ImageSharpen().sharpen(flat, 1, 1.0, 1.0)
    assert torch.allclose(out, flat, atol=1e-6)
    step = _img([[0.4, 0.4, 0.6, 0.6]] * 3, 3)
    (out,) = ops.ImageSharpen().sharpen(step, 1, 1.0, 0.5)
    g = grid_gaussian(3, 1.0).sum(0)  # column weights
    # pixel (1,1): centre weight 1 - (-5)(1 - g_c·...) -> out = x + 5·(x - blur(x)) on the row profile
    blur = float(g[0] * 0.4 + g[1] * 0.4 + g[2] * 0.6)
    assert out[0, 1, 1, 0].item() == pytest.approx(0.4 + 5 * (0.4 - blur), abs=1e-5)
    assert out.min() >= 0 and out.max() <= 1


def test_quantize_two_colours_without_dither():
    image = _img([[0.0, 0.0], [1.0, 1.0]], 3)
    (out,) = ops.ImageQuantize().quantize(image, 2, "none")
    assert torch.equal(out, image)
    (out,) = ops.ImageQuantize().quantize(image, 1, "none")
    assert len(torch.unique(out)) == 1  # a single palette entry


def test_quantize_bayer_dithers_two_greys_into_the_ordered_pattern():
    image = torch.zeros((1, 4, 4, 3))
    image[:, :, :2], image[:, :, 2:] = 0.2, 0.8  # levels 51 and 204 make the 2-colour palette
    (out,) = ops.ImageQuantize().quantize(image, 2, "bayer-2")
    # bayer-2 thresholds: 256·[[-0.375, 0.125], [0.375, -0.125]] + 0.5 = [[-95.5, 32.5], [96.5, -31.5]];
    # 51 + t -> [0, 83, 147, 19] -> nearest of {51, 204}: [51, 51, 204, 51]
    # 204 + t -> [108, 236, 255, 172] -> [51, 204, 204, 204]
    expected = [[51, 51, 51, 204], [204, 51, 204, 204]] * 2
    assert (out[0, ..., 0] * 255).round().tolist() == expected
    assert torch.equal(out[..., 0], out[..., 1])


def test_bayer_matrix_is_the_classic_index_matrix_centred():
    from comfy_core.image_filters import _bayer_matrix

    classic = np.array([[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]])
    assert np.allclose(_bayer_matrix(2), (classic - 7.5) / 16)
    assert np.allclose(_bayer_matrix(1), (np.array([[0, 2], [3, 1]]) - 1.5) / 4)


def test_quantize_keeps_alpha_and_checks_dither():
    image = torch.rand((1, 2, 2, 4))
    (out,) = ops.ImageQuantize().quantize(image, 4, "floyd-steinberg")
    assert out.shape == (1, 2, 2, 4) and torch.equal(out[..., 3], image[..., 3])
    with pytest.raises(ValueError, match="dither"):
        ops.ImageQuantize().quantize(image, 4, "bayer-3")


SQUARE = [[0, 0, 0, 0, 0, 0],
          [0, 1, 1, 1, 0, 0],
          [0, 1, 1, 1, 0, 0],
          [0, 1, 1, 1, 0, 0],
          [0, 0, 0, 0, 0, 1],
          [0, 0, 0, 0, 0, 0]]


def _morph(op: str, k: int, values=SQUARE) -> list[list[float]]:
    (out,) = ops.Morphology().process(_img(values, 3), op, k)
    assert torch.equal(out[..., 0], out[..., 2])
    return out[0, ..., 0].tolist()


def test_morphology_erode_and_dilate():
    assert _morph("erode", 3) == [[0] * 6, [0] * 6, [0, 0, 1, 0, 0, 0], [0] * 6, [0] * 6, [0] * 6]
    dilated = _morph("dilate", 3)
    assert dilated[0] == [1, 1, 1, 1, 1, 0]
    assert dilated[3] == [1, 1, 1, 1, 1, 1]  # the lone pixel at (4,5) grows into (3..5, 4..5)
    assert dilated[5] == [0, 0, 0, 0, 1, 1]


def test_morphology_even_kernel_window_is_offset_like_kornia():
    impulse = [[0] * 4 for _ in range(4)]
    impulse[1][1] = 1
    # k=2: window rows/cols [i-1, i], so the impulse spreads down/right
    assert _morph("dilate", 2, impulse) == [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]


def test_morphology_compound_operations():
    opened = _morph("open", 3)
    assert opened == [[0] * 6] + [[0, 1, 1, 1, 0, 0]] * 3 + [[0] * 6, [0] * 6]  # the lone pixel is removed
    top_hat = _morph("top_hat", 3)
    assert top_hat[4][5] == 1 and sum(map(sum, top_hat)) == 1
    gradient = _morph("gradient", 3)
    assert gradient[2][2] == 0 and gradient[1][1] == 1 and gradient[0][0] == 1
    holes = [[1, 1, 1], [1, 0, 1], [1, 1, 1]]
    assert _morph("close", 3, holes) == [[1] * 3] * 3
    assert _morph("bottom_hat", 3, holes) == [[0, 0, 0], [0, 1, 0], [0, 0, 0]]


def test_morphology_kernel_larger_than_image():
    assert _morph("dilate", 999, [[0, 0.5], [0.25, 0]]) == [[0.5, 0.5], [0.5, 0.5]]


# --- image/transform ---------------------------------------------------------------------------------------------


def test_stitch_without_image2_passes_through():
    image = torch.rand((1, 2, 2, 3))
    assert ops.ImageStitch().stitch(image, "right", True, 0, "white")[0] is image


def test_stitch_right_with_spacing_and_padding():
    a = torch.zeros((1, 2, 2, 3))
    b = torch.full((1, 4, 1, 3), 0.5)
    (out,) = ops.ImageStitch().stitch(a, "right", False, 1, "red", b)  # odd spacing -> 2
    assert out.shape == (1, 4, 5, 3)
    assert out[0, :, 2:4].reshape(-1, 3).tolist() == [[1.0, 0.0, 0.0]] * 8  # red band
    assert out[0, :, 0, 0].tolist() == [0.0, 0.0, 0.0, 0.0]  # image1 centred, padded with 0 for colours
    assert torch.equal(out[0, :, 4], b[0, :, 0])


def test_stitch_pad_uses_grey_level_of_white_and_up_puts_image2_first():
    a = torch.zeros((1, 1, 3, 3))
    b = torch.full((1, 1, 1, 3), 0.5)
    (out,) = ops.ImageStitch().stitch(a, "up", False, 0, "white", b)
    assert out.shape == (1, 2, 3, 3)
    assert out[0, 0, :, 0].tolist() == [1.0, 0.5, 1.0]  # image2 on top, centred, white padding
    assert torch.equal(out[0, 1], a[0, 0])


def test_stitch_matches_size_and_batches_and_channels():
    a = torch.zeros((2, 4, 4, 3))
    b = torch.ones((1, 2, 4, 4))  # RGBA, aspect 2:1, batch 1
    (out,) = ops.ImageStitch().stitch(a, "down", True, 0, "white", b)
    assert out.shape == (2, 6, 4, 4)  # b scaled to width 4 -> height 2
    assert torch.equal(out[:, :4, :, 3], torch.ones((2, 4, 4)))  # a got an opaque alpha
    assert torch.allclose(out[:, 4:], torch.ones((2, 2, 4, 4)))


def test_resize_and_pad_centres_the_fitted_image():
    image = torch.full((1, 2, 4, 3), 0.5)
    (out,) = ops.ResizeAndPadImage().resize_and_pad(image, 4, 4, "black", "nearest-exact")
    expected = torch.zeros((4, 4))
    expected[1:3] = 0.5
    assert torch.equal(out[0, ..., 0], expected)
    (out,) = ops.ResizeAndPadImage().resize_and_pad(image, 5, 3, "white", "nearest-exact")
    # scale min(5/4, 3/2) = 1.25 -> 5x2 at row offset 0
    assert out.shape == (1, 3, 5, 3) and out[0, 2, :, 0].tolist() == [1.0] * 5


def test_rotate_and_flip():
    image = _img([[1, 2], [3, 4]])
    rot = {r: ops.ImageRotate().rotate(image, r)[0][0, ..., 0].tolist()
           for r in ["none", "90 degrees", "180 degrees", "270 degrees"]}
    assert rot == {"none": [[1, 2], [3, 4]], "90 degrees": [[3, 1], [4, 2]],
                   "180 degrees": [[4, 3], [2, 1]], "270 degrees": [[2, 4], [1, 3]]}
    assert ops.ImageFlip().flip(image, "x-axis: vertically")[0][0, ..., 0].tolist() == [[3, 4], [1, 2]]
    assert ops.ImageFlip().flip(image, "y-axis: horizontally")[0][0, ..., 0].tolist() == [[2, 1], [4, 3]]


@pytest.mark.parametrize(("h", "w", "size", "expected"), [
    (4, 8, 6, (3, 6)), (9, 3, 4, (4, 1)), (5, 5, 2, (2, 2)), (2, 3, 9, (6, 9)),
])
def test_scale_to_max_dimension(h, w, size, expected):
    (out,) = ops.ImageScaleToMaxDimension().upscale(torch.rand((1, h, w, 3)), "bilinear", size)
    assert out.shape[1:3] == expected


# --- Canny ---------------------------------------------------------------------------------------------------------


def test_canny_outlines_a_square():
    # a white square with a half-grey rim on rows/columns 4 and 12: the gradient peaks on the rim pixels
    # (a hard step between two pixels would tie its two sides, and ties are suppressed)
    image = torch.zeros((1, 16, 16, 3))
    image[:, 4:13, 4:13] = 0.5
    image[:, 5:12, 5:12] = 1.0
    (edges,) = ops.Canny().detect_edge(image, 0.2, 0.5)
    assert edges.shape == (1, 16, 16, 3) and torch.equal(edges[..., 0], edges[..., 2])
    e = edges[0, ..., 0]
    assert set(e.unique().tolist()) == {0.0, 1.0}
    assert e[4, 5:12].tolist() == [1.0] * 7 and e[12, 5:12].tolist() == [1.0] * 7
    assert e[6:11, 4].tolist() == [1.0] * 5 and e[6:11, 12].tolist() == [1.0] * 5
    assert e[8].sum() == 2 and e[:, 8].sum() == 2  # one pixel thin: non-maximum suppression
    assert e[5:12, 5:12].sum() == 4  # the ring cuts each corner diagonally, one pixel inside the rim
    assert e[:3].sum() == 0 and e[14:].sum() == 0  # flat areas have no edges


def test_canny_flat_image_and_thresholds():
    (edges,) = ops.Canny().detect_edge(torch.full((1, 8, 8, 3), 0.7), 0.1, 0.2)
    assert edges.sum() == 0
    image = torch.zeros((1, 16, 16, 3))
    image[:, 4:12, 4:12] = 0.1  # a faint square: Sobel magnitude of the step stays below 0.4
    (edges,) = ops.Canny().detect_edge(image, 0.4, 0.8)
    assert edges.sum() == 0


def test_canny_hysteresis_keeps_weak_edges_touching_strong_ones():
    def vertical_edge(level_top: float) -> torch.Tensor:
        image = torch.zeros((1, 16, 24, 3))
        image[:, :, 8], image[:, :, 9:] = 0.125, 0.25  # weak: peak magnitude 0.65 on column 8
        image[:, :4, 8], image[:, :4, 9:] = level_top / 2, level_top  # the top rows' step
        return ops.Canny().detect_edge(image, 0.3, 0.8)[0][0, ..., 0]

    edges = vertical_edge(0.4)  # strong (magnitude ~1.03) on the top rows
    assert edges[:, 8].tolist() == [1.0] * 16  # the weak rows below are reached through the chain
    assert edges.sum() == 16
    assert vertical_edge(0.25).sum() == 0  # no strong seed: weak edges are dropped


@pytest.mark.parametrize("case", KORNIA["canny"], ids=lambda c: f"{c['low']}-{c['high']}")
def test_canny_matches_kornia_reference(case):
    image = torch.tensor(KORNIA["canny_input"])[None].movedim(1, -1)  # [1,H,W,3]
    (edges,) = ops.Canny().detect_edge(image, case["low"], case["high"])
    assert edges[0, ..., 0].int().tolist() == case["edges"]


def test_canny_too_small_image_is_a_clear_error():
    with pytest.raises(ValueError, match="3x3"):
        ops.Canny().detect_edge(torch.zeros((1, 2, 5, 3)), 0.4, 0.8)


@pytest.mark.parametrize("name", sorted(KORNIA["morphology"]))
def test_morphology_matches_kornia_reference(name):
    operation, k = name.rsplit("_", 1)
    image = torch.tensor(KORNIA["morph_input"])[None, :, :, None]
    (out,) = ops.Morphology().process(image, operation, int(k))
    assert torch.allclose(out[0, ..., 0], torch.tensor(KORNIA["morphology"][name]), atol=1e-6)


def test_yuv_to_rgb_matches_kornia_reference_and_clamps():
    ycc = torch.tensor(KORNIA["ycbcr_input"])  # rows of (Y, Cb, Cr)
    planes = [ycc[:, i].view(1, 1, 3, 1).expand(1, 1, 3, 3) for i in range(3)]
    (rgb,) = ops.ImageYUVToRGB().execute(*planes)
    assert torch.allclose(rgb[0, 0], torch.tensor(KORNIA["ycbcr_to_rgb"]), atol=1e-6)
    assert rgb.min() >= 0 and rgb.max() <= 1


# --- image/animation -----------------------------------------------------------------------------------------------


def _frames(n: int) -> torch.Tensor:
    return torch.stack([torch.full((4, 6, 3), i / max(1, n - 1)) for i in range(n)])


def test_save_animated_webp(ctx):
    out = ops.SaveAnimatedWEBP().save_images(_frames(3), 4.0, "anim/clip", True, 80, "fastest",
                                             prompt={"1": {}}, extra_pnginfo={"workflow": {"a": 1}})
    assert out["ui"] == {"images": [{"filename": "clip_00001_.webp", "subfolder": "anim", "type": "output"}],
                         "animated": (True,)}
    path = ctx.storage.root("output") / "anim" / "clip_00001_.webp"
    with Image.open(path) as img:
        assert img.n_frames == 3 and img.size == (6, 4)
        exif = img.getexif()
        durations, reds = [], []
        for i in range(img.n_frames):
            img.seek(i)
            img.load()  # the WebP reader fills in the frame's duration when it decodes it
            durations.append(img.info["duration"])
            reds.append(img.getpixel((0, 0))[0])
    assert durations == [250, 250, 250]  # int(1000 / 4)
    assert reds == [0, 127, 255]  # lossless frames, ComfyUI's truncating 8-bit conversion
    assert exif[0x0110] == 'prompt:{"1": {}}' and exif[0x010F] == 'workflow:{"a": 1}'
    second = ops.SaveAnimatedWEBP().save_images(_frames(1), 6.0, "anim/clip", False, 50, "default")
    assert second["ui"]["images"][0]["filename"] == "clip_00002_.webp"
    assert second["ui"]["animated"] == (False,)


def test_save_animated_png(ctx):
    out = ops.SaveAnimatedPNG().save_images(_frames(4), 3.0, 9, "apng", prompt={"p": 1},
                                            extra_pnginfo={"workflow": [1]})
    assert out["ui"] == {"images": [{"filename": "apng_00001_.png", "subfolder": "", "type": "output"}],
                         "animated": (True,)}
    path = ctx.storage.root("output") / "apng_00001_.png"
    with Image.open(path) as img:
        assert img.n_frames == 4
        durations, levels = [], []
        for frame in ImageSequence.Iterator(img):
            durations.append(frame.info["duration"])
            levels.append(np.asarray(frame.convert("RGB"))[0, 0, 0])
    assert durations == [333] * 4  # int(1000 / 3)
    assert levels == [0, 85, 170, 255]
    raw = path.read_bytes()
    assert raw.count(b"comf") == 2
    assert b"comfprompt\x00" + json.dumps({"p": 1}).encode() in raw
    assert raw.index(b"comfprompt") > raw.index(b"IDAT")  # after the image data, as ComfyUI writes it


def test_save_animated_respects_disabled_metadata(tmp_path):
    node_ctx = node_context(tmp_path)
    node_ctx.config.save_metadata = False
    with context.use(node_ctx):
        ops.SaveAnimatedPNG().save_images(_frames(2), 6.0, 4, "m", prompt={"p": 1})
    assert b"comf" not in (node_ctx.storage.root("output") / "m_00001_.png").read_bytes()


def test_ycbcr_of_grey_has_neutral_chroma():
    ycc = rgb_to_ycbcr(torch.full((2, 2, 3), 0.6))
    assert torch.allclose(ycc, torch.tensor([0.6, 0.5, 0.5]).expand(2, 2, 3))


def test_workflow_rebatch_then_save_and_load_back(tmp_path):
    from comfy_core import Engine, EngineConfig

    cfg = EngineConfig(models_dir=str(tmp_path / "m"), input_dir=str(tmp_path / "i"),
                       output_dir=str(tmp_path / "o"), temp_dir=str(tmp_path / "t"))
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 4, "height": 3, "batch_size": 5, "color": 0xFF0000}},
        "4": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": 3, "strength": 0.2}},
        "2": {"class_type": "RebatchImages", "inputs": {"images": ["4", 0], "batch_size": 2}},
        "3": {"class_type": "SaveAnimatedPNG",
              "inputs": {"images": ["2", 0], "filename_prefix": "rb", "fps": 10.0, "compress_level": 1}},
    }
    with Engine(cfg) as engine:
        result = engine.run(prompt, timeout=60)
        names = [entry["filename"] for entry in result.outputs["3"]["images"]]
        assert names == ["rb_00001_.png", "rb_00002_.png", "rb_00003_.png"]  # one file per rebatched list item
        frames = []
        for name in names:
            with Image.open(tmp_path / "o" / name) as img:
                frames.append(img.n_frames)
        assert frames == [2, 2, 1]  # (noise keeps Pillow from merging identical frames)
        load = {"1": {"class_type": "LoadImageOutput", "inputs": {"image": "rb_00003_.png [output]"}},
                "2": {"class_type": "GetImageSize", "inputs": {"image": ["1", 0]}},
                "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
        assert engine.run(load, timeout=60).outputs["3"]["images"][0]["type"] == "temp"
