"""Image nodes: load/save/preview through the engine's storage, and the pixel operations with hand-computed values."""
from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
import torch
from PIL import Image

from comfy_core import context
from comfy_core.config import EngineConfig
from comfy_core.context import NodeContext
from comfy_core.errors import InputFileError
from comfy_core.folders import ModelFolders
from comfy_core.images import read_png_text
from comfy_core.nodes.image import (IMAGE_UPSCALE_METHODS, EmptyImage, ImageBatch, ImageBlend, ImageCrop,
                                    ImageInvert, ImagePadForOutpaint, ImageScale, ImageScaleBy,
                                    ImageScaleToTotalPixels, LoadImage, LoadImageMask, PreviewImage, SaveImage)
from comfy_core.storage import Storage


def make_ctx(tmp_path, **config) -> NodeContext:
    cfg = EngineConfig(models_dir=str(tmp_path / "models"), input_dir=str(tmp_path / "input"),
                       output_dir=str(tmp_path / "output"), temp_dir=str(tmp_path / "temp"), **config)
    return NodeContext(config=cfg, storage=Storage(cfg.input_dir, cfg.output_dir, cfg.temp_dir),
                       folders=ModelFolders(cfg.models_dir))


@pytest.fixture
def ctx(tmp_path):
    with context.use(make_ctx(tmp_path)) as c:
        yield c


def zlib_level_flag(path) -> int:
    """FLEVEL of the first IDAT's zlib header: 0 for compress level 0-1, 1 for 2-5, 2 for 6, 3 for 7-9."""
    data = open(path, "rb").read()
    idat = data.index(b"IDAT") + 4
    return data[idat + 1] >> 6


# --- load -----------------------------------------------------------------------------------------------------------

def test_load_image_lists_and_loads(tmp_path, ctx):
    root = ctx.storage.root("input")
    Image.new("RGBA", (3, 2), (255, 0, 0, 0)).save(root / "b.png")
    Image.new("RGB", (2, 2), (0, 255, 0)).save(root / "a.jpg")
    (root / "notes.txt").write_text("x")
    assert LoadImage.INPUT_TYPES()["required"]["image"] == (["a.jpg", "b.png"], {"image_upload": True})
    assert LoadImageMask.INPUT_TYPES()["required"]["image"][0] == ["a.jpg", "b.png", "notes.txt"]
    image, mask = LoadImage().load_image("b.png")
    assert image.shape == (1, 2, 3, 3) and image[0, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert torch.equal(mask, torch.ones(1, 2, 3))  # alpha 0 -> mask 1
    assert LoadImage.IS_CHANGED("b.png") == hashlib.sha256((root / "b.png").read_bytes()).hexdigest()


def test_load_image_annotations_and_subfolders(ctx):
    Image.new("RGB", (2, 2), (0, 0, 255)).save(ctx.storage.root("output") / "out.png")
    (ctx.storage.root("input") / "sub").mkdir()
    Image.new("RGB", (4, 4)).save(ctx.storage.root("input") / "sub" / "x.png")
    assert LoadImage.VALIDATE_INPUTS("out.png [output]") is True
    assert LoadImage.VALIDATE_INPUTS("sub/x.png") is True
    assert LoadImage().load_image("out.png [output]")[0][0, 0, 0].tolist() == [0.0, 0.0, 1.0]
    assert LoadImage().load_image("sub/x.png")[0].shape == (1, 4, 4, 3)


@pytest.mark.parametrize("name", ["missing.png", "../x.png", "/etc/passwd", "out.png [temp]"])
def test_load_image_validation_message(ctx, name):
    assert LoadImage.VALIDATE_INPUTS(name) == f"Invalid image file: {name}"
    assert LoadImageMask.VALIDATE_INPUTS(name) == f"Invalid image file: {name}"
    with pytest.raises(InputFileError):
        LoadImage().load_image(name)


def test_load_image_choices_without_an_engine():
    assert LoadImage.INPUT_TYPES()["required"]["image"] == ([], {"image_upload": True})


def test_load_image_mask_node(ctx):
    Image.new("RGBA", (2, 2), (0, 51, 0, 255)).save(ctx.storage.root("input") / "m.png")
    (mask,) = LoadImageMask().load_image("m.png", "green")
    assert mask.shape == (1, 2, 2) and mask[0, 0, 0].item() == pytest.approx(0.2)
    assert LoadImageMask().load_image("m.png", "alpha")[0].sum() == 0
    assert LoadImageMask.IS_CHANGED("m.png", "alpha") == LoadImage.IS_CHANGED("m.png")


# --- save / preview -------------------------------------------------------------------------------------------------

def test_save_image_naming_metadata_and_ui(ctx):
    out = ctx.storage.root("output")
    prompt = {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI"}}}
    ui = SaveImage().save_images(torch.rand(2, 4, 6, 3), "ComfyUI", prompt=prompt, extra_pnginfo={"workflow": {"v": 1}})
    assert ui == {"ui": {"images": [
        {"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"},
        {"filename": "ComfyUI_00002_.png", "subfolder": "", "type": "output"},
    ]}}
    with Image.open(out / "ComfyUI_00002_.png") as img:
        assert img.size == (6, 4)
    assert read_png_text(out / "ComfyUI_00001_.png") == {"prompt": json.dumps(prompt), "workflow": '{"v": 1}'}
    assert zlib_level_flag(out / "ComfyUI_00001_.png") == 1  # compress level 4
    ui = SaveImage().save_images(torch.rand(1, 4, 6, 3), "ComfyUI")
    assert ui["ui"]["images"][0]["filename"] == "ComfyUI_00003_.png"


def test_save_image_prefix_folders_and_tokens(ctx):
    ui = SaveImage().save_images(torch.rand(2, 8, 16, 3), "shots/%width%x%height%_%batch_num%")
    images = ui["ui"]["images"]
    assert [i["filename"] for i in images] == ["16x8_0_00001_.png", "16x8_1_00002_.png"]
    assert {i["subfolder"] for i in images} == {"shots"}
    assert (ctx.storage.root("output") / "shots" / "16x8_1_00002_.png").is_file()


def test_save_image_escape_is_refused(ctx):
    with pytest.raises(InputFileError, match="Saving image outside the output folder is not allowed."):
        SaveImage().save_images(torch.rand(1, 2, 2, 3), "../../evil")


def test_save_image_without_metadata(tmp_path):
    with context.use(make_ctx(tmp_path, save_metadata=False)) as c:
        SaveImage().save_images(torch.rand(1, 2, 2, 3), "m", prompt={"a": 1}, extra_pnginfo={"workflow": {}})
        assert read_png_text(c.storage.root("output") / "m_00001_.png") == {}


def test_preview_image_goes_to_temp(ctx):
    node = PreviewImage()
    ui = node.save_images(torch.rand(1, 3, 3, 3), prompt={"x": 1})
    (entry,) = ui["ui"]["images"]
    assert entry["type"] == "temp" and entry["subfolder"] == ""
    match = re.fullmatch(r"ComfyUI_temp_([a-z]{5})_00001_\.png", entry["filename"])
    assert match and set(match.group(1)) <= set("abcdefghijklmnopqrstupvxyz")
    path = ctx.storage.root("temp") / entry["filename"]
    assert zlib_level_flag(path) == 0  # compress level 1
    assert "prompt" in read_png_text(path)
    assert not os.listdir(ctx.storage.root("output"))
    again = node.save_images(torch.rand(1, 3, 3, 3))["ui"]["images"][0]["filename"]
    assert again.startswith(entry["filename"][:19]) and again.endswith("_00002_.png")  # same suffix per instance
    others = {PreviewImage().prefix_append for _ in range(5)}
    assert len(others) > 1


# --- pixel nodes ----------------------------------------------------------------------------------------------------

def test_empty_image_color():
    (img,) = EmptyImage().generate(3, 2, 2, 0xFF8000)
    assert img.shape == (2, 2, 3, 3)
    assert img[1, 1, 2].tolist() == pytest.approx([1.0, 128 / 255, 0.0])


@pytest.mark.parametrize("method", IMAGE_UPSCALE_METHODS)
def test_every_image_method(method):
    image = torch.ones(2, 6, 4, 3)
    (out,) = ImageScale().upscale(image, method, 8, 12, "disabled")
    assert out.shape == (2, 12, 8, 3)
    assert torch.allclose(out, torch.ones_like(out), atol=1e-6)
    (out,) = ImageScaleBy().upscale(image, method, 0.5)
    assert out.shape == (2, 3, 2, 3)


def test_image_scale_aspect_and_center_crop():
    image = torch.zeros(1, 4, 8, 3)
    image[:, :, 2:6] = 1.0  # the middle 4 columns are white
    (out,) = ImageScale().upscale(image, "nearest-exact", 4, 4, "center")
    assert torch.equal(out, torch.ones(1, 4, 4, 3))
    assert ImageScale().upscale(image, "bilinear", 16, 0, "disabled")[0].shape == (1, 8, 16, 3)
    assert ImageScale().upscale(image, "bilinear", 0, 2, "disabled")[0].shape == (1, 2, 4, 3)
    assert ImageScale().upscale(image, "bilinear", 0, 0, "disabled")[0] is image


def test_lanczos_goes_through_uint8():
    (out,) = ImageScale().upscale(torch.full((1, 2, 2, 3), 0.5), "lanczos", 4, 4, "disabled")
    assert torch.allclose(out, torch.full_like(out, 127 / 255))


def test_image_scale_to_total_pixels():
    (out,) = ImageScaleToTotalPixels().upscale(torch.rand(1, 128, 64, 3), "bilinear", 0.01)
    # total = int(0.01 * 2^20) = 10485; scale = sqrt(10485 / 8192) = 1.13133 -> 72.4 x 144.8
    assert out.shape == (1, 145, 72, 3)
    with pytest.raises(ValueError, match="upscale_method"):
        ImageScaleToTotalPixels().upscale(torch.rand(1, 8, 8, 3), "bislerp", 1.0)


def test_image_invert():
    assert ImageInvert().invert(torch.tensor([[[[0.25, 1.0, 0.0]]]]))[0].flatten().tolist() == [0.75, 0.0, 1.0]


def test_image_batch():
    a, b = torch.zeros(1, 4, 4, 3), torch.ones(2, 4, 4, 3)
    (out,) = ImageBatch().batch(a, b)
    assert out.shape == (3, 4, 4, 3) and out[1:].min() == 1
    (out,) = ImageBatch().batch(a, torch.ones(1, 2, 8, 3))  # resized (center crop, bilinear) to 4x4
    assert out.shape == (2, 4, 4, 3) and torch.allclose(out[1], torch.ones(4, 4, 3))
    (out,) = ImageBatch().batch(torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 3))  # RGB gets an opaque alpha
    assert out.shape == (2, 2, 2, 4) and out[1, ..., 3].min() == 1 and out[0, ..., 3].max() == 0


def test_pad_for_outpaint():
    image = torch.zeros(1, 8, 8, 3)
    out, mask = ImagePadForOutpaint().expand_image(image, left=8, top=0, right=0, bottom=0, feathering=2)
    assert out.shape == (1, 8, 16, 3) and mask.shape == (1, 8, 16)
    assert out[0, :, :8].min() == 0.5 and out[0, :, 8:].max() == 0
    assert mask[0, :, :8].min() == 1.0
    # feathering 2 next to the padded left side: d = column -> ((2-0)/2)^2 = 1, ((2-1)/2)^2 = 0.25, then 0
    assert mask[0, 3, 8:12].tolist() == [1.0, 0.25, 0.0, 0.0]
    assert mask[0, :, 10:].max() == 0
    _, mask = ImagePadForOutpaint().expand_image(image, 8, 8, 8, 8, feathering=4)  # 2*4 < 8 fails: no feather
    assert mask[0, 8:16, 8:16].max() == 0


def test_pad_for_outpaint_feathers_corners_by_nearest_padded_side():
    _, mask = ImagePadForOutpaint().expand_image(torch.zeros(1, 10, 10, 3), 0, 8, 8, 0, feathering=3)
    region = mask[0, 8:18, 0:10]  # the original image; padded top and right
    assert region[0, 0].item() == 1.0  # distance 0 to the top
    assert region[1, 9].item() == pytest.approx(((3 - 1) / 3) ** 2)  # distance 1 to the right (10 - 9)
    assert region[9, 0].item() == 0.0  # bottom and left were not padded


def test_image_crop():
    image = torch.arange(5 * 6, dtype=torch.float32).reshape(1, 5, 6, 1).expand(1, 5, 6, 3)
    (out,) = ImageCrop().crop(image, 2, 3, 1, 1)
    assert out.shape == (1, 3, 2, 3) and out[0, 0, 0, 0] == 7
    (out,) = ImageCrop().crop(image, 4, 4, 100, 100)  # origin clamped to the last pixel
    assert out.shape == (1, 1, 1, 3) and out[0, 0, 0, 0] == 29


@pytest.mark.parametrize("mode, expected", [
    ("normal", 0.6), ("multiply", 0.12), ("screen", 0.68), ("overlay", 0.24),
    ("soft_light", 0.2 + (2 * 0.6 - 1) * (((16 * 0.2 - 12) * 0.2 + 4) * 0.2 - 0.2)), ("difference", 0.0),
])
def test_image_blend_modes(mode, expected):
    a, b = torch.full((1, 2, 2, 3), 0.2), torch.full((1, 2, 2, 3), 0.6)
    (out,) = ImageBlend().blend_images(a, b, 1.0, mode)
    assert out[0, 0, 0, 0].item() == pytest.approx(expected, abs=1e-6)  # difference -0.4 is clamped to 0


def test_image_blend_factor_resize_and_errors():
    a = torch.full((1, 4, 4, 3), 0.2)
    (out,) = ImageBlend().blend_images(a, torch.full((1, 2, 2, 3), 0.6), 0.5, "normal")
    assert out.shape == (1, 4, 4, 3) and torch.allclose(out, torch.full_like(out, 0.4))
    (out,) = ImageBlend().blend_images(a, torch.full((1, 4, 4, 4), 0.6), 1.0, "normal")  # alpha dropped
    assert out.shape == (1, 4, 4, 3)
    with pytest.raises(ValueError, match="blend_mode"):
        ImageBlend().blend_images(a, a, 0.5, "dodge")


def test_saved_image_reloads_exactly(ctx):
    pixels = torch.randint(0, 256, (1, 5, 7, 3)).float() / 255
    ui = SaveImage().save_images(pixels, "rt")
    name = ui["ui"]["images"][0]["filename"]
    image, _ = LoadImage().load_image(f"{name} [output]")
    assert torch.allclose(image, pixels, atol=1e-6)
